"""Emergency repair with more than one survivor, and what no flag may override: the
refusals and the printed procedure as pure functions.

The same with real processes (five replicas, the leader and two others SIGKILLed, the two
survivors following status literally, pasted into a terminal) is
tests/test_paste.py::test_five_replicas_two_survivors (one five-replica cluster for both).
"""

from __future__ import annotations

from typing import Any

import pytest

from moorage.cluster.status import Facts, diagnose
from moorage.meta.etcd import Member, MemberStatus
from moorage.meta.records import HeartbeatRecord, ReplicaRecord
from moorage.recovery.emergency import Candidate, check_refusals

# -- the refusals, as pure functions ---------------------------------------------------------


def _doc(best_local: bool, answering: list[dict[str, Any]]) -> dict[str, Any]:
    best = Candidate("/d" if best_local else "http://b", "a" * 12, None, "http://a", 10, True)
    if best_local:
        from moorage.config import DataDir

        best.data_dir = DataDir("/d")
    return {"_best": best, "answering": answering}


def _answer(rid: str, leader: bool | None, revision: int | None = 5) -> dict[str, Any]:
    return {
        "replica_id": rid,
        "answered": f"etcd http://{rid}",
        "has_leader": leader,
        "raft_index": 7,
        "data_revision": revision,
        "error": None if revision is not None else "unreadable",
    }


def test_force_never_overrides_a_quorum_or_a_better_survivor() -> None:
    leading = _doc(True, [_answer("b" * 12, True)])
    for force in (False, True):
        (problem,) = check_refusals(leading, force)
        assert "still has a leader" in problem
    elsewhere = _doc(False, [])
    for force in (False, True):
        (problem,) = check_refusals(elsewhere, force)
        assert "run emergency-repair on its host" in problem


def test_a_leaderless_survivor_is_no_reason_to_refuse() -> None:
    assert (
        check_refusals(_doc(True, [_answer("a" * 12, False), _answer("b" * 12, False)]), False)
        == []
    )
    # One whose data could not be compared, or whose quorum cannot be told: --force may go on.
    for answer in (_answer("b" * 12, False, revision=None), _answer("b" * 12, None)):
        doc = _doc(True, [answer])
        assert len(check_refusals(doc, False)) == 1
        assert check_refusals(doc, True) == []


def test_status_prints_the_whole_procedure_for_two_survivors() -> None:
    def rec(rid: str, n: int) -> ReplicaRecord:
        return ReplicaRecord(
            replica_id=rid, url=f"http://127.0.0.1:50{n}0", etcd_peer_url=f"http://127.0.0.1:23{n}0",
            etcd_client_url=f"http://127.0.0.1:23{n}1", data_dir=f"/srv/r {n}", storage="/blobs",
            joined_at=0.0,
        )  # fmt: skip

    ids = [f"{i}" * 12 for i in range(1, 6)]
    members = [
        Member(i + 1, rid, (f"http://127.0.0.1:23{i}0",), (), False) for i, rid in enumerate(ids)
    ]
    statuses: dict[int, MemberStatus | str] = {m.id: "did not answer" for m in members}
    statuses[4] = MemberStatus(4, 0, 900, 3, False, 50, ())
    statuses[5] = MemberStatus(5, 0, 901, 3, False, 50, ())
    pings: dict[str, tuple[int, str | None]] = {rid: (0, "refused") for rid in ids[:3]}
    pings |= {rid: (200, "read-only") for rid in ids[3:]}
    facts = Facts(
        cluster_id="c", epoch=1, members=members, statuses=statuses,
        replicas={rid: rec(rid, i) for i, rid in enumerate(ids)},
        heartbeats={rid: HeartbeatRecord(rid, "", 0.0, False) for rid in ids},
        pings=pings,
    )  # fmt: skip
    doc = diagnose(facts)
    assert doc["scenario"] == "quorum-lost"
    urls = ",".join(f"http://127.0.0.1:50{i}0" for i in range(5))
    assert doc["procedure"] == [
        {
            "replica_id": ids[4],
            "command": f"moorage emergency-repair --data-dir '/srv/r 4' --existing {urls}",
        },
        {"replica_id": ids[3], "command": "moorage destroy --data-dir '/srv/r 3'"},
        {
            "replica_id": ids[3],
            "command": "moorage join --existing http://127.0.0.1:5040 --data-dir '/srv/r 3' "
            "--http-addr 127.0.0.1:5030 --etcd-client-port 2331 --etcd-peer-port 2330",
        },
    ]  # fmt: skip
    assert doc["action"].startswith(doc["procedure"][0]["command"] + "  # on the host of")
    assert f"then on the host of replica {ids[3]}: moorage destroy" in doc["action"]


def test_a_leader_named_just_after_it_died_is_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Right after the leader is killed the others still name it for an election timeout:
    the probe asks again rather than refusing; a leader that stays is reported."""
    import asyncio

    from moorage.meta.etcd import ClientTls
    from moorage.recovery import candidates

    rec = ReplicaRecord("b" * 12, "http://b", "http://b:1", "http://b:2", "/b", "/s", 0.0)
    answers = {"stale": [True, True, False], "live": [True] * 100}

    def fake(kind: str) -> Any:
        async def probe(r: ReplicaRecord, read_revision: bool, tls: object) -> candidates.Probe:
            return candidates.Probe(r, "etcd", answers[kind].pop(0), 7, 5)

        return probe

    monkeypatch.setattr(candidates, "_probe", fake("stale"))
    tls = ClientTls(b"ca", b"key", b"cert")  # the fake probe dials nothing
    (p,) = asyncio.run(candidates.probe_members([rec], set(), tls, patience=30))
    assert p.has_leader is False
    monkeypatch.setattr(candidates, "_probe", fake("live"))
    (p,) = asyncio.run(candidates.probe_members([rec], set(), tls, patience=1.5))
    assert p.has_leader is True
