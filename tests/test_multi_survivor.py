"""Emergency repair with more than one survivor, and what no flag may override.

Five replicas, three SIGKILLed: the two survivors have no leader. `status` prints the whole
procedure (emergency repair on the most up-to-date survivor, then destroy and join for the
other one), and every printed command works exactly as printed.
"""

from __future__ import annotations

import os
import pty
import shlex
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.process import ADMIN_PASSWORD, moorage_cmd

from moorage.cluster.status import Facts, diagnose
from moorage.meta.etcd import Member, MemberStatus
from moorage.meta.records import HeartbeatRecord, ReplicaRecord
from moorage.recovery.emergency import Candidate, check_refusals
from tests.cluster import Cluster, moorage, pull_image, push_image


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    c.shutdown()


def run_as_printed(command: str, answer: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command `status` printed, literally (the admin password in the environment, as
    an operator would have it); with `answer`, on a terminal that types it."""
    args = shlex.split(command)
    assert args[0] == "moorage", command
    env = dict(os.environ, MOORAGE_PASSWORD=ADMIN_PASSWORD)
    env.pop("MOORAGE_ADMIN_PASSWORD", None)
    if answer is None:
        out = subprocess.run(
            moorage_cmd(*args[1:]), capture_output=True, text=True, timeout=300, env=env
        )
    else:
        master, slave = pty.openpty()
        try:
            os.write(master, answer.encode())
            out = subprocess.run(
                moorage_cmd(*args[1:]), stdin=slave, capture_output=True, text=True,
                timeout=300, env=env,
            )  # fmt: skip
        finally:
            os.close(slave)
            os.close(master)
    assert out.returncode == 0, f"{command}\n{out.stdout}\n{out.stderr}"
    return out


def test_two_survivors_of_five_follow_status_literally(cluster: Cluster) -> None:
    r0 = cluster.install()
    for _ in range(4):
        cluster.join()
    doc = cluster.wait_status("healthy")
    assert doc["quorum"] == {"members": 5, "needed": 3, "healthy": 5}
    images = {
        f"multi/app{i}": push_image(cluster.nodes[i], f"multi/app{i}", "v1", f"m{i}")
        for i in range(5)
    }

    # While the quorum exists, nothing forces an emergency repair.
    forced = moorage(
        "emergency-repair", "--data-dir", str(r0.data_dir), "--yes", "--force", check=False
    )
    assert forced.returncode == 1
    assert "still has a leader" in forced.stderr
    assert "nothing may force" in forced.stderr
    assert cluster.status()["scenario"] == "healthy"

    # The leader and two others die; two survivors remain, without a leader.
    leader = cluster.leader()
    dead = [leader, *[n for n in cluster.nodes if n is not leader][:2]]
    survivors = [n for n in cluster.nodes if n not in dead]
    for node in dead:
        node.signal(signal.SIGKILL)

    def procedure_ready(doc: dict[str, Any]) -> bool:
        return doc["scenario"] == "quorum-lost" and len(doc["procedure"]) == 3

    # Polls the survivors' admin API and runs `moorage status` (~0.6 s of CPU a run) only
    # once they report the quorum lost.
    doc = cluster.wait_status("quorum-lost", survivors, until=procedure_ready)
    steps = doc["procedure"]
    best = next(n for n in survivors if n.replica_id == steps[0]["replica_id"])
    other = next(n for n in survivors if n is not best)
    repair = shlex.split(steps[0]["command"])
    assert repair[:4] == ["moorage", "emergency-repair", "--data-dir", str(best.data_dir)]
    assert repair[4] == "--existing"
    assert sorted(repair[5].split(",")) == sorted(n.url for n in cluster.nodes)
    assert len(repair) == 6
    assert [s["replica_id"] for s in steps[1:]] == [other.replica_id] * 2
    assert steps[1]["command"] == f"moorage destroy --data-dir {other.data_dir}"
    assert steps[2]["command"].startswith(f"moorage join --existing {best.url} ")
    for step in steps:
        assert step["command"] in doc["action"]
    out = moorage("status", "--existing", cluster.urls(survivors), check=False)
    assert out.returncode == 11, out.stderr  # quorum-lost
    text = out.stdout
    # The pasteable next: block: each host named on a comment line before its commands.
    assert f"# on the host of replica {best.replica_id}:\n{steps[0]['command']}\n" in text
    assert f"# on the host of replica {other.replica_id}:\n{steps[1]['command']}\n" in text

    # 1. The emergency repair, as printed, on a terminal that answers yes. The other
    # survivor answers without a leader: it is compared, fenced, and told how to come back.
    out = run_as_printed(steps[0]["command"], answer="y\n")
    assert "still answers" not in out.stdout + out.stderr
    assert f"on the host of replica {other.replica_id}" in out.stdout
    assert " && ".join(s["command"] for s in steps[1:]) in out.stdout
    assert "accepts writes" in out.stdout
    # 2, 3. Destroy and join the other survivor, as printed (destroy asks; the operator
    # answers yes on the terminal).
    for step in steps[1:]:
        run_as_printed(step["command"], answer="y\n")

    doc = cluster.wait_status("healthy", survivors)
    assert doc["epoch"] == 2
    assert doc["quorum"] == {"members": 2, "needed": 2, "healthy": 2}
    rows = {r["url"]: r for r in doc["replicas"]}
    assert set(rows) == {best.url, other.url}
    assert rows[best.url]["id"] == best.replica_id
    for repo, body in images.items():
        for node in survivors:
            assert pull_image(node, repo, "v1") == body
    after = push_image(other, "multi/after", "v1", "after")
    assert pull_image(best, "multi/after", "v1") == after
    # The dead replicas were left out: fenced if they ever come back.
    out = moorage("start", "--data-dir", str(dead[1].data_dir), check=False)
    assert out.returncode == 1
    assert "fenced" in out.stderr


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
