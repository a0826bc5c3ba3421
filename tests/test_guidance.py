"""Recovery guidance (issue 10): what `status` says, as pure functions of the facts."""

from __future__ import annotations

import time

from moorage.cluster.status import Facts, diagnose
from moorage.meta.etcd import Member, MemberStatus
from moorage.meta.records import HeartbeatRecord, ReplicaRecord


def rec(rid: str, i: int) -> ReplicaRecord:
    return ReplicaRecord(
        rid, f"http://127.0.0.1:50{i}0", f"http://127.0.0.1:23{i}0",
        f"http://127.0.0.1:23{i}1", f"/srv/r{i}", "/blobs", 0.0,
    )  # fmt: skip


def healthy_facts(n: int) -> Facts:
    """A healthy cluster of `n` voting members; member 1 leads."""
    ids = [f"{i}" * 12 for i in range(1, n + 1)]
    members = [
        Member(i + 1, rid, (f"http://127.0.0.1:23{i}0",), (f"http://127.0.0.1:23{i}1",), False)
        for i, rid in enumerate(ids)
    ]
    now = time.time()
    return Facts(
        cluster_id="c",
        epoch=1,
        members=members,
        statuses={m.id: MemberStatus(m.id, 1, 100, 2, False, 50, ()) for m in members},
        replicas={rid: rec(rid, i) for i, rid in enumerate(ids)},
        heartbeats={rid: HeartbeatRecord(rid, "", now, True) for rid in ids},
        pings={rid: (200, None) for rid in ids},
        now=now,
    )


def test_fault_tolerance_is_reported_and_zero_is_not_nothing_to_do() -> None:
    for n, tolerance in ((1, 0), (2, 0), (3, 1), (4, 1), (5, 2)):
        doc = diagnose(healthy_facts(n))
        assert doc["scenario"] == "healthy", doc
        assert doc["fault_tolerance"] == tolerance == (n - 1) // 2
        if tolerance:
            assert doc["action"].startswith("nothing to do"), doc["action"]
        else:
            # After a remove (2 of 2) or an emergency repair (1 of 1): not "nothing to do".
            assert "nothing to do" not in doc["action"]
            assert "no fault tolerance" in doc["action"]
            assert "survives 0 failures" in doc["action"]
            urls = ",".join(f"http://127.0.0.1:50{i}0" for i in range(n))
            assert f"moorage join --existing {urls} --data-dir NEW_DIR" in doc["action"]
            assert "--etcd-client-port" in doc["action"]


def test_fault_tolerance_counts_only_healthy_members() -> None:
    facts = healthy_facts(3)
    facts.statuses[3] = "connection refused"
    doc = diagnose(facts)
    assert doc["scenario"] == "replicas-unhealthy"
    assert doc["fault_tolerance"] == 0
    facts.statuses[2] = "connection refused"
    assert diagnose(facts)["fault_tolerance"] == 0
