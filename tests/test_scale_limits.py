"""No read of the store is unbounded and no write exceeds etcd's transaction limit.

The bounds are checked in three ways: the in-memory store, which can refuse a transaction
over etcd's limit and answer short pages like etcd past its message size; a real replica
started with tiny pages (MOORAGE_STORE_PAGE, MOORAGE_TXN_OPS), so a few hundred keys cross
many pages and transactions; and real replicas at the default settings with what the
defaults must carry (thousands of references, megabytes of referrers).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness.process import AUTH, moorage
from harness.replica import Replica

from moorage.meta import etcd as etcd_module
from moorage.meta import keys
from moorage.meta.base import LAST_REVISION, STORE_PAGE, TXN_OPS, Delete, Op, Put, op_batches
from moorage.meta.etcd import ClientTls, EtcdCluster, EtcdMetaStore, data_revision
from moorage.meta.memory import MemoryMetaStore
from moorage.meta.records import ManifestRecord
from moorage.meta.referrers import referrers_page
from moorage.pki.files import TlsDir
from moorage.registry import discovery as discovery_module
from moorage.registry.discovery import Discovery

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _record(digest: str, subject: str | None = None) -> ManifestRecord:
    return ManifestRecord(
        digest=digest, media_type=MANIFEST, size=10, subject=subject, artifact_type=None
    )


# -- the in-memory store: pure checks of the bounds -------------------------------------


def test_bounded_transactions_for_many_references_and_tags() -> None:
    async def go() -> None:
        meta = MemoryMetaStore(max_txn_ops=TXN_OPS + 1)
        blobs = [_digest(str(i).encode()) for i in range(3 * TXN_OPS)]
        for d in blobs:
            await meta.link_blob("r", d, 1)
        m = _digest(b"m")
        tags = [f"t{i}" for i in range(3 * TXN_OPS)]
        assert await meta.put_manifest("r", _record(m), tags, blobs=blobs) == []
        listed, more = await meta.list_tags("r", None, None)
        assert sorted(listed) == sorted(tags)
        assert not more
        # A missing blob beyond what one transaction can guard is still found: no write.
        other = _digest(b"other")
        gone = blobs[-1]
        assert await meta.unlink_blob("r", gone)
        assert await meta.put_manifest("r", _record(other), ["x"], blobs=blobs) == [gone]
        assert await meta.get_manifest("r", other) is None
        assert await meta.get_tag("r", "x") is None
        # Deleting a manifest that more tags point at than one transaction holds.
        assert await meta.delete_manifest("r", m)
        assert await meta.list_tags("r", None, None) == ([], False)
        assert await meta.get_manifest("r", m) is None

    asyncio.run(go())


def test_index_with_many_children_in_bounded_transactions() -> None:
    async def go() -> None:
        meta = MemoryMetaStore(max_txn_ops=TXN_OPS + 1)
        children = [_digest(f"child{i}".encode()) for i in range(2 * TXN_OPS + 7)]
        for c in children:
            await meta.put_manifest("r", _record(c))
        index = _digest(b"index")
        assert await meta.put_manifest("r", _record(index), ["i"], manifests=children) == []
        assert (await meta.get_tag("r", "i")) is not None

    asyncio.run(go())


def test_listings_page_through_short_reads() -> None:
    """A backend answering fewer keys than asked (message size) still lists everything."""

    async def go() -> None:
        meta = MemoryMetaStore(page_bytes=300)
        tags = [f"tag{i:04d}" for i in range(250)]
        m = _digest(b"m")
        await meta.put_manifest("r", _record(m), tags)
        assert (await meta.list_tags("r", None, None))[0] == tags
        page, more = await meta.list_tags("r", 100, "tag0010")
        assert page == tags[11:111]
        assert more
        page, more = await meta.list_tags("r", 100, "tag0149")
        assert page == tags[150:250]
        assert not more
        for i in range(40):
            d = _digest(f"ref{i}".encode())
            referrer = {"digest": d, "annotations": {"a": "x" * 1000}}
            await meta.put_manifest("r", _record(d, subject=m), referrer=referrer)
        found: list[str] = []
        after: str | None = None
        while True:  # pages of at most 15 descriptors and 5,000 bytes (one at least)
            refs, after = await referrers_page(meta, "r", m, 15, 5000, after)
            assert 1 <= len(refs) <= 4
            found += [d["digest"] for d in refs]
            if after is None:
                break
        assert sorted(found) == sorted(_digest(f"ref{i}".encode()) for i in range(40))
        big, after = await referrers_page(meta, "r", m, 15, 10, None)  # one, whatever its size
        assert len(big) == 1
        assert after == big[0]["digest"]
        assert meta.largest_read <= STORE_PAGE

    asyncio.run(go())


def test_op_batches_bound_count_and_bytes() -> None:
    ops: list[Op] = [Put(f"k{i}".encode(), b"v" * 1000) for i in range(50)]
    ops.append(Put(b"huge", b"v" * 5000))
    ops.append(Delete(b"gone"))
    batches = list(op_batches(ops, count=8, size=4000))
    assert [op for b in batches for op in b] == ops
    for b in batches:
        assert len(b) <= 8
        assert len(b) == 1 or sum(len(o.key) + len(getattr(o, "value", b"")) for o in b) <= 4000


def test_listing_without_n_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discovery_module, "MAX_PAGE", 30)

    async def go() -> None:
        meta = MemoryMetaStore()
        await meta.put_manifest("r", _record(_digest(b"m")), [f"t{i:03d}" for i in range(70)])
        d = Discovery(meta)
        page = await d.tags("r", None, None)
        assert len(page.items) == 30
        assert page.more
        page = await d.tags("r", None, page.items[-1])
        assert page.items[0] == "t030"
        page = await d.tags("r", 1000, "t029")
        assert len(page.items) == 30
        assert page.more

    asyncio.run(go())


# -- a real replica with tiny pages and transactions -------------------------------------


def _push_blob(c: httpx.Client, repo: str, data: bytes) -> dict[str, object]:
    d = _digest(data)
    r = c.post(f"/v2/{repo}/blobs/uploads/", params={"digest": d}, content=data)
    assert r.status_code == 201, r.text
    return {"mediaType": LAYER, "digest": d, "size": len(data)}


def _image(c: httpx.Client, repo: str, layers: int, salt: str = "") -> bytes:
    config = json.dumps({"os": "linux", "salt": salt}).encode()
    cfg = _push_blob(c, repo, config)
    cfg["mediaType"] = CONFIG
    descs = [_push_blob(c, repo, f"{salt} layer {i}".encode()) for i in range(layers)]
    doc = {"schemaVersion": 2, "mediaType": MANIFEST, "config": cfg, "layers": descs}
    return json.dumps(doc).encode()


def _subject_with_big_referrers(c: httpx.Client, repo: str, count: int, random_bytes: int) -> bytes:
    """Push a subject (tag `s`) and `count` referrers, each annotated with `random_bytes`
    random bytes in hex; returns the subject's bytes."""
    subject = _image(c, repo, layers=1, salt="subject")
    r = c.put(f"/v2/{repo}/manifests/s", content=subject, headers={"Content-Type": MANIFEST})
    assert r.status_code == 201
    sdesc = {"mediaType": MANIFEST, "digest": _digest(subject), "size": len(subject)}
    cfg = json.loads(subject)["config"]
    for i in range(count):
        doc = {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "artifactType": "application/vnd.example.big",
            "config": cfg,
            "layers": [],
            "subject": sdesc,
            "annotations": {"n": str(i), "blob": os.urandom(random_bytes).hex()},
        }
        ref = json.dumps(doc).encode()
        r = c.put(f"/v2/{repo}/manifests/{_digest(ref)}", content=ref,
                  headers={"Content-Type": MANIFEST})  # fmt: skip
        assert r.status_code == 201, r.text
    return subject


def _walk(c: httpx.Client, url: str, field: str) -> tuple[list[Any], int]:
    items: list[Any] = []
    requests = 0
    next_url: str | None = url
    while next_url:
        r = c.get(next_url)
        assert r.status_code == 200, r.text
        items += r.json()[field] or []
        requests += 1
        link = r.headers.get("link")
        next_url = link.split(">", 1)[0].lstrip("<") if link else None
    return items, requests


@pytest.fixture
def tiny_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Replica]:
    monkeypatch.setenv("MOORAGE_STORE_PAGE", "7")
    monkeypatch.setenv("MOORAGE_TXN_OPS", "16")
    r = Replica(tmp_path / "data")
    r.start()
    yield r
    r.stop()


def test_paging_and_bounded_writes_with_tiny_pages(
    tiny_pages: Replica, monkeypatch: pytest.MonkeyPatch
) -> None:
    with tiny_pages.client() as c:
        repo = "tiny/many"
        body = _image(c, repo, layers=40)  # more references than one transaction guards
        tags = [f"v{i:03d}" for i in range(120)]
        r = c.put(
            f"/v2/{repo}/manifests/{_digest(body)}",
            params=[("tag", t) for t in tags],
            content=body,
            headers={"Content-Type": MANIFEST},
        )
        assert r.status_code == 201, r.text
        assert c.get(f"/v2/{repo}/manifests/v119").content == body
        listed, requests = _walk(c, f"/v2/{repo}/tags/list", "tags")
        assert listed == tags
        assert requests == 1
        listed, requests = _walk(c, f"/v2/{repo}/tags/list?n=25", "tags")
        assert listed == tags
        assert requests == 5
        for i in range(20):
            other = _image(c, f"tiny/r{i:02d}", layers=1, salt=str(i))
            put = c.put(f"/v2/tiny/r{i:02d}/manifests/x", content=other,
                        headers={"Content-Type": MANIFEST})  # fmt: skip
            assert put.status_code == 201, put.text
        repos, _ = _walk(c, "/v2/_catalog?n=3", "repositories")
        assert repos == sorted([repo, *(f"tiny/r{i:02d}" for i in range(20))])
        _backup_pages_through(tiny_pages, c, tags)
        _referrers_page_through(c, repo, body)
        _ui_shows_the_first_referrers(tiny_pages, repo, _digest(body))
        # A manifest with a missing layer past the guarded ones is refused, not half-written.
        broken = json.loads(body)
        broken["layers"].append({"mediaType": LAYER, "digest": _digest(b"nope"), "size": 4})
        bad = json.dumps(broken).encode()
        r = c.put(f"/v2/{repo}/manifests/broken", content=bad, headers={"Content-Type": MANIFEST})
        assert r.status_code == 400
        assert r.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
        assert c.get(f"/v2/{repo}/manifests/broken").status_code == 404
        # Delete by digest: 120 tags over many bounded transactions.
        r = c.delete(f"/v2/{repo}/manifests/{_digest(body)}")
        assert r.status_code == 202, r.text
        assert _walk(c, f"/v2/{repo}/tags/list", "tags")[0] == []
        assert c.get(f"/v2/{repo}/manifests/v000").status_code == 404


def _backup_pages_through(replica: Replica, c: httpx.Client, tags: list[str]) -> None:
    """The backup's records come in bounded pages at one revision; an unpaged request (an
    older `moorage backup`) is refused rather than given part of them; `moorage backup`
    walks the pages and holds every tag."""
    r = c.get("/api/v0/cluster/backup")
    assert r.status_code == 400, r.text
    assert "predates paged backups" in r.json()["error"]
    records: list[dict[str, Any]] = []
    first = c.get("/api/v0/cluster/backup", params={"paged": "1"}).json()
    page, pages = first, 1
    while page["next"] is not None:
        assert len(page["records"]) <= 7
        query = {"paged": "1", "revision": first["revision"], "after": page["next"]}
        records += page["records"]
        page = c.get("/api/v0/cluster/backup", params=query).json()
        assert page["revision"] == first["revision"]
        pages += 1
    records += page["records"]
    assert pages > 20
    names = {r["tag"] for r in records if r["kind"] == "tag" and r["repo"] == "tiny/many"}
    assert names == set(tags)
    for bad in ("x", "L21vb3JhZ2U", "Zm9v", "%%%"):
        r = c.get("/api/v0/cluster/backup", params={"paged": "1", "after": bad})
        assert r.status_code == 400, (bad, r.text)
    future = {"paged": "1", "revision": str(first["revision"] + 10**9)}
    r = c.get("/api/v0/cluster/backup", params=future)
    assert r.status_code == 400, r.text
    assert "newer than the store's" in r.text
    out = replica.data_dir.parent / "tiny.tar"
    done = moorage("backup", "--existing", replica.url, "--out", str(out), "--json")
    assert json.loads(done.stdout)["counts"]["tags"] == len(tags) + 20


def _referrers_page_through(c: httpx.Client, repo: str, subject: bytes) -> None:
    """20 referrers of two artifact types, listed 7 a page (the store's page) or `n`."""
    sdesc = {"mediaType": MANIFEST, "digest": _digest(subject), "size": len(subject)}
    config = json.loads(subject)["config"]
    kinds: dict[str, str] = {}
    for i in range(20):
        kind = f"application/vnd.example.{'sig' if i % 3 else 'sbom'}"
        doc = {"schemaVersion": 2, "mediaType": MANIFEST, "artifactType": kind, "config": config,
               "layers": [], "subject": sdesc, "annotations": {"n": str(i)}}  # fmt: skip
        ref = json.dumps(doc).encode()
        r = c.put(f"/v2/{repo}/manifests/{_digest(ref)}", content=ref,
                  headers={"Content-Type": MANIFEST})  # fmt: skip
        assert r.status_code == 201, r.text
        kinds[_digest(ref)] = kind
    url = f"/v2/{repo}/referrers/{_digest(subject)}"
    found, requests = _walk(c, url, "manifests")
    assert sorted(d["digest"] for d in found) == sorted(kinds)
    assert requests == 3
    found, requests = _walk(c, f"{url}?n=4", "manifests")
    assert sorted(d["digest"] for d in found) == sorted(kinds)
    assert requests == 5
    # A filter applies page by page; its Link keeps the filter.
    sbom = "application/vnd.example.sbom"
    found, requests = _walk(c, f"{url}?artifactType={sbom}&n=4", "manifests")
    assert sorted(d["digest"] for d in found) == sorted(
        d for d, kind in kinds.items() if kind == sbom
    )
    assert requests == 5
    r = c.get(f"{url}?last=not-a-digest")
    assert r.status_code == 400
    assert r.json()["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID"


def _ui_shows_the_first_referrers(replica: Replica, repo: str, digest: str) -> None:
    """The UI's manifest page lists one page of referrers (7 here) and links to the next,
    until every referrer was shown once."""
    with httpx.Client(base_url=replica.url, timeout=60, verify=replica.verify()) as ui:
        page = ui.get("/ui/signin")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf, page.text[:500]
        form = {"username": AUTH[0], "password": AUTH[1], "csrf": csrf.group(1)}
        assert ui.post("/ui/signin", data=form).status_code == 303
        params = {"name": repo, "ref": digest}
        seen: list[str] = []
        while True:
            page = ui.get("/ui/manifest", params=params)
            assert page.status_code == 200, page.text[:500]
            rows = re.findall(r"<tr><td>application/vnd\.example\.[^<]*</td><td><a [^>]*><code>"
                              r"(sha256:[0-9a-f]{64})</code>", page.text)  # fmt: skip
            assert 0 < len(rows) <= 7
            seen += rows
            more = re.search(r'rafter=([^"&]+)">More referrers', page.text)
            if more is None:
                break
            params = {**params, "rafter": urllib.parse.unquote(more.group(1))}
        assert len(seen) == len(set(seen)) > 7


# -- real replicas at the default settings -----------------------------------------------


def test_thousands_of_references_at_default_limits(registry: Replica) -> None:
    """Past etcd's --max-txn-ops (1024): 2,000 layers, 1,100 index children, 1,100 tags."""
    with registry.client(timeout=120) as c:
        repo = "scale/refs"
        body = _image(c, repo, layers=2000)
        r = c.put(f"/v2/{repo}/manifests/big", content=body, headers={"Content-Type": MANIFEST})
        assert r.status_code == 201, r.text
        assert c.get(f"/v2/{repo}/manifests/big").content == body
        children = []
        for i in range(1100):
            child = json.dumps(
                {**json.loads(body), "layers": json.loads(body)["layers"][:1], "n": i}
            ).encode()
            r = c.put(f"/v2/{repo}/manifests/{_digest(child)}", content=child,
                      headers={"Content-Type": MANIFEST})  # fmt: skip
            assert r.status_code == 201, r.text
            children.append({"mediaType": MANIFEST, "digest": _digest(child), "size": len(child)})
        index = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": children})
        tags = [f"t{i}" for i in range(1100)]
        r = c.put(
            f"/v2/{repo}/manifests/{_digest(index.encode())}",
            params=[("tag", t) for t in tags],
            content=index.encode(),
            headers={"Content-Type": INDEX},
        )
        assert r.status_code == 201, r.text
        assert c.get(f"/v2/{repo}/manifests/t1099").content == index.encode()
        r = c.delete(f"/v2/{repo}/manifests/{_digest(index.encode())}")
        assert r.status_code == 202, r.text
        assert c.get(f"/v2/{repo}/manifests/t0").status_code == 404


def test_referrers_larger_than_a_grpc_message(registry: Replica) -> None:
    """60 referrers with 100 KB annotations: about 6 MB, over gRPC's default 4 MiB."""
    with registry.client(timeout=120) as c:
        repo = "scale/referrers"
        subject = _subject_with_big_referrers(c, repo, count=60, random_bytes=50_000)
        # 4 MiB of descriptors per answer at most: the Link header leads to the rest.
        found, requests = _walk(c, f"/v2/{repo}/referrers/{_digest(subject)}", "manifests")
        assert requests == 2
        assert sorted(int(d["annotations"]["n"]) for d in found) == list(range(60))


def test_reads_split_past_the_message_limit(
    registry: Replica, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a 256 KiB receive limit, pages of 100 KB values are split until they fit."""
    limit = 256 * 1024
    options = {"grpc.max_receive_message_length": limit, "grpc.max_send_message_length": limit}
    monkeypatch.setattr(etcd_module, "_CHANNEL_OPTIONS", options)
    endpoint = f"https://127.0.0.1:{registry.etcd_client_port}"
    tls = ClientTls(*TlsDir(registry.data_dir).client_material())

    async def go() -> None:
        store = EtcdCluster([endpoint], tls=tls)
        try:
            keys_ = [keys.REFERRERS + f"split/x@sha256:s@{i:03d}".encode() for i in range(12)]
            for k in keys_:
                await store._txn([], [Put(k, b"v" * 100_000)])
            written = LAST_REVISION.get()
            prefix = keys.REFERRERS + b"split/x@"
            rows = [
                kv async for page in store._scan(prefix, keys.prefix_end(prefix)) for kv in page
            ]
            assert [kv.key for kv in rows] == keys_
            revision, dumped = await store._dump(prefix)
            assert [k for k, _ in dumped] == keys_
            assert revision > 0
            assert await data_revision(endpoint, tls=tls) >= written
        finally:
            await store.close()

    asyncio.run(go())


def test_data_revision_counts_deletes(registry: Replica) -> None:
    """The newest registry change is found with a few one-key reads, deletes included."""
    endpoint = f"https://127.0.0.1:{registry.etcd_client_port}"
    tls = ClientTls(*TlsDir(registry.data_dir).client_material())
    with registry.client() as c:
        repo = "scale/revision"
        body = _image(c, repo, layers=1, salt="rev")
        assert c.put(f"/v2/{repo}/manifests/a", content=body,
                     headers={"Content-Type": MANIFEST}).status_code == 201  # fmt: skip
        before = asyncio.run(data_revision(endpoint, tls=tls))
        assert c.delete(f"/v2/{repo}/manifests/a").status_code == 202
        after = asyncio.run(data_revision(endpoint, tls=tls))
    assert after > before

    async def heartbeat_only() -> int:
        store = EtcdMetaStore([endpoint], tls=tls)
        try:
            await store._txn([], [Put(keys.heartbeat("not-data"), b"{}")])
        finally:
            await store.close()
        return await data_revision(endpoint, tls=tls)

    assert asyncio.run(heartbeat_only()) == after


# -- emergency repair: "could not read" is not "no data" --------------------------------


def test_unreadable_survivor_is_not_sent_to_restore(tmp_path: Path) -> None:
    from moorage.config import DataDir
    from moorage.recovery import emergency

    r = Replica(tmp_path / "data")
    r.start()
    r.stop()
    d = DataDir(r.data_dir)
    db = next(d.etcd_dir.glob("**/member/snap/db"))
    db.write_bytes(b"\0" * 4096)  # etcd cannot open it: the data is not lost, just unread
    with pytest.raises(emergency.RepairRefused) as refused:
        emergency.plan(d, [], None, [])
    message = str(refused.value)
    assert "could not read" in message
    assert "run emergency-repair again" in message
    assert "moorage restore" not in message

    empty = DataDir(tmp_path / "nothing")
    with pytest.raises(emergency.RepairRefused) as refused:
        emergency.plan(empty, [], None, [])
    assert "no candidate has registry data" in str(refused.value)
    assert "moorage restore" in str(refused.value)


def test_restore_of_large_records(tmp_path: Path) -> None:
    """Referrers of 400 KB each: a restore writes them in transactions bounded by bytes too."""
    from tests.cluster import Cluster, Node, moorage

    cluster = Cluster(tmp_path)
    try:
        r0 = cluster.install()
        repo = "scale/big-records"
        with r0.client() as c:
            subject = _subject_with_big_referrers(c, repo, count=30, random_bytes=200_000)
        archive = tmp_path / "b.tar"
        moorage("backup", "--existing", r0.url, "--out", str(archive), "--json")
        moorage("stop", "--data-dir", str(r0.data_dir))
        restored = Node(tmp_path, "restored")
        cluster.nodes.append(restored)
        moorage(
            "restore", "--yes", "--in", str(archive), *restored.flags(),
            "--storage", str(cluster.storage), "--json",
        )  # fmt: skip
        with restored.client() as c:
            found, _ = _walk(c, f"/v2/{repo}/referrers/{_digest(subject)}", "manifests")
            assert len(found) == 30
    finally:
        cluster.shutdown()
