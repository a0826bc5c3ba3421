"""Network partitions: three replicas, each in its own network namespace; one is cut off.

The majority side keeps serving reads and writes and reports the cut replica; the cut
replica serves reads only and refuses every write, so the two sides never accept diverging
writes (no split brain); after the heal the cut replica serves everything pushed meanwhile.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
from chaos.images import Image, PushRefused, make_image, push, verify
from harness.cluster import Cluster, Node

from tests.netns import net_cluster, run_in_netns

__all__ = ["net_cluster"]  # the fixture, imported for pytest


def try_push(node: Node, repo: str, tag: str, image: Image, inside: bool = False) -> int:
    """Push through `node` (from inside its namespace with `inside`); the manifest PUT's
    status, an earlier step's error status, or 0 when no answer came."""

    def attempt() -> int:
        with node.client(timeout=20) as c:
            try:
                push(c, repo, tag, image)
            except PushRefused as exc:
                return exc.status
            except httpx.HTTPError:
                return 0
        return 201

    if inside:
        assert node.slot is not None
        return run_in_netns(node.slot.netns, attempt)
    return attempt()


def push_ok(node: Node, repo: str, tag: str, image: Image, patience: float = 60) -> None:
    """Push through `node`, retrying while the cluster elects a leader."""
    deadline = time.monotonic() + patience
    while (status := try_push(node, repo, tag, image)) != 201:
        assert time.monotonic() < deadline, f"push through {node} kept failing: {status}"
        time.sleep(0.5)


def check_pull(node: Node, repo: str, tag: str, image: Image, inside: bool = False) -> None:
    def attempt() -> str:
        with node.client() as c:
            return verify(c, repo, tag, image.digest, image.blob_digests)

    if inside:
        assert node.slot is not None
        problem = run_in_netns(node.slot.netns, attempt)
    else:
        problem = attempt()
    assert problem == "", f"{node}: {problem}"


def wait_read_only(node: Node, patience: float = 60) -> None:
    """Until the cut replica itself says it cannot take writes."""
    assert node.slot is not None

    def ping() -> tuple[int, int]:
        with httpx.Client(base_url=node.url, timeout=5) as c:
            return c.get("/_ping").status_code, c.get("/_ping?writable=1").status_code

    deadline = time.monotonic() + patience
    while (got := run_in_netns(node.slot.netns, ping)) != (200, 503):
        assert time.monotonic() < deadline, f"{node} never became read-only: {got}"
        time.sleep(0.5)


def unhealthy_ids(doc: dict[str, Any]) -> list[str]:
    return sorted(r["id"] for r in doc["replicas"] if not r["healthy"])


def three(cluster: Cluster) -> tuple[Node, Node, Node]:
    r0 = cluster.install()
    r1 = cluster.join()
    r2 = cluster.join(via=r1)
    doc = cluster.wait_status("healthy")
    assert doc["quorum"] == {"members": 3, "needed": 2, "healthy": 3}
    return r0, r1, r2


def partition_then_heal(cluster: Cluster, cut: Node) -> None:
    """The whole scenario with `cut` cut off from the two others."""
    assert cluster.lab is not None
    assert cut.slot is not None
    majority = [n for n in cluster.nodes if n is not cut]
    before = make_image("before")
    push_ok(majority[0], "part/app", "before", before)

    cluster.lab.cut(cut.slot)
    # The majority keeps taking pushes (after a new election when the leader was cut).
    during = {f"during-{i}": make_image(f"during-{i}") for i in range(4)}
    for i, (tag, image) in enumerate(during.items()):
        push_ok(majority[i % 2], "part/app", tag, image)
    # Status asked through the majority names the cut replica, and only it.
    doc = cluster.wait_status(
        "replicas-unhealthy", majority, until=lambda d: unhealthy_ids(d) == [cut.replica_id]
    )
    assert doc["quorum"]["members"] == 3
    assert doc["quorum"]["healthy"] == 2
    assert any(r["leader"] for r in doc["replicas"] if r["id"] != cut.replica_id), doc
    row = next(r for r in doc["replicas"] if r["id"] == cut.replica_id)
    assert not row["reachable"]
    assert f"--replica-id {cut.replica_id}" in doc["action"]

    # The cut replica serves reads from its local copy and refuses writes, clearly.
    wait_read_only(cut)
    check_pull(cut, "part/app", "before", before, inside=True)
    assert try_push(cut, "part/app", "minority-only", make_image("m"), inside=True) == 503

    # No split brain: both sides are asked, at once, to tag different manifests with the same
    # tag; only the majority's push is acknowledged.
    ours, theirs = make_image("majority-side"), make_image("minority-side")
    minority_status: list[int] = []
    t = threading.Thread(
        target=lambda: minority_status.append(
            try_push(cut, "part/app", "contested", theirs, inside=True)
        )
    )
    t.start()
    push_ok(majority[1], "part/app", "contested", ours)
    t.join()
    assert minority_status == [503]
    for n in majority:
        check_pull(n, "part/app", "contested", ours)

    cluster.lab.heal(cut.slot)
    doc = cluster.wait_status("healthy", timeout=120)
    assert doc["quorum"] == {"members": 3, "needed": 2, "healthy": 3}
    # The healed replica serves everything pushed meanwhile, and the majority's tag.
    for tag, image in {"before": before, **during, "contested": ours}.items():
        check_pull(cut, "part/app", tag, image)
    with cut.client() as c:
        tags = c.get("/v2/part/app/tags/list").json()["tags"]
    assert sorted(tags) == sorted(["before", *during, "contested"])  # no "minority-only"
    after = make_image("after-heal")
    push_ok(cut, "part/app", "after-heal", after)
    for n in majority:
        check_pull(n, "part/app", "after-heal", after)


def test_cut_follower(net_cluster: Cluster) -> None:
    three(net_cluster)
    leader = net_cluster.leader()
    follower = next(n for n in net_cluster.nodes if n is not leader)
    partition_then_heal(net_cluster, follower)


def test_cut_leader(net_cluster: Cluster) -> None:
    three(net_cluster)
    leader = net_cluster.leader()
    partition_then_heal(net_cluster, leader)
    # The majority elected another leader while the old one was cut off.
    assert net_cluster.status()["scenario"] == "healthy"
