"""The cluster-wide audit log on a real 3-replica cluster (issue #9 items 6 and 8): a
scripted session (joins, push, deletes, a failed and a successful login, a backup) listed
step by step with who, when, from where and what; paging over several pages with no gap or
duplicate; `moorage audit --follow`; hostile query parameters; retention by the replicas'
own job; the log read through another replica once the first is killed, then its removal."""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness.process import cli_env

from moorage.audit import DENIED, AuditEvent
from moorage.audit.log import END, PREFIX, EtcdAuditLog, Retention, trim
from moorage.cluster.tls import client_tls
from moorage.config import DataDir
from moorage.meta.etcd import EtcdCluster
from tests.cluster import (
    AUTH,
    OCI_MANIFEST,
    Cluster,
    Node,
    cluster_of,
    moorage_cmd,
    push_image,
    sha256,
)

#: The replicas trim every 2 s (the default is every 10 minutes), keeping 90 days.
ENV = {"MOORAGE_AUDIT_TRIM_INTERVAL": "2"}
NO_TRIM = Retention(max_age=10**9, max_events=10**9, interval=3600)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster_of(3, tmp_path_factory.mktemp("audit"), env=ENV) as c:
        yield c


def store_of(node: Node) -> EtcdCluster:
    """A client of `node`'s etcd member with the replica's own TLS material."""
    config = DataDir(node.data_dir).load()
    return EtcdCluster([config.etcd_client_url], tls=client_tls(config))


def events(node: Node | str, **params: Any) -> list[dict[str, Any]]:
    """Every event the query selects, through the API, page by page."""
    url = node if isinstance(node, str) else node.url
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        r = httpx.get(f"{url}/api/v0/audit", params=query, auth=AUTH, timeout=60)
        assert r.status_code == 200, r.text
        doc = r.json()
        out += doc["events"]
        cursor = doc["next"]
        if cursor is None:
            return out


def wait_for(
    node: Node, match: dict[str, Any], since: float, timeout: float = 20
) -> dict[str, Any]:
    """The first event since `since` whose fields include `match` (events reach the log a
    flush interval after the operation)."""
    deadline = time.monotonic() + timeout
    while True:
        for e in events(node, since=f"{since:.6f}", limit=1000):
            if all(e.get(k) == v for k, v in match.items()):
                return e
        assert time.monotonic() < deadline, f"no event {match} in the log"
        time.sleep(0.2)


def test_a_scripted_session_is_in_the_log_step_by_step(cluster: Cluster, tmp_path: Path) -> None:
    r0, r1, r2 = cluster.nodes
    since = time.time() - 600
    # The two joins of the fixture, made by the admin from this host.
    for node in (r1, r2):
        e = wait_for(r0, {"action": "join", "target": f"replica:{node.replica_id}"}, since)
        assert (e["actor"], e["outcome"], e["client"]) == ("admin", "ok", "127.0.0.1")
        assert e["detail"]["http_addr"] == f"127.0.0.1:{node.port}"

    start = time.time()
    push_image(r0, "acme/app", "v1", "audit")
    with r0.client() as c:
        r = c.get("/v2/acme/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
        digest = r.headers["Docker-Content-Digest"]
        assert c.delete("/v2/acme/app/manifests/v1").status_code == 202
        layer = b"layer of audit" * 500
        assert c.delete(f"/v2/acme/app/blobs/{sha256(layer)}").status_code == 202
        assert c.delete(f"/v2/acme/app/manifests/{digest}").status_code == 202
    wrong = httpx.get(f"{r1.url}/v2/", auth=("mallory", "guess"), timeout=30)
    assert wrong.status_code == 401
    out = tmp_path / "b.tar"
    cluster.cli("backup", "--existing", r2.url, "--out", str(out), "--json")

    steps = [
        {"action": "push", "target": "acme/app:v1", "actor": "admin"},
        {"action": "delete", "target": "acme/app:v1", "actor": "admin"},
        {"action": "delete", "target": f"acme/app@{sha256(layer)}", "actor": "admin"},
        {"action": "delete", "target": f"acme/app@{digest}", "actor": "admin"},
        {"action": "login", "actor": "mallory", "outcome": "denied"},
        {"action": "backup", "actor": "admin"},
    ]
    found = [wait_for(r1, step, start) for step in steps]
    for e in found:
        assert e["client"] == "127.0.0.1", e  # from where
        assert start - 1 <= e["at"] <= time.time() + 1, e  # when
        assert e["time"].endswith("Z")
        assert e["outcome"] in ("ok", "denied")
    assert found[0]["detail"]["digest"] == digest
    assert [e["detail"]["kind"] for e in found[1:4]] == ["tag", "blob", "manifest"]
    assert found[5]["detail"]["revision"].isdigit()
    # A successful password check (the first one of each API worker) is there too.
    assert wait_for(r0, {"action": "login", "actor": "admin", "outcome": "ok"}, since)
    # The same steps in the order they happened, through the command line as JSON lines.
    cli = cluster.cli("audit", "--existing", r2.url, "--since", f"{start - 1:.3f}", "--json")
    lines = [json.loads(line) for line in cli.stdout.splitlines()]
    ids = [e["id"] for e in lines]
    assert [ids.index(e["id"]) for e in found[:4]] == sorted(ids.index(e["id"]) for e in found[:4])
    text = cluster.cli("audit", "--existing", r0.url, "--since", "10m", "--action", "push")
    assert "push  ok  actor=admin  from=127.0.0.1  acme/app:v1  digest=" + digest in text.stdout
    # JSON lines for syslog from the API itself.
    r = httpx.get(
        f"{r0.url}/api/v0/audit",
        params={"since": f"{start - 1:.3f}", "format": "jsonl", "limit": "2"},
        auth=AUTH,
        timeout=30,
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert len([json.loads(line) for line in r.text.splitlines()]) == 2
    assert r.headers["Moorage-Next-Cursor"]


def test_paging_over_several_pages_has_no_gap_or_duplicate(cluster: Cluster) -> None:
    r0, r1, _ = cluster.nodes
    t0 = float(int(time.time()) - 3000)  # whole seconds: `since` below is exactly t0

    async def write() -> None:
        store = store_of(r0)
        sink = EtcdAuditLog(store, "test", retention=NO_TRIM)
        for i in range(2500):
            await sink.record(AuditEvent("push", "pager", f"p/{i:04d}", at=t0 + i / 1000))
        await sink.close(patience=30)
        assert sink.dropped == 0
        await store.close()

    asyncio.run(write())
    window = {"since": str(int(t0)), "until": str(int(t0) + 3), "limit": "1000"}
    r = httpx.get(f"{r1.url}/api/v0/audit", params=window, auth=AUTH, timeout=30)
    assert len(r.json()["events"]) == 1000
    got = [e["target"] for e in events(r1, **window)]
    assert got == [f"p/{i:04d}" for i in range(2500)]
    only = events(r1, since=str(int(t0)), until=str(int(t0) + 3), actor="nobody")
    assert only == []


def test_follow_prints_an_event_recorded_after_it_started(cluster: Cluster, tmp_path: Path) -> None:
    r0 = cluster.nodes[0]
    lines: queue.Queue[str] = queue.Queue()
    with (tmp_path / "stderr").open("w") as stderr:
        proc = subprocess.Popen(
            moorage_cmd(
                "audit", "--existing", r0.url, "--follow", "--json", "--since", "1s",
                "--interval", "0.3", "--action", "login",
            ),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=cli_env(),
        )  # fmt: skip
        assert proc.stdout is not None
        out = proc.stdout

        def read() -> None:
            for line in out:
                lines.put(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            time.sleep(1.5)  # it has printed the past and polls now
            refused = httpx.get(f"{r0.url}/v2/", auth=("follow-me", "x"), timeout=30)
            assert refused.status_code == 401
            deadline = time.monotonic() + 30
            while True:
                try:
                    doc = json.loads(lines.get(timeout=max(0.1, deadline - time.monotonic())))
                except queue.Empty:
                    raise AssertionError((tmp_path / "stderr").read_text()) from None
                if doc["actor"] == "follow-me":
                    break
            assert doc["outcome"] == DENIED
            assert doc["client"] == "127.0.0.1"
            assert proc.poll() is None  # still following
        finally:
            proc.kill()
            proc.wait(timeout=30)
            reader.join(timeout=30)
            out.close()


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "-1"},
        {"limit": "1e3"},
        {"limit": "9" * 5000},
        {"since": "yesterday"},
        {"since": "2026-12-01T04:00:00"},
        {"until": "\x00"},
        {"since": "1" * 300},
        {"cursor": "not a cursor"},
        {"cursor": "Li4vLi4vZXRjL3Bhc3N3ZA"},
        {"cursor": "A" * 200},
        {"format": "xml"},
        {"actor": "a\nb"},
        {"bogus": "1"},
    ],
)
def test_hostile_query_parameters_are_refused_with_400(
    cluster: Cluster, params: dict[str, str]
) -> None:
    r = httpx.get(f"{cluster.nodes[0].url}/api/v0/audit", params=params, auth=AUTH, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "INVALID"
    assert r.json()["error"]


def test_the_audit_log_needs_admin_credentials(cluster: Cluster) -> None:
    url = f"{cluster.nodes[0].url}/api/v0/audit"
    assert httpx.get(url, timeout=30).status_code == 401
    assert httpx.get(url, auth=("admin", "wrong"), timeout=30).status_code == 401
    repeated = httpx.get(f"{url}?limit=1&limit=2", auth=AUTH, timeout=30)
    assert repeated.status_code == 400


def test_retention_trims_the_oldest(cluster: Cluster) -> None:
    r0 = cluster.nodes[0]
    now = time.time()

    async def scenario() -> tuple[int, int, list[str]]:
        store = store_of(r0)
        try:
            sink = EtcdAuditLog(store, "test", retention=NO_TRIM)
            for i in range(5):  # older than the 90 days kept: the replicas' job deletes them
                await sink.record(AuditEvent("push", "ancient", f"old/{i}", at=now - 200 * 86400))
            for i in range(3):  # the oldest within 90 days
                await sink.record(AuditEvent("push", "old", f"aged/{i}", at=now - 10 * 86400 + i))
            await sink.close(patience=30)
            deadline = time.monotonic() + 30
            while True:
                kvs, _ = await store._range(PREFIX, PREFIX + b"1", limit=100)
                ancient = [kv for kv in kvs if b'"ancient"' in kv.value]
                if not ancient:
                    break
                assert time.monotonic() < deadline, "the replicas never trimmed the old events"
                await asyncio.sleep(0.5)
            # By count: keep all but three; the three oldest go.
            total = await store._count(PREFIX, END)
            deleted = await trim(store, Retention(max_events=total - 3), now=time.time())
            kvs, _ = await store._range(PREFIX, END, limit=10)
            oldest = [json.loads(kv.value)["target"] for kv in kvs]
            return total, deleted, oldest
        finally:
            await store.close()

    total, deleted, oldest = asyncio.run(scenario())
    assert total > 2500
    assert deleted == 3
    assert not any(t.startswith(("old/", "aged/")) for t in oldest)


def test_a_restore_starts_the_new_cluster_s_log(cluster: Cluster, tmp_path: Path) -> None:
    r0 = cluster.nodes[0]
    backup = tmp_path / "b.tar"
    cluster.cli("backup", "--existing", r0.url, "--out", str(backup), "--json")
    fresh = Node(cluster.root, "restored")
    cluster.retired.append(fresh)  # stopped with the others, never one of the cluster's
    doc = json.loads(
        cluster.cli(
            "restore", "--yes", "--in", str(backup), *fresh.flags(),
            "--storage", str(tmp_path / "blobs"), "--no-replay-journal", "--json",
        ).stdout
    )  # fmt: skip
    # (this test's own logins into the new cluster aside)
    found = [e for e in events(fresh, since="1h") if e["action"] != "login"]
    assert [e["action"] for e in found] == ["restore"]  # nothing of the old cluster's log
    (e,) = found
    assert e["target"] == f"cluster:{doc['cluster_id']}"
    assert e["actor"].startswith("local:")
    assert e["detail"]["from_cluster_id"] == DataDir(r0.data_dir).load().cluster_id
    assert e["detail"]["archive"] == str(backup)
    cluster.stop(fresh)


def test_repair_is_recorded(cluster: Cluster) -> None:
    r0, _, r2 = cluster.nodes
    start = time.time()
    cluster.cli("repair", "--existing", r0.url, "--data-dir", str(r2.data_dir), "--yes", "--json")
    e = wait_for(r0, {"action": "repair", "target": f"replica:{r2.replica_id}"}, start)
    assert e["actor"] == "admin"
    assert e["detail"]["wiped"] == str(r2.data_dir / "etcd")
    # what it did through the admin API is there too: the member removed, then joined again
    wait_for(r0, {"action": "remove", "target": f"replica:{r2.replica_id}"}, start)
    wait_for(r0, {"action": "join", "target": f"replica:{r2.replica_id}"}, start)


def test_the_log_survives_the_loss_of_replicas(cluster: Cluster) -> None:
    """Last: it kills the first replica, reads the log through the others and removes it;
    then kills a second (quorum lost) and repairs the cluster from the third."""
    r0, r1, r2 = cluster.nodes
    cluster.wait_status("healthy")  # every replica (r2 was just repaired)
    start = time.time()
    push_image(r0, "acme/survivor", "v1", "survivor")
    wait_for(r0, {"action": "push", "target": "acme/survivor:v1"}, start)
    cluster.kill(r0)
    out = cluster.cli(
        "audit", "--existing", f"{r0.url},{r1.url}", "--since", f"{start - 1:.3f}", "--json"
    )
    targets = [json.loads(line)["target"] for line in out.stdout.splitlines()]
    assert "acme/survivor:v1" in targets
    cluster.cli("remove", "--existing", r1.url, "--replica-id", r0.replica_id, "--yes", "--json")
    e = wait_for(r2, {"action": "remove", "target": f"replica:{r0.replica_id}"}, start)
    assert (e["actor"], e["client"]) == ("admin", "127.0.0.1")

    cluster.kill(r1)  # one voter of two left: quorum lost
    cluster.cli(
        "emergency-repair", "--data-dir", str(r2.data_dir), "--existing", cluster.urls([r1, r2]),
        "--candidate-dir", str(r1.data_dir), "--yes", "--json",
    )  # fmt: skip
    e = wait_for(r2, {"action": "emergency-repair"}, start, timeout=60)
    assert e["target"] == f"replica:{r2.replica_id}"
    assert e["actor"].startswith("local:")
    assert e["detail"]["removed_replicas"] == r1.replica_id
    # The log from before is all there on the repaired cluster.
    kept = [(x["action"], x["target"]) for x in events(r2, since=f"{start - 1:.3f}")]
    assert ("push", "acme/survivor:v1") in kept
    assert ("remove", f"replica:{r0.replica_id}") in kept
