"""Network cuts for cluster tests: one network namespace per replica, all on one bridge.

The reusable logic lives in `harness.netns` (the chaos harness uses it too); this module gives
the tests a fixture that builds, and always tears down, a cluster whose replicas each run
inside their own namespace. Namespaces need root and iproute2 (`make install` brings it);
without them the fixture fails with the reason rather than skipping the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.cluster import Cluster
from harness.netns import NetLab, Slot, netns_unavailable, run_in_netns

__all__ = ["NetLab", "Slot", "net_cluster", "run_in_netns"]


@pytest.fixture
def net_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """An empty cluster whose replicas each get a network namespace (`cluster.lab`)."""
    reason = netns_unavailable()
    if reason is not None:
        pytest.fail(f"network-cut tests cannot run: {reason}")
    lab = NetLab()
    cluster = Cluster(tmp_path, lab)
    try:
        yield cluster
    finally:
        cluster.shutdown()  # stops every replica by pid, then deletes namespaces and links
