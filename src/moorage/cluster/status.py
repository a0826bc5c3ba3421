"""Which scenario the cluster is in, and the next command to run.

`gather` (`moorage.cluster.facts`) collects facts from the store and from every replica
(each etcd member's own status, each replica's `/_ping`, heartbeats); `diagnose` is a pure
function of those facts, so every scenario is unit-testable; the commands it proposes come
from `moorage.cluster.guidance`. Reads use etcd's serializable mode (the local member's
copy), so status keeps working when quorum is lost.
"""

from __future__ import annotations

from typing import Any

from moorage.cluster.facts import HEARTBEAT_FRESH, PING_TIMEOUT, Facts, fault_tolerance, gather
from moorage.cluster.fence import FENCE_UNCHECKED
from moorage.cluster.guidance import (
    JOIN_PLACEHOLDERS,
    PASSWORD_NOTE,
    PLACEHOLDERS,
    action_text,
    command,
    localize,
    next_block,
    placeholders,
    program,
    rejoin_procedure,
)
from moorage.cluster.guidance import repair_procedure as _repair_procedure
from moorage.cluster.guidance import scenario_commands as _commands
from moorage.cluster.status_report import replica_row, status_document
from moorage.meta.etcd import Member, MemberStatus
from moorage.meta.records import HeartbeatRecord

# Re-exported: the status path's names are imported from here (`gather` -> `Facts` ->
# `diagnose`, and the printing of its commands).
__all__ = [
    "HEARTBEAT_FRESH",
    "JOIN_PLACEHOLDERS",
    "PASSWORD_NOTE",
    "PING_TIMEOUT",
    "PLACEHOLDERS",
    "Facts",
    "action_text",
    "command",
    "diagnose",
    "facts_replica_by_peer",
    "fault_tolerance",
    "gather",
    "localize",
    "next_block",
    "placeholders",
    "program",
    "rejoin_procedure",
]


def _leader(facts: Facts) -> int:
    """The leader the reachable voters agree on in the newest term; 0 when there is none."""
    best: tuple[int, int] = (0, 0)
    for st in facts.statuses.values():
        if isinstance(st, MemberStatus) and st.leader and (st.raft_term, st.leader) > best:
            best = (st.raft_term, st.leader)
    return best[1]


def diagnose(facts: Facts) -> dict[str, Any]:
    leader = _leader(facts)
    voters = [m for m in facts.members if not m.is_learner]
    needed = len(voters) // 2 + 1
    connected = [
        m
        for m in voters
        if isinstance(st := facts.statuses.get(m.id), MemberStatus)
        and leader
        and st.leader == leader
        and not st.errors
    ]
    quorum_ok = bool(leader) and len(connected) >= needed

    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for m in facts.members:
        rid = m.name or facts_replica_by_peer(facts, m) or m.hex_id
        seen.add(rid)
        rows.append(_row(facts, rid, m, leader, quorum_ok))
    for rid in sorted(set(facts.replicas) - seen):
        rows.append(_row(facts, rid, None, leader, quorum_ok))

    # Processes up, etcd members answering, no leader yet (a cluster whose replicas were
    # just started): an election is pending, not a lost quorum.
    answering = [
        m
        for m in voters
        if isinstance(st := facts.statuses.get(m.id), MemberStatus)
        and not st.errors
        and _api_answers(facts, m)
    ]
    if not quorum_ok and len(answering) >= needed:
        scenario = "starting"
        for r in rows:
            if not r["healthy"] and r["raft_index"] is not None and r["reachable"]:
                r["state"] = "starting"
                r["progress"] = (
                    f"no leader elected yet ({len(answering)} of {len(voters)} voting "
                    "members answer)"
                )
    elif not quorum_ok:
        scenario = "quorum-lost"
    elif any(not r["healthy"] for r in rows):
        scenario = "replicas-unhealthy"
    else:
        scenario = "healthy"
    commands = _commands(scenario, rows, facts)
    return status_document(
        cluster_id=facts.cluster_id,
        epoch=facts.epoch,
        scenario=scenario,
        action=action_text(commands)
        if commands
        else f"nothing to do: all {len(rows)} replicas are healthy",
        commands=commands,
        placeholders=placeholders(commands),
        procedure=_repair_procedure(rows, facts) if scenario == "quorum-lost" else [],
        quorum={
            "members": len(voters),
            "needed": needed,
            "healthy": len(connected) if leader else 0,
        },
        fault_tolerance=max(0, len(connected) - needed) if quorum_ok else 0,
        replicas=rows,
    )


def facts_replica_by_peer(facts: Facts, m: Member) -> str | None:
    for rid, rec in facts.replicas.items():
        if rec.etcd_peer_url in m.peer_urls:
            return rid
    return None


def _api_answers(facts: Facts, m: Member) -> bool:
    rid = m.name or facts_replica_by_peer(facts, m)
    ping = facts.pings.get(rid) if rid else None
    return bool(ping and ping[0] != 0)


def _leader_index(facts: Facts, leader: int) -> int | None:
    st = facts.statuses.get(leader)
    return st.raft_index if isinstance(st, MemberStatus) else None


def _row(facts: Facts, rid: str, m: Member | None, leader: int, quorum_ok: bool) -> dict[str, Any]:
    rec = facts.replicas.get(rid)
    st = facts.statuses.get(m.id) if m is not None else None
    ping = facts.pings.get(rid)
    hb = facts.heartbeats.get(rid)
    problems: list[str] = []
    if m is None:
        problems.append("not an etcd member (removed, or its join did not finish)")
    elif not isinstance(st, MemberStatus):
        problems.append(f"etcd member unreachable: {st or 'no client URL'}")
    elif st.errors:
        problems.append("etcd member reports: " + "; ".join(st.errors))
    elif quorum_ok and st.leader != leader:
        problems.append("etcd member is not connected to the leader")
    elif not st.leader:
        problems.append("etcd member has no leader")
    if m is not None and m.is_learner:
        problems.append("etcd member is still a learner (join in progress)")
    if rec is None:
        problems.append("no replica record (its join did not finish)")
    if ping is None or ping[0] == 0:
        problems.append(f"API unreachable: {ping[1] if ping else 'no URL known'}")
    elif ping[0] != 200 or ping[1]:
        problems.append(f"API unhealthy: {ping[1] or f'HTTP {ping[0]}'}")
    if hb is None:
        problems.append("no heartbeat")
    elif facts.now - hb.at > HEARTBEAT_FRESH:
        problems.append(f"heartbeat {facts.now - hb.at:.0f} s old")
    progress = (
        _starting_progress(facts, m, st, ping, hb, leader) if problems and quorum_ok else None
    )
    return replica_row(
        id=rid,
        url=rec.url if rec else (hb.url if hb else None),
        healthy=not problems,
        state="healthy" if not problems else "starting" if progress else "unhealthy",
        progress=progress,
        reachable=bool(ping and ping[0] != 0),
        leader=bool(m is not None and leader and m.id == leader),
        learner=bool(m is not None and m.is_learner),
        raft_index=st.raft_index if isinstance(st, MemberStatus) else None,
        member_id=m.hex_id if m is not None else None,
        data_dir=rec.data_dir if rec else None,
        error="; ".join(problems) or None,
    )


_ELECTION_WORDS = ("leader changed", "no leader", "election")


def _starting_progress(
    facts: Facts,
    m: Member | None,
    st: MemberStatus | str | None,
    ping: tuple[int, str | None] | None,
    hb: HeartbeatRecord | None,
    leader: int,
) -> str | None:
    """How far a replica that is starting or catching up has got; None when it is not
    starting but broken. Starting means: its API answers (the process is up), its etcd
    member answers without errors and follows the current leader (or is a learner being
    promoted), and what is still missing is progress: learner, raft index behind the
    leader's, heartbeat not yet written, API not yet healthy."""
    if m is None or not isinstance(st, MemberStatus) or st.errors:
        return None
    if ping is None or ping[0] == 0:
        return None
    if st.leader != leader and not m.is_learner:
        return None
    # What says "just started": a learner, or no heartbeat since it started. A replica that
    # heartbeats and is still unhealthy is broken, not starting (a raft index a few entries
    # behind is normal in flight: progress to report, not evidence of a start).
    steps: list[str] = []
    if m.is_learner:
        steps.append("etcd member is a learner (not yet promoted to voter)")
    if hb is None:
        steps.append("heartbeat not yet written")
    elif facts.now - hb.at > HEARTBEAT_FRESH:
        steps.append(f"heartbeat not yet written since start (last {facts.now - hb.at:.0f} s ago)")
    if not steps and ping[1] and "no quorum" in ping[1]:
        # Its etcd member follows the leader, yet its API still reports the quorum lost: its
        # view is stale (right after quorum came back). Wait; never remove it for that.
        steps.append("its API has not yet seen the quorum return")
    if not steps and ping[1] and any(w in ping[1].lower() for w in _ELECTION_WORDS):
        # Its last store check met a leader election (the member follows a leader now): it
        # is healthy again at its next check. Wait; never remove it for that.
        steps.append("its API's last store check met a leader election")
    if not steps and ping[1] and FENCE_UNCHECKED in ping[1]:
        # Blob storage answers its probe again, but the fence marker's last read is older
        # than the grace (the store was just unreachable): it takes writes at the next read.
        steps.append("its API has not yet read the fence marker again since blob storage returned")
    if not steps:
        return None
    top = _leader_index(facts, leader)
    if top is not None and top > st.raft_index:
        steps.insert(0, f"raft index {st.raft_index}, {top - st.raft_index} behind the leader's")
    if ping[0] != 200 or ping[1]:
        steps.append(f"API not yet healthy: {ping[1] or f'HTTP {ping[0]}'}")
    return "; ".join(steps)
