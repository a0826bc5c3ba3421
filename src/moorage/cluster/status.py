"""Which scenario the cluster is in, and the next command to run.

`gather` collects facts from the store and from every replica (each etcd member's own
status, each replica's `/_ping`, heartbeats); `diagnose` is a pure function of those facts,
so every scenario is unit-testable. Reads use etcd's serializable mode (the local member's
copy), so status keeps working when quorum is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import httpx

from moorage.config import DEFAULT_ETCD_HOST
from moorage.errors import MoorageError
from moorage.meta.etcd import EtcdCluster, Member, MemberStatus, member_status
from moorage.meta.records import HeartbeatRecord, ReplicaRecord

HEARTBEAT_FRESH = 10.0
PING_TIMEOUT = 2.0


@dataclass
class Facts:
    cluster_id: str
    epoch: int
    members: list[Member]
    statuses: dict[int, MemberStatus | str]  # member id -> status, or why it did not answer
    replicas: dict[str, ReplicaRecord]
    heartbeats: dict[str, HeartbeatRecord]
    pings: dict[str, tuple[int, str | None]]  # replica id -> (HTTP status, error)
    now: float = field(default_factory=time.time)


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

    if not quorum_ok:
        scenario = "quorum-lost"
    elif any(not r["healthy"] for r in rows):
        scenario = "replicas-unhealthy"
    else:
        scenario = "healthy"
    return {
        "cluster_id": facts.cluster_id,
        "epoch": facts.epoch,
        "scenario": scenario,
        "action": _action(scenario, rows, facts),
        # Quorum lost: every step of the procedure, in order, with the replica whose host
        # runs it (the action says the same in one line).
        "procedure": _repair_procedure(rows, facts) if scenario == "quorum-lost" else [],
        "quorum": {
            "members": len(voters),
            "needed": needed,
            "healthy": len(connected) if leader else 0,
        },
        # How many more voting members can fail now with the cluster still accepting writes
        # ((members - 1) // 2 when all are healthy).
        "fault_tolerance": max(0, len(connected) - needed) if quorum_ok else 0,
        "replicas": rows,
    }


def fault_tolerance(voters: int) -> int:
    """Failures a cluster of `voters` voting members survives: (members - 1) // 2."""
    return max(0, (voters - 1) // 2)


def facts_replica_by_peer(facts: Facts, m: Member) -> str | None:
    for rid, rec in facts.replicas.items():
        if rec.etcd_peer_url in m.peer_urls:
            return rid
    return None


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
    return {
        "id": rid,
        "url": rec.url if rec else (hb.url if hb else None),
        "healthy": not problems,
        "reachable": bool(ping and ping[0] != 0),
        "leader": bool(m is not None and leader and m.id == leader),
        "learner": bool(m is not None and m.is_learner),
        "raft_index": st.raft_index if isinstance(st, MemberStatus) else None,
        "member_id": m.hex_id if m is not None else None,
        "data_dir": rec.data_dir if rec else None,
        "error": "; ".join(problems) or None,
    }


def _action(scenario: str, rows: list[dict[str, Any]], facts: Facts) -> str:
    good = [r for r in rows if r["healthy"] and r["url"]]
    bad = [r for r in rows if not r["healthy"]]
    existing = ",".join(r["url"] for r in good) or "URL"
    if scenario == "healthy":
        voters = sum(1 for m in facts.members if not m.is_learner)
        if fault_tolerance(voters) == 0:
            # Healthy, but one more failure loses quorum: not "nothing to do".
            missing = 3 - voters
            return (
                f"no fault tolerance: {voters} of {voters} voting member(s) healthy, the cluster "
                "survives 0 failures; add "
                + ("a replica" if missing == 1 else f"{missing} replicas, one at a time")
                + f" to survive 1: moorage join --existing {existing} --data-dir NEW_DIR "
                "--http-addr HOST:PORT --etcd-client-port PORT --etcd-peer-port PORT"
                " (on a new host or with free ports)"
            )
        return f"nothing to do: all {len(rows)} replicas are healthy"
    if scenario == "replicas-unhealthy":
        ids = ",".join(r["id"] for r in bad)
        first = good[0]["url"] if good else "URL"
        return (
            f"moorage remove --existing {existing} --replica-id {ids}"
            f"  # then add a replacement for each: moorage join --existing {first}"
            " --data-dir NEW_DIR --http-addr HOST:PORT"
            " (or rebuild one in place: moorage repair --existing URL --data-dir ITS_DIR)"
        )
    steps = _repair_procedure(rows, facts)
    if not steps:
        return (
            "no etcd member answers: start the replicas (moorage start --data-dir DIR on each);"
            " if none can start, run moorage emergency-repair --data-dir DIR on a survivor"
        )
    repair, rejoins = steps[0], steps[1:]
    action = f"{repair['command']}  # on the host of replica {repair['replica_id']}, the most "
    action += "up-to-date survivor"
    by_replica: dict[str, list[str]] = {}
    for step in rejoins:
        by_replica.setdefault(step["replica_id"], []).append(step["command"])
    for rid, commands in by_replica.items():
        action += f"; then on the host of replica {rid}: " + " && ".join(commands)
    return action


def _repair_procedure(rows: list[dict[str, Any]], facts: Facts) -> list[dict[str, str]]:
    """Quorum lost: emergency repair on the most up-to-date survivor, then every other
    survivor (its etcd member answers, without a leader) destroyed and joined again."""
    survivors = [r for r in rows if r["raft_index"] is not None]
    if not survivors:
        return []
    # The order emergency-repair compares them in: newest data first (raft index here).
    best = max(survivors, key=lambda r: (r["raft_index"], r["id"]))
    urls = ",".join(r["url"] for r in rows if r["url"])
    data_dir = shlex.quote(best["data_dir"]) if best["data_dir"] else "DIR"
    steps = [
        {
            "replica_id": best["id"],
            "command": f"moorage emergency-repair --data-dir {data_dir} --existing {urls}",
        }
    ]
    best_rec = facts.replicas.get(best["id"])
    for r in survivors:
        rec = facts.replicas.get(r["id"])
        if r is best or rec is None:
            continue
        storage = best_rec.storage if best_rec else None
        for command in rejoin_procedure(rec, best["url"] or "URL", storage):
            steps.append({"replica_id": r["id"], "command": command})
    return steps


def rejoin_procedure(rec: ReplicaRecord, existing: str, storage: str | None = None) -> list[str]:
    """The commands, run on its host, that make a replica an emergency repair left out (and
    fenced) a replica of the repaired cluster `existing` again: a new replica in the same
    data directory, on the same addresses and ports. `storage`: the repaired cluster's blob
    storage path (`--storage` is added when this replica's differs)."""
    url = urllib.parse.urlsplit(rec.url)
    peer = urllib.parse.urlsplit(rec.etcd_peer_url)
    client = urllib.parse.urlsplit(rec.etcd_client_url)
    data_dir = shlex.quote(rec.data_dir)
    join = (
        f"moorage join --existing {existing} --data-dir {data_dir} "
        f"--http-addr {url.hostname}:{url.port} "
        f"--etcd-client-port {client.port} --etcd-peer-port {peer.port}"
    )
    if peer.hostname and peer.hostname != DEFAULT_ETCD_HOST:
        join += f" --etcd-host {peer.hostname}"
    if storage and rec.storage != storage:
        join += f" --storage {shlex.quote(rec.storage)}"
    return [f"moorage destroy --data-dir {data_dir}", join]


async def _ping(client: httpx.AsyncClient, url: str) -> tuple[int, str | None]:
    try:
        resp = await client.get(f"{url}/_ping", timeout=PING_TIMEOUT)
    except httpx.HTTPError as exc:
        return 0, str(exc) or type(exc).__name__
    try:
        doc = resp.json()
    except ValueError:
        return resp.status_code, "not a Moorage /_ping answer"
    if resp.status_code == 200 and doc.get("healthy") is True:
        return 200, None
    return resp.status_code, str(doc.get("error") or "unhealthy")


async def _status(url: str) -> MemberStatus | str:
    try:
        return await member_status(url, PING_TIMEOUT)
    except MoorageError as exc:
        return str(exc)


async def gather(store: EtcdCluster, cluster_id: str, epoch: int) -> Facts:
    members = await store.members(linearizable=False)
    replicas: dict[str, ReplicaRecord] = {}
    heartbeats: dict[str, HeartbeatRecord] = {}
    with contextlib.suppress(MoorageError):
        replicas = {rec.replica_id: rec for rec in await store.replicas(local=True)}
        heartbeats = {hb.replica_id: hb for hb in await store.heartbeats(local=True)}

    def client_url(m: Member) -> str | None:
        if m.client_urls:
            return m.client_urls[0]
        rec = replicas.get(m.name)
        return rec.etcd_client_url if rec else None

    async def status_of(m: Member) -> tuple[int, MemberStatus | str]:
        url = client_url(m)
        return m.id, (await _status(url) if url else "not started yet")

    async with httpx.AsyncClient() as client:
        statuses, pings = await asyncio.gather(
            asyncio.gather(*(status_of(m) for m in members)),
            asyncio.gather(*(_ping(client, r.url) for r in replicas.values())),
        )
    return Facts(
        cluster_id=cluster_id,
        epoch=epoch,
        members=members,
        statuses=dict(statuses),
        replicas=replicas,
        heartbeats=heartbeats,
        pings=dict(zip(replicas, pings, strict=True)),
    )
