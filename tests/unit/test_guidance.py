"""Recovery guidance (issue 10): what `status` says, as pure functions of the facts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from moorage.cluster.status import Facts, diagnose
from moorage.config import DataDir, ReplicaConfig
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


class _Unreachable:
    """An AdminClient whose replicas never answer."""

    urls = ["http://127.0.0.1:5001", "http://127.0.0.1:5002"]

    def call(self, method: str, path: str, body: object = None) -> object:
        from moorage.recovery.client import ClusterUnreachable

        raise ClusterUnreachable("no replica answered: connection refused")


def _report(dirs: list[DataDir]) -> tuple[dict[str, Any], str]:
    from typing import cast

    from moorage.cli.main import status_text
    from moorage.recovery.client import AdminClient
    from moorage.recovery.status import status

    report = status(cast(AdminClient, _Unreachable()), dirs)
    doc: dict[str, Any] = report.to_json()
    assert status_text(report) == status_text(doc)
    return doc, status_text(doc)


def test_unreachable_and_all_lost_reports_say_what_was_examined(tmp_path: Path) -> None:
    gone = DataDir(tmp_path / "gone")
    doc, text = _report([gone])
    assert doc["scenario"] == "all-lost"
    assert doc["urls_examined"] == _Unreachable.urls
    assert "None" not in text
    assert "replica URLs examined: http://127.0.0.1:5001, http://127.0.0.1:5002" in text
    assert f"{gone.path}: no usable replica state (does not exist)" in text
    assert "cluster: not known" in text

    kept = DataDir(tmp_path / "kept")
    kept.make_dirs()
    cfg = ReplicaConfig(
        data_dir=str(kept.path), cluster_id="c" * 32, replica_id="a" * 12,
        http_addr="127.0.0.1:5001", storage=str(tmp_path / "blobs"),
        etcd_client_port=2379, etcd_peer_port=2380,
    )  # fmt: skip
    kept.save(cfg)
    (kept.etcd_dir / "member" / "snap").mkdir(parents=True)
    doc, text = _report([kept, gone])
    assert doc["scenario"] == "unreachable"
    assert "None" not in text
    assert f"cluster {'c' * 32} (from its data directories" in text
    assert (
        f"{kept.path}: replica {'a' * 12} of cluster {'c' * 32} at {cfg.url}, state present, "
        "not running"
    ) in text
    assert f"{gone.path}: no usable replica state (does not exist)" in text

    doc, text = _report([])
    assert "None" not in text
    assert "data directories examined: none (pass --data-dir" in text
