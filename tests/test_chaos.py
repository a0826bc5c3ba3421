"""A short run of every chaos scenario (`make chaos` runs them longer): three replicas, and
five for majority-loss; concurrent pushers, one fault per scenario; not one
acknowledged push may be lost. Every cluster serves HTTPS (TLS on, etcd with mutual TLS): the
pushers, the verifier and the CLI trust only the CA `moorage ca export` wrote, the restored
cluster's new one after total-loss. `gc` also deletes images and collects garbage throughout,
SIGKILLs the replica running a collection, and checks blob storage after a last collection.
`kill-minority-3-s3` keeps blob storage (journal, fence marker) in the worker's SeaweedFS.

The 3-replica cases on a storage directory run on two clusters instead of one each (a build is
~15 s of CPU): one on loopback for kill-minority, sigstop, gc and then total-loss, one in
namespaces for netcut and then majority-loss; each case leaves its cluster healthy, or runs
last on it (chaos.scenarios.CONSUMES_CLUSTER). A case that fails leaves it to no other."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from chaos.scenarios import CONSUMES_CLUSTER, SCENARIOS, Options, run_scenario, shared_cluster
from harness.cluster import Cluster

from tests.conftest import NETNS_SCENARIOS

LOAD_SECONDS = 4.5  # a third before the fault, a third during it, a third after recovery
#: In this order: on each shared cluster, the case of CONSUMES_CLUSTER comes last.
ORDER = ("kill-minority", "sigstop", "gc", "total-loss", "netcut", "majority-loss")
assert sorted(ORDER) == sorted(SCENARIOS)
CASES = [(name, 3, "fs") for name in ORDER]
# Five replicas for the one scenario whose steps differ with five: two survivors, the repair
# choosing between them. (kill-minority on 5 kills two of five instead of one of three, the
# same steps: tests/test_cluster.py kills two of five; under load, `make chaos
# CHAOS_ARGS="--replicas 5"`.)
CASES += [("majority-loss", 5, "fs")]
# Blob storage on S3 (the worker's SeaweedFS): a replica killed under load. (majority-loss
# on S3 passes too, in ~100 s: tests/test_s3_recovery.py covers its repair more cheaply.)
CASES += [("kill-minority", 3, "s3")]


@pytest.fixture(scope="module")
def shared() -> Iterator[dict[str, Cluster]]:
    """The clusters the 3-replica cases on a directory share, by kind ("netns" or
    "loopback"), made on first use; those left are shut down at the end."""
    clusters: dict[str, Cluster] = {}
    try:
        yield clusters
    finally:
        for cluster in clusters.values():
            cluster.shutdown()


@pytest.mark.parametrize(
    ("scenario", "replicas", "storage"),
    CASES,
    ids=[f"{s}-{n}" + ("-s3" if st == "s3" else "") for s, n, st in CASES],
)
def test_scenario_loses_nothing(
    scenario: str,
    replicas: int,
    storage: str,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
    shared: dict[str, Cluster],
) -> None:
    s3 = str(request.getfixturevalue("s3_url")) if storage == "s3" else None
    opts = Options(replicas=replicas, duration=LOAD_SECONDS, s3=s3, log=print)
    kind = "netns" if scenario in NETNS_SCENARIOS else "loopback"
    cluster = None
    if replicas == 3 and storage == "fs":
        if kind not in shared:
            shared[kind] = shared_cluster(scenario, tmp_path_factory.mktemp(f"chaos-{kind}"))
        cluster = shared[kind]
    ok = False
    try:
        result = run_scenario(scenario, opts, tmp_path, cluster)
        ok = result.ok
    finally:
        if cluster is not None and (scenario in CONSUMES_CLUSTER or not ok):
            del shared[kind]  # no later case runs on it: the next one makes another
            cluster.shutdown()
    print(result.describe())
    assert result.error is None, "\n".join(result.events)
    assert result.acknowledged > 0, result.failures
    assert result.lost == [], result.describe()
    assert result.backup_mismatch == [], result.describe()
    assert result.verified + result.deleted == result.acknowledged
    assert result.gc_problems == [], result.describe()
    if result.etcd_alone_lost is not None:
        # Whatever the recovered store lacked came back from the journal.
        assert result.journal_replayed is not None
        assert result.journal_replayed >= result.etcd_alone_lost
