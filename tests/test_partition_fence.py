"""Emergency repair across a partition: the survivor it runs on cannot see the old majority,
which still has its own quorum and keeps taking pushes while the repair runs. Every replica
serves HTTPS (non-loopback addresses), verified against the cluster CA only.

Once the repair has written the fence, every push to the old majority answers 503, and every
push that any replica acknowledged (201) is in the repaired cluster: a push acknowledged by
the old majority passed its fence check after its journal entry was durable, so the repair,
which reads the journal after writing the fence, replays it (see moorage.cluster.fence).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

from chaos.images import Image, make_image
from harness.cluster import Cluster, Node

from tests.netns import net_cluster
from tests.test_partition import check_pull, push_ok, three, try_push, wait_read_only

__all__ = ["net_cluster"]  # the fixture, imported for pytest


@dataclass
class Attempt:
    node: Node
    tag: str
    image: Image
    status: int
    started: float


def test_fence_stops_the_old_majority_and_loses_no_acknowledged_push(
    net_cluster: Cluster,
) -> None:
    cluster = net_cluster
    assert cluster.lab is not None
    three(cluster)
    leader = cluster.leader()
    survivor = next(n for n in cluster.nodes if n is not leader)
    majority = [n for n in cluster.nodes if n is not survivor]
    assert survivor.slot is not None
    before = make_image("before")
    push_ok(majority[0], "fence/app", "before", before)

    cluster.lab.cut(survivor.slot)
    wait_read_only(survivor)
    push_ok(majority[1], "fence/app", "cut", cut_image := make_image("cut"))

    # Both replicas of the old majority take pushes, one after another, all along.
    attempts: list[Attempt] = []
    stop = threading.Event()

    def pusher(node: Node, k: int) -> None:
        i = 0
        while not stop.is_set():
            tag = f"m{k}-{i}"
            image = make_image(tag, layer_size=512)
            started = time.monotonic()
            attempts.append(
                Attempt(node, tag, image, try_push(node, "fence/app", tag, image), started)
            )
            i += 1

    threads = [threading.Thread(target=pusher, args=(n, k)) for k, n in enumerate(majority)]
    for t in threads:
        t.start()
    try:
        while sum(a.status == 201 for a in attempts) < 4:  # the majority really writes
            time.sleep(0.1)
        # The repair runs inside the survivor's namespace: it cannot see the majority.
        out = cluster.cli(
            "emergency-repair", "--data-dir", str(survivor.data_dir), "--yes", "--json",
            node=survivor,
        )  # fmt: skip
        repaired = time.monotonic()  # the fence was written before the command returned
        while sum(a.started > repaired for a in attempts) < 6:
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join()
    result = json.loads(out.stdout)["result"]
    assert result["epoch"] == 2

    # After the fence, the old majority acknowledges nothing.
    late = [a for a in attempts if a.started > repaired]
    assert late
    assert [a.status for a in late] == [503] * len(late), [(a.tag, a.status) for a in late]
    acked = [a for a in attempts if a.status == 201]
    assert len(acked) >= 4
    # Every acknowledged push is in the repaired cluster (asked inside the survivor's side).
    check_pull(survivor, "fence/app", "before", before, inside=True)
    check_pull(survivor, "fence/app", "cut", cut_image, inside=True)
    for a in acked:
        check_pull(survivor, "fence/app", a.tag, a.image, inside=True)
    assert result["journal_replayed"]["applied"] >= len(acked)

    # The old majority's admin API refuses too.
    for node in majority:
        with node.client() as c:
            refused = c.put("/v2/fence/app/manifests/x", content=before.manifest, headers={
                "Content-Type": "application/vnd.oci.image.manifest.v1+json"
            })  # fmt: skip
            assert refused.status_code == 503
            assert "fenced" in refused.json()["errors"][0]["message"]
            status = c.get("/api/v0/cluster/status")
            assert status.status_code == 503
            assert "fenced" in status.json()["error"]
