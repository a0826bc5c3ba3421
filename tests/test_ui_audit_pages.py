"""The admin pages that list audit events show the newest ones (scale probe D1, D2), and a
manifest's referrers are all reachable, a page at a time (D7). In process: the app over the
in-memory store (tests/unit/app.py), audit events written straight into it."""

from __future__ import annotations

import hashlib
import html
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from moorage.audit.log import Keys
from moorage.meta.base import Put
from moorage.meta.memory import MemoryMetaStore
from moorage.web import repos_page
from tests.unit import app as in_process
from tests.unit.app import ADMIN_PASSWORD, InProcessClient

MT_IMAGE = "application/vnd.oci.image.manifest.v1+json"
MT_EMPTY = "application/vnd.oci.empty.v1+json"


@pytest.fixture
def registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[InProcessClient, MemoryMetaStore]]:
    store = MemoryMetaStore()
    monkeypatch.setattr(in_process, "MemoryMetaStore", lambda: store)
    with in_process.in_process_registry(tmp_path) as client:
        page = client.get("/ui/signin", params={"next": "/ui/"})
        match = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert match, page.text
        form = {"username": "admin", "password": ADMIN_PASSWORD, "csrf": match.group(1)}
        assert client.post("/ui/signin", data=form).status_code == 303
        yield client, store


def record(ui: InProcessClient, store: MemoryMetaStore, events: list[dict[str, Any]]) -> None:
    """Audit events as the log keys them, written on the app's loop."""
    keys = Keys("test.1")
    puts = [Put(keys.next(float(e["at"])), json.dumps(e).encode()) for e in events]

    async def write() -> None:
        for i in range(0, len(puts), 100):
            await store._txn([], puts[i : i + 100])

    ui._run(write())


def event(at: float, action: str, target: str, **detail: str) -> dict[str, Any]:
    return {"action": action, "actor": "admin", "target": target, "outcome": "ok",
            "client": None, "at": at, "detail": detail}  # fmt: skip


def text(body: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", body))


@pytest.fixture
def busy_week(
    registry: tuple[InProcessClient, MemoryMetaStore],
) -> tuple[InProcessClient, MemoryMetaStore]:
    """10,500 pushes over six days, then (the newest events) 25 retention deletions and 60
    backups: more than one scan (MAX_SCAN, 10,000 keys) of other events before them."""
    ui, store = registry
    now = time.time()
    events = [event(now - 6 * 86400 + i * 49.0, "push", f"a/b:v{i}") for i in range(10_500)]
    events += [
        event(now - 900 + i, "retention.delete", f"big/app:old{i}", digest="sha256:" + "0" * 64)
        for i in range(25)
    ]
    events += [
        event(now - 600 + i, "backup.written", "cluster", revision=str(1000 + i), size="10")
        for i in range(60)
    ]
    record(ui, store, events)
    return ui, store


def test_storage_shows_the_newest_retention_deletions(
    busy_week: tuple[InProcessClient, MemoryMetaStore],
) -> None:
    ui, _ = busy_week
    r = ui.get("/ui/admin/storage")
    assert r.status_code == 200, r.text
    page = text(r.text)
    assert "Retention deleted nothing" not in page
    shown = [int(n) for n in re.findall(r"big/app:old(\d+)", page)]
    assert shown == list(range(24, 4, -1))  # the newest 20, newest first


def test_backups_shows_the_newest_and_links_to_every_older_one(
    busy_week: tuple[InProcessClient, MemoryMetaStore],
) -> None:
    ui, _ = busy_week
    r = ui.get("/ui/admin/backups")
    assert r.status_code == 200, r.text
    assert "No backup written" not in text(r.text)
    revisions: list[int] = []
    url: str | None = "/ui/admin/backups"
    pages = 0
    while url is not None:
        r = ui.get(url)
        assert r.status_code == 200, r.text
        pages += 1
        page = text(r.text)
        revisions += [int(n) for n in re.findall(r"<td>(1\d\d\d)</td>", r.text)]
        link = re.search(r'href="([^"]*/admin/backups\?[^"]*before=[^"]*)"', r.text)
        url = html.unescape(link.group(1)) if link else None
        if pages == 1:
            assert revisions == list(range(1059, 1009, -1))  # the newest 50
            assert "Older backups" in page
        assert pages < 10
    assert revisions == list(range(1059, 999, -1))  # every one, once, newest first


def test_a_spent_budget_is_said_and_names_the_command(
    registry: tuple[InProcessClient, MemoryMetaStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    ui, store = registry
    from moorage.audit import query

    monkeypatch.setattr(query, "MAX_SCAN", 400)
    now = time.time()
    events = [event(now - 3000, "retention.delete", "big/app:old", digest="sha256:" + "0" * 64)]
    events += [event(now - 2000 + i, "push", f"a/b:v{i}") for i in range(1000)]
    record(ui, store, events)
    page = text(ui.get("/ui/admin/storage").text)
    assert "Stopped after examining" in page
    assert "moorage audit --existing" in page
    assert "--action retention.delete --since 7d" in page
    assert "Retention deleted nothing in the last 7 days." not in page  # not known
    page = text(ui.get("/ui/admin/backups").text)
    assert "Stopped after examining" in page
    assert "--action backup.written" in page


@pytest.mark.parametrize("before", ["!!", "A" * 300, "Zm9v"])
def test_a_bad_backups_cursor_is_a_400_page(
    registry: tuple[InProcessClient, MemoryMetaStore], before: str
) -> None:
    ui, _ = registry
    r = ui.get("/ui/admin/backups", params={"before": before})
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("text/html")


def _digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _put_manifest(ui: InProcessClient, repo: str, ref: str, doc: dict[str, Any]) -> str:
    body = json.dumps(doc).encode()
    r = ui.put(f"/v2/{repo}/manifests/{ref}", content=body, headers={"Content-Type": MT_IMAGE})
    assert r.status_code == 201, r.text
    return _digest(body)


def test_every_referrer_is_reachable_a_page_at_a_time(
    registry: tuple[InProcessClient, MemoryMetaStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    ui, _ = registry
    monkeypatch.setattr(repos_page, "UI_REFERRERS", 3)
    repo = "ref/subject"
    r = ui.post(f"/v2/{repo}/blobs/uploads/", params={"digest": _digest(b"{}")}, content=b"{}")
    assert r.status_code == 201, r.text
    config = {"mediaType": MT_EMPTY, "digest": _digest(b"{}"), "size": 2}
    subject_doc = {"schemaVersion": 2, "mediaType": MT_IMAGE, "config": config, "layers": []}
    subject = _put_manifest(ui, repo, "v1", subject_doc)
    size = len(json.dumps(subject_doc).encode())
    referrers = set()
    for i in range(8):
        doc = {
            **subject_doc,
            "artifactType": "application/vnd.example.sig",
            "subject": {"mediaType": MT_IMAGE, "digest": subject, "size": size},
            "annotations": {"n": str(i)},
        }
        referrers.add(_put_manifest(ui, repo, _digest(json.dumps(doc).encode()), doc))
    seen: list[str] = []
    url: str | None = f"/ui/manifest?name={repo}&ref=v1"
    while url is not None:
        r = ui.get(url)
        assert r.status_code == 200, r.text
        rows = re.findall(r"<code>(sha256:[0-9a-f]{64})</code></a>", r.text)
        assert len(rows) <= 3
        seen += rows
        link = re.search(r'href="([^"]*/manifest\?[^"]*rafter=[^"]*)">More referrers', r.text)
        url = html.unescape(link.group(1)) if link else None
        assert len(seen) <= 8
    assert sorted(seen) == sorted(referrers)


@pytest.mark.parametrize("rafter", ["nope", "sha256:xyz", "sha256:" + "A" * 64, "x" * 5000])
def test_a_bad_referrers_cursor_is_a_400_page(
    registry: tuple[InProcessClient, MemoryMetaStore], rafter: str
) -> None:
    ui, _ = registry
    r = ui.get("/ui/manifest", params={"name": "ref/subject", "ref": "v1", "rafter": rafter})
    assert r.status_code == 400, r.text
    assert "rafter" in text(r.text)
