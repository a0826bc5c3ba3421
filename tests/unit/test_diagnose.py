"""`diagnose()` for every scenario, from hand-built facts (no etcd, no replica)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from moorage.cluster.status import HEARTBEAT_FRESH, Facts, diagnose, rejoin_procedure
from moorage.config import DataDir
from moorage.meta.etcd import Member, MemberStatus
from moorage.recovery.client import AdminClient
from moorage.recovery.status import status
from tests.unit.test_guidance import healthy_facts, rec

ID1, ID2, ID3 = "1" * 12, "2" * 12, "3" * 12


def row(doc: dict[str, Any], rid: str) -> dict[str, Any]:
    found = [r for r in doc["replicas"] if r["id"] == rid]
    assert len(found) == 1, doc["replicas"]
    only: dict[str, Any] = found[0]
    return only


def down(facts: Facts, member_id: int, rid: str) -> None:
    """Replica `rid` (etcd member `member_id`) is dead: nothing of it answers."""
    facts.statuses[member_id] = "connection refused"
    facts.pings[rid] = (0, "connection refused")
    facts.heartbeats[rid] = replace(facts.heartbeats[rid], at=facts.now - 120)


def test_healthy_cluster_rows() -> None:
    doc = diagnose(healthy_facts(3))
    assert doc["scenario"] == "healthy"
    assert doc["quorum"] == {"members": 3, "needed": 2, "healthy": 3}
    assert doc["fault_tolerance"] == 1
    assert doc["procedure"] == []
    assert [r["id"] for r in doc["replicas"]] == [ID1, ID2, ID3]
    assert all(r["healthy"] and r["reachable"] and r["error"] is None for r in doc["replicas"])
    assert [r["leader"] for r in doc["replicas"]] == [True, False, False]
    assert row(doc, ID2)["member_id"] == "2"
    assert row(doc, ID3)["url"] == "http://127.0.0.1:5020"
    assert row(doc, ID3)["data_dir"] == "/srv/r2"


def test_one_dead_replica_is_removed_and_replaced() -> None:
    facts = healthy_facts(3)
    down(facts, 3, ID3)
    doc = diagnose(facts)
    assert doc["scenario"] == "replicas-unhealthy"
    assert doc["quorum"] == {"members": 3, "needed": 2, "healthy": 2}
    assert doc["fault_tolerance"] == 0
    dead = row(doc, ID3)
    assert not dead["healthy"]
    assert not dead["reachable"]
    assert dead["raft_index"] is None
    assert "etcd member unreachable: connection refused" in dead["error"]
    assert "API unreachable: connection refused" in dead["error"]
    assert "heartbeat 120 s old" in dead["error"]
    assert row(doc, ID1)["healthy"]
    assert row(doc, ID2)["healthy"]
    existing = "http://127.0.0.1:5000,http://127.0.0.1:5010"
    assert doc["action"].startswith(f"moorage remove --existing {existing} --replica-id {ID3}")
    assert "moorage join --existing http://127.0.0.1:5000" in doc["action"]
    assert doc["procedure"] == []


def test_several_dead_replicas_are_removed_in_one_command() -> None:
    facts = healthy_facts(5)
    ids = [f"{i}" * 12 for i in range(1, 6)]
    down(facts, 4, ids[3])
    down(facts, 5, ids[4])
    doc = diagnose(facts)
    assert doc["scenario"] == "replicas-unhealthy"
    assert doc["quorum"] == {"members": 5, "needed": 3, "healthy": 3}
    assert doc["fault_tolerance"] == 0
    assert f"--replica-id {ids[3]},{ids[4]}" in doc["action"]


def test_api_unhealthy_but_etcd_fine() -> None:
    facts = healthy_facts(3)
    facts.pings[ID2] = (503, "storage: disk full")
    doc = diagnose(facts)
    assert doc["scenario"] == "replicas-unhealthy"
    assert doc["fault_tolerance"] == 1  # etcd still has all three voters
    bad = row(doc, ID2)
    assert bad["reachable"]
    assert not bad["healthy"]
    assert bad["error"] == "API unhealthy: storage: disk full"


def test_blob_storage_down_on_every_replica_says_fix_it_not_remove() -> None:
    """S3 unreachable from all three (etcd fine): the advice is to fix blob storage; no
    `moorage remove` of every replica, which would help nothing."""
    facts = healthy_facts(3)
    msg = "storage: S3 blob storage unreachable (probe): Connect timeout on endpoint URL"
    for rid in (ID1, ID2, ID3):
        facts.pings[rid] = (503, msg)
    doc = diagnose(facts)
    assert doc["scenario"] == "replicas-unhealthy"
    assert "moorage remove" not in doc["action"]
    assert "moorage join" not in doc["action"]
    [cmd] = doc["commands"]
    assert cmd["command"].startswith("moorage status --existing ")
    assert "fails on every replica that answers (S3 blob storage unreachable" in cmd["note"]
    assert "fix blob storage" in cmd["note"]
    # One replica alone failing storage (its mount, its network) is still taken out.
    facts.pings[ID1] = facts.pings[ID2] = (200, None)
    doc = diagnose(facts)
    assert doc["action"].startswith("moorage remove --existing ")
    assert f"--replica-id {ID3}" in doc["action"]
    # Two fail storage, the third is dead: fix storage first, then replace the dead one.
    facts.pings[ID1] = facts.pings[ID2] = (503, msg)
    down(facts, 3, ID3)
    [cmd] = diagnose(facts)["commands"]
    assert "fix blob storage first" in cmd["note"]
    assert "the 1 other replica(s) to replace" in cmd["note"]


def test_api_whose_last_check_met_an_election_is_waited_for_not_removed() -> None:
    """The leader's API reported "leader changed" from an election that has ended (its
    member answers and follows the leader): status says to wait, never to remove it."""
    facts = healthy_facts(3)
    msg = "etcd: the metadata store (etcd) is unavailable: etcdserver: leader changed"
    facts.pings[ID1] = (503, msg)
    doc = diagnose(facts)
    assert row(doc, ID1)["state"] == "starting"
    assert [c["command"].split()[1] for c in doc["commands"]] == ["status"]
    assert "wait: replica " + ID1 in doc["commands"][0]["note"]


def test_api_answers_with_an_error_status_only() -> None:
    facts = healthy_facts(3)
    facts.pings[ID2] = (500, None)
    assert row(diagnose(facts), ID2)["error"] == "API unhealthy: HTTP 500"


def test_stale_or_missing_heartbeat() -> None:
    facts = healthy_facts(3)
    facts.heartbeats[ID2] = replace(facts.heartbeats[ID2], at=facts.now - HEARTBEAT_FRESH - 5)
    del facts.heartbeats[ID3]
    doc = diagnose(facts)
    assert doc["scenario"] == "replicas-unhealthy"
    assert row(doc, ID2)["error"] == "heartbeat 15 s old"
    assert row(doc, ID3)["error"] == "no heartbeat"
    # A heartbeat exactly at the limit is still fresh.
    facts = healthy_facts(3)
    facts.heartbeats[ID2] = replace(facts.heartbeats[ID2], at=facts.now - HEARTBEAT_FRESH)
    assert diagnose(facts)["scenario"] == "healthy"


def test_member_reporting_errors() -> None:
    facts = healthy_facts(3)
    st = facts.statuses[2]
    assert isinstance(st, MemberStatus)
    facts.statuses[2] = replace(st, errors=("NOSPACE",))
    doc = diagnose(facts)
    assert doc["scenario"] == "replicas-unhealthy"
    assert row(doc, ID2)["error"] == "etcd member reports: NOSPACE"
    assert doc["quorum"]["healthy"] == 2


def test_member_following_another_leader() -> None:
    """A partitioned member that still believes in an older leader."""
    facts = healthy_facts(3)
    st = facts.statuses[3]
    assert isinstance(st, MemberStatus)
    facts.statuses[3] = replace(st, leader=3, raft_term=1)
    doc = diagnose(facts)
    assert doc["scenario"] == "replicas-unhealthy"
    assert row(doc, ID3)["error"] == "etcd member is not connected to the leader"
    assert row(doc, ID1)["leader"]
    assert not row(doc, ID3)["leader"]


def test_newest_term_decides_the_leader() -> None:
    facts = healthy_facts(3)
    for mid, st in list(facts.statuses.items()):
        assert isinstance(st, MemberStatus)
        facts.statuses[mid] = replace(st, leader=2, raft_term=3)
    st1 = facts.statuses[1]
    assert isinstance(st1, MemberStatus)
    facts.statuses[1] = replace(st1, leader=1, raft_term=2)  # left behind in an older term
    doc = diagnose(facts)
    assert row(doc, ID2)["leader"]
    assert "not connected to the leader" in row(doc, ID1)["error"]
    assert doc["scenario"] == "replicas-unhealthy"


def test_learner_being_added() -> None:
    facts = healthy_facts(3)
    facts.members[2] = replace(facts.members[2], is_learner=True)
    st = facts.statuses[3]
    assert isinstance(st, MemberStatus)
    facts.statuses[3] = replace(st, is_learner=True)
    doc = diagnose(facts)
    # A learner is no voter: two voting members, both needed.
    assert doc["quorum"] == {"members": 2, "needed": 2, "healthy": 2}
    learner = row(doc, ID3)
    assert learner["learner"]
    assert not learner["healthy"]
    assert "etcd member is still a learner (join in progress)" in learner["error"]


def test_replica_record_without_member_and_member_without_record() -> None:
    facts = healthy_facts(3)
    # Replica 3's member is gone (removed, or its join stopped before the member was added)...
    facts.members = facts.members[:2]
    del facts.statuses[3]
    # ...and member 2's replica record was never written (its join stopped after the member).
    del facts.replicas[ID2]
    del facts.pings[ID2]
    doc = diagnose(facts)
    assert doc["quorum"] == {"members": 2, "needed": 2, "healthy": 2}
    orphan = row(doc, ID3)
    assert orphan["member_id"] is None
    assert "not an etcd member (removed, or its join did not finish)" in orphan["error"]
    unrecorded = row(doc, ID2)
    assert "no replica record (its join did not finish)" in unrecorded["error"]
    assert "API unreachable: no URL known" in unrecorded["error"]
    # Without a record, the URL comes from the heartbeat.
    assert unrecorded["url"] == facts.heartbeats[ID2].url
    assert doc["scenario"] == "replicas-unhealthy"


def test_member_without_name_is_matched_by_peer_url() -> None:
    facts = healthy_facts(3)
    facts.members[1] = replace(facts.members[1], name="")  # added, not started yet
    doc = diagnose(facts)
    assert doc["scenario"] == "healthy"
    assert [r["id"] for r in doc["replicas"]] == [ID1, ID2, ID3]


def test_quorum_lost_with_survivors_gives_the_repair_procedure() -> None:
    facts = healthy_facts(3)
    down(facts, 1, ID1)  # the leader and one more are gone
    down(facts, 3, ID3)
    # The survivor's member answers, without a leader; its API refuses writes.
    st = facts.statuses[2]
    assert isinstance(st, MemberStatus)
    facts.statuses[2] = replace(st, leader=0)
    facts.pings[ID2] = (0, "connection refused")
    doc = diagnose(facts)
    assert doc["scenario"] == "quorum-lost"
    assert doc["quorum"] == {"members": 3, "needed": 2, "healthy": 0}
    assert doc["fault_tolerance"] == 0
    assert "etcd member has no leader" in row(doc, ID2)["error"]
    urls = ",".join(f"http://127.0.0.1:50{i}0" for i in range(3))
    repair = f"moorage emergency-repair --data-dir /srv/r1 --existing {urls}"
    assert doc["procedure"] == [{"replica_id": ID2, "command": repair}]
    assert doc["action"].startswith(repair)


def test_quorum_lost_most_up_to_date_survivor_is_repaired_others_rejoin() -> None:
    facts = healthy_facts(5)
    ids = [f"{i}" * 12 for i in range(1, 6)]
    for mid, rid in ((1, ids[0]), (2, ids[1]), (3, ids[2])):
        down(facts, mid, rid)
    for mid, rid, index in ((4, ids[3], 90), (5, ids[4], 95)):
        st = facts.statuses[mid]
        assert isinstance(st, MemberStatus)
        facts.statuses[mid] = replace(st, leader=0, raft_index=index)
        facts.pings[rid] = (0, "connection refused")
    facts.replicas[ids[3]] = replace(facts.replicas[ids[3]], storage="/other-blobs")
    doc = diagnose(facts)
    assert doc["scenario"] == "quorum-lost"
    steps = doc["procedure"]
    assert [s["replica_id"] for s in steps] == [ids[4], ids[3], ids[3]]
    assert steps[0]["command"].startswith("moorage emergency-repair --data-dir /srv/r4 ")
    rejoin = rejoin_procedure(facts.replicas[ids[3]], "http://127.0.0.1:5040", "/blobs")
    assert [s["command"] for s in steps[1:]] == rejoin
    assert rejoin[0] == "moorage destroy --data-dir /srv/r3"
    assert rejoin[1] == (
        "moorage join --existing http://127.0.0.1:5040 --data-dir /srv/r3 "
        "--http-addr 127.0.0.1:5030 --etcd-client-port 2331 --etcd-peer-port 2330 "
        "--storage /other-blobs"
    )


def test_rejoin_procedure_quotes_and_names_a_non_default_host() -> None:
    r = replace(
        rec(ID1, 1),
        data_dir="/srv/my data",
        url="http://10.0.0.5:5000",
        etcd_peer_url="http://10.0.0.5:2380",
        etcd_client_url="http://10.0.0.5:2379",
    )
    destroy, join = rejoin_procedure(r, "http://10.0.0.6:5000", "/blobs")
    assert destroy == "moorage destroy --data-dir '/srv/my data'"
    assert "--data-dir '/srv/my data' --http-addr 10.0.0.5:5000" in join
    assert join.endswith("--etcd-host 10.0.0.5")  # same storage: no --storage


def test_quorum_lost_and_no_member_answers() -> None:
    facts = healthy_facts(3)
    for mid, rid in ((1, ID1), (2, ID2), (3, ID3)):
        down(facts, mid, rid)
    doc = diagnose(facts)
    assert doc["scenario"] == "quorum-lost"
    assert doc["procedure"] == []
    assert "moorage start --data-dir" in doc["action"]
    assert "emergency-repair" in doc["action"]


def test_single_replica_cluster() -> None:
    facts = healthy_facts(1)
    doc = diagnose(facts)
    assert doc["scenario"] == "healthy"
    assert doc["quorum"] == {"members": 1, "needed": 1, "healthy": 1}
    down(facts, 1, ID1)
    doc = diagnose(facts)
    assert doc["scenario"] == "quorum-lost"


def test_no_members_at_all() -> None:
    facts = Facts("c", 1, [], {}, {}, {}, {}, now=0.0)
    doc = diagnose(facts)
    assert doc["scenario"] == "quorum-lost"
    assert doc["replicas"] == []
    assert doc["quorum"] == {"members": 0, "needed": 1, "healthy": 0}


class _Answers:
    """An AdminClient whose cluster answers status."""

    urls = ["http://127.0.0.1:5001"]

    def call(self, method: str, path: str, body: object = None) -> object:
        assert (method, path) == ("GET", "/api/v0/cluster/status")
        return {
            "scenario": "healthy",
            "replicas": [],
            "quorum": {"members": 0, "needed": 1, "healthy": 0},
        }


def test_status_of_an_answering_cluster_reports_the_data_dirs(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    dirs = [DataDir(tmp_path / "gone"), DataDir(empty)]
    doc = status(cast(AdminClient, _Answers()), dirs).to_json()
    assert doc["scenario"] == "healthy"
    assert doc["data_dirs"] == [
        {"path": str(tmp_path / "gone"), "usable": False, "detail": "does not exist"},
        {"path": str(empty), "usable": False, "detail": "no moorage.json"},
    ]


class _FenceUnchecked:
    """An AdminClient whose replicas all refuse: they cannot read the fence marker (their
    blob storage is down), as the admin API answers then (503 "fenced: storage: ...")."""

    urls = ["http://127.0.0.1:5001", "http://127.0.0.1:5011"]

    def call(self, method: str, path: str, body: object = None) -> object:
        from moorage.cluster.fence import FENCE_UNCHECKED
        from moorage.recovery.client import ClusterUnreachable

        why = f"fenced: {FENCE_UNCHECKED} in s3://b/p: could not be read for 8 s"
        answers = [f"{u}: {why}" for u in self.urls]
        raise ClusterUnreachable("no replica answered: " + "; ".join(answers), answers)


def test_status_when_every_replica_cannot_read_the_fence_marker_says_fix_storage() -> None:
    doc = status(cast(AdminClient, _FenceUnchecked()), []).to_json()
    assert doc["scenario"] == "unreachable"
    [cmd] = doc["commands"]
    assert cmd["command"].endswith(
        "moorage status --existing http://127.0.0.1:5001,http://127.0.0.1:5011"
    )
    assert "fix blob storage first" in cmd["note"]
    assert "start, remove or repair no replica" in cmd["note"]
    assert "cannot check the fence marker" in doc["error"]


def test_members_are_voters_unless_learners() -> None:
    m = Member(7, "x", ("http://a:1",), (), True)
    facts = Facts("c", 1, [m], {7: "no client URL"}, {}, {}, {}, now=0.0)
    doc = diagnose(facts)
    assert doc["quorum"]["members"] == 0
    assert row(doc, "x")["learner"]
    assert "etcd member unreachable: no client URL" in row(doc, "x")["error"]


def test_status_report_json_is_the_document_key_for_key_in_order() -> None:
    """The typed report's one JSON form is the document diagnose serves, extras last."""
    from moorage.cluster.status_report import StatusReport

    doc = diagnose(healthy_facts(3))
    doc["data_dirs"] = []
    report = StatusReport.from_json(doc)
    assert report.scenario == "healthy"
    assert report.extra == {"data_dirs": []}
    assert list(report.to_json().items()) == list(doc.items())
