"""Clusters of 3 and 5 replicas built with install/join: every replica serves everything,
status names the scenario, remove/join repair the cluster, unsafe changes are refused."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness.process import pid_files

from tests.cluster import Cluster, moorage, pull_image, push_image, sha256


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster of 3 (the third joined through the second) for the tests that leave it
    healthy, and for the last test, which grows it to five and kills two: a cluster build
    is ~15 s of CPU."""
    c = Cluster(tmp_path_factory.mktemp("three"))
    try:
        c.install()
        c.join()
        c.join(via=c.nodes[1])
        yield c
    finally:
        c.shutdown()


def test_three_replicas_serve_everything(three: Cluster) -> None:
    cluster = three
    r0, r1, r2 = cluster.nodes
    doc = cluster.status()
    assert doc["scenario"] == "healthy", doc
    assert doc["quorum"] == {"members": 3, "needed": 2, "healthy": 3}
    assert {r["id"] for r in doc["replicas"]} == {r0.replica_id, r1.replica_id, r2.replica_id}
    assert sum(r["leader"] for r in doc["replicas"]) == 1
    assert all(r["healthy"] and r["reachable"] and not r["learner"] for r in doc["replicas"])
    assert "nothing to do" in doc["action"]

    # Read-your-writes: push through one replica, pull through every other at once.
    for i, writer in enumerate((r0, r1, r2)):
        body = push_image(writer, f"cluster/app{i}", "v1", f"seed{i}")
        for reader in (r0, r1, r2):
            assert pull_image(reader, f"cluster/app{i}", "v1") == body

    # An upload started on one replica is continued on another and finished on a third.
    blob = bytes(range(256)) * 1024
    with r0.client() as a, r1.client() as b, r2.client() as c:
        loc = a.post("/v2/cluster/roam/blobs/uploads/").headers["location"]
        resp = b.patch(loc, content=blob[:100_000], headers={"Content-Range": "0-99999"})
        assert resp.status_code == 202, resp.text
        status = a.get(resp.headers["location"])
        assert status.headers["range"] == "0-99999"
        loc = resp.headers["location"]
        sep = "&" if "?" in loc else "?"
        done = c.put(f"{loc}{sep}digest={sha256(blob)}", content=blob[100_000:])
        assert done.status_code == 201, done.text
        for client in (a, b, c):
            assert client.get(f"/v2/cluster/roam/blobs/{sha256(blob)}").content == blob
        catalog = c.get("/v2/_catalog").json()["repositories"]
        assert {"cluster/app0", "cluster/app1", "cluster/app2", "cluster/roam"} <= set(catalog)

    # `start` on a running replica is a no-op.
    out = moorage("start", "--data-dir", str(r1.data_dir))
    assert "already running" in out.stdout


def test_replica_down_remove_and_join(three: Cluster) -> None:
    """On the module's cluster, which it leaves healthy with three replicas."""
    cluster = three
    r0, r1, r2 = cluster.nodes
    body = push_image(r0, "cluster/old", "v1", "old")
    moorage("stop", "--data-dir", str(r2.data_dir))
    doc = cluster.wait_status("replicas-unhealthy", [r0, r1])
    assert doc["quorum"] == {"members": 3, "needed": 2, "healthy": 2}
    bad = [r for r in doc["replicas"] if not r["healthy"]]
    assert [r["id"] for r in bad] == [r2.replica_id]
    assert f"moorage remove --existing {r0.url},{r1.url} --replica-id {r2.replica_id}" in doc[
        "action"
    ] or (f"--replica-id {r2.replica_id}" in doc["action"] and "moorage remove" in doc["action"])
    # Pushes still work with a minority down.
    push_image(r1, "cluster/during", "v1", "during")

    # Join refuses while an unhealthy replica was not removed first.
    from tests.cluster import Node

    spare = Node(cluster.root, "spare")
    refused = cluster.join_raw(spare)
    assert refused.returncode == 1
    assert r2.replica_id in refused.stderr
    assert "remove" in refused.stderr
    assert not (spare.data_dir / "moorage.json").exists()

    # Removing a healthy replica now would leave 1 healthy voter of 2: refused.
    unsafe = moorage(
        "remove", "--yes", "--existing", r0.url, "--replica-id", r1.replica_id, check=False
    )
    assert unsafe.returncode == 1
    assert "quorum" in unsafe.stderr
    assert "--force" in unsafe.stderr

    moorage("remove", "--yes", "--existing", cluster.urls([r0, r1]), "--replica-id", r2.replica_id)
    doc = cluster.wait_status("healthy", [r0, r1])
    assert doc["quorum"] == {"members": 2, "needed": 2, "healthy": 2}
    # Started again, the removed replica says what it is and what to do.
    again = moorage("start", "--data-dir", str(r2.data_dir), check=False, timeout=120)
    assert again.returncode != 0
    assert "was removed from its cluster" in again.stderr + again.stdout, again.stderr
    assert "moorage destroy" in again.stderr + again.stdout
    moorage("destroy", "--yes", "--data-dir", str(r2.data_dir))
    cluster.nodes.remove(r2)

    r3 = cluster.join(via=r1)
    doc = cluster.status()
    assert doc["scenario"] == "healthy"
    assert doc["quorum"] == {"members": 3, "needed": 2, "healthy": 3}
    assert pull_image(r3, "cluster/old", "v1") == body
    pull_image(r3, "cluster/during", "v1")


def test_hung_replica_is_reported_unhealthy(three: Cluster) -> None:
    cluster = three
    r2 = cluster.nodes[2]
    r2.signal(signal.SIGSTOP)
    try:
        # Reported once the heartbeat is stale (10 s); the wait's bound is not a speed claim.
        doc = cluster.wait_status("replicas-unhealthy", cluster.nodes[:2], timeout=60)
        bad = [r for r in doc["replicas"] if not r["healthy"]]
        assert [r["id"] for r in bad] == [r2.replica_id]
        out = moorage("status", "--existing", cluster.urls(cluster.nodes[:2]), check=False)
        assert out.returncode == 10, (out.stdout, out.stderr)  # replicas-unhealthy
        push_image(cluster.nodes[0], "cluster/hung", "v1", "hung")
    finally:
        r2.signal(signal.SIGCONT)
    cluster.wait_status("healthy")
    pull_image(r2, "cluster/hung", "v1")


def test_a_replica_whose_own_etcd_member_hangs_reads_through_the_others(three: Cluster) -> None:
    """Its etcd member stopped (a hung process; or, resumed from a pause, holding reads until
    it has caught up), a replica reads through the other members: pulls go on, and are fresh
    (a tag re-pointed meanwhile through another replica is served re-pointed)."""
    cluster = three
    leader = cluster.leader()
    hung, writer = [n for n in cluster.nodes if n is not leader][:2]
    push_image(writer, "cluster/own-member", "v1", "first")
    member = pid_files(hung.data_dir)["etcd"]
    os.kill(member, signal.SIGSTOP)
    try:
        body = push_image(writer, "cluster/own-member", "v1", "second")
        assert pull_image(hung, "cluster/own-member", "v1") == body
    finally:
        os.kill(member, signal.SIGCONT)
    cluster.wait_status("healthy")


def test_status_when_nothing_answers(cluster: Cluster, tmp_path: Path) -> None:
    r0 = cluster.install()
    moorage("stop", "--data-dir", str(r0.data_dir))
    out = moorage(
        "status", "--existing", r0.url, "--data-dir", str(r0.data_dir), "--json", check=False
    )
    import json

    doc = json.loads(out.stdout)
    assert doc["scenario"] == "unreachable"
    assert out.returncode == 12, out.stderr
    assert f"moorage start --data-dir {r0.data_dir}" in doc["action"]
    empty = tmp_path / "gone"
    out = moorage("status", "--existing", r0.url, "--data-dir", str(empty), "--json", check=False)
    doc = json.loads(out.stdout)
    assert doc["scenario"] == "all-lost"
    assert out.returncode == 13, out.stderr
    assert "moorage restore" in doc["action"]


def test_concurrent_joins_are_serialized(cluster: Cluster) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tests.cluster import Node

    r0 = cluster.install()
    body = push_image(r0, "cluster/conc-join", "v1", "cj")
    nodes = [Node(cluster.root, f"cj{i}") for i in range(2)]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(cluster.join_raw, nodes))
    for node, out in zip(nodes, results, strict=True):
        assert out.returncode == 0, out.stderr
        node.replica_id = json.loads(out.stdout)["replica_id"]
        cluster.nodes.append(node)
    doc = cluster.status()
    assert doc["scenario"] == "healthy", doc
    assert doc["quorum"] == {"members": 3, "needed": 2, "healthy": 3}
    for node in nodes:
        assert pull_image(node, "cluster/conc-join", "v1") == body


def test_kill_follower_then_leader_of_five(three: Cluster) -> None:
    """The module's cluster grown to five; it kills two of them, so it runs last."""
    cluster = three
    for _ in range(2):
        cluster.join()
    assert len(cluster.nodes) == 5
    body = push_image(cluster.nodes[0], "cluster/five", "v1", "five")
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes if n is not leader)

    follower.signal(signal.SIGKILL)
    survivors = [n for n in cluster.nodes if n is not follower]
    for i, n in enumerate(survivors):
        assert pull_image(n, "cluster/five", "v1") == body
        push_image(n, "cluster/five", f"after-follower-{i}", f"f{i}")

    leader.signal(signal.SIGKILL)
    survivors = [n for n in survivors if n is not leader]
    for i, n in enumerate(survivors):
        # Pulls never stop; pushes are refused (503, read-only) while a new leader is
        # elected: retried, as a client does on 503 (the bound is not a speed claim).
        assert pull_image(n, "cluster/five", "v1") == body
        deadline = time.monotonic() + 60
        while True:
            try:
                push_image(n, "cluster/five", f"after-leader-{i}", f"l{i}")
                break
            except (AssertionError, httpx.HTTPError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    expected = {follower.replica_id, leader.replica_id}
    deadline = time.monotonic() + 60
    while True:  # until the survivors' heartbeats and the new leader have settled
        doc = cluster.wait_status("replicas-unhealthy", survivors)
        down = {r["id"] for r in doc["replicas"] if not r["healthy"]}
        if down == expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert down == expected, doc
    assert doc["quorum"]["members"] == 5
    assert doc["quorum"]["healthy"] == 3
    for n in survivors:
        for tag in ("v1", "after-follower-0", "after-leader-0"):
            pull_image(n, "cluster/five", tag)
