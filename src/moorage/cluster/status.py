"""Which scenario the cluster is in, and the next command to run.

`gather` collects facts from the store and from every replica (each etcd member's own
status, each replica's `/_ping`, heartbeats); `diagnose` is a pure function of those facts,
so every scenario is unit-testable. Reads use etcd's serializable mode (the local member's
copy), so status keeps working when quorum is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import shutil
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from moorage.cluster.status_report import replica_row, status_document
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


def fault_tolerance(voters: int) -> int:
    """Failures a cluster of `voters` voting members survives: (members - 1) // 2."""
    return max(0, (voters - 1) // 2)


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
    if not steps:
        return None
    top = _leader_index(facts, leader)
    if top is not None and top > st.raft_index:
        steps.insert(0, f"raft index {st.raft_index}, {top - st.raft_index} behind the leader's")
    if ping[0] != 200 or ping[1]:
        steps.append(f"API not yet healthy: {ping[1] or f'HTTP {ping[0]}'}")
    return "; ".join(steps)


# ---------------------------------------------------------------------------------------
# The commands status prints (conventions: one command per entry, in order, with the
# replica on whose host it runs and an explanation; placeholders are UPPER_CASE words).

PASSWORD_NOTE = "these commands read the admin password from MOORAGE_PASSWORD"
JOIN_PLACEHOLDERS = (
    "--data-dir NEW_DIR --http-addr HOST:PORT --etcd-client-port CLIENT_PORT "
    "--etcd-peer-port PEER_PORT"
)


PLACEHOLDERS = {
    "NEW_DIR": "an empty directory for the new replica's state",
    "HOST:PORT": "the new replica's listen address",
    "CLIENT_PORT": "a free port for its etcd client",
    "PEER_PORT": "a free port for its etcd peer traffic",
    "ITS_DIR": "the replica's data directory on its host",
    "BACKUP_FILE": "the newest backup file",
    "BLOB_STORAGE": "the old cluster's blob storage directory",
    "URL": "the URL of a healthy replica",
}


def placeholders(commands: list[dict[str, Any]]) -> dict[str, str]:
    """The placeholders the commands use, with what to put in their place."""
    words = {w for c in commands for w in re.split(r"[\s,=]+", c["command"])}
    return {k: v for k, v in PLACEHOLDERS.items() if k in words}


def command(text: str, host: str | None = None, note: str | None = None) -> dict[str, Any]:
    return {"host": host, "command": text, "note": note}


def _commands(scenario: str, rows: list[dict[str, Any]], facts: Facts) -> list[dict[str, Any]]:
    good = [r for r in rows if r["healthy"] and r["url"]]
    starting = [r for r in rows if r["state"] == "starting"]
    bad = [r for r in rows if r["state"] == "unhealthy"]
    existing = ",".join(r["url"] for r in good) or "URL"
    all_urls = ",".join(r["url"] for r in rows if r["url"]) or "URL"
    if scenario == "healthy":
        voters = sum(1 for m in facts.members if not m.is_learner)
        if fault_tolerance(voters) == 0:
            # Healthy, but one more failure loses quorum: not "nothing to do".
            missing = 3 - voters
            return [
                command(
                    f"moorage join --existing {existing} {JOIN_PLACEHOLDERS}",
                    note=f"no fault tolerance: {voters} of {voters} voting member(s) healthy, "
                    "the cluster survives 0 failures; add "
                    + ("a replica" if missing == 1 else f"{missing} replicas, one at a time")
                    + " to survive 1 (on a new host, or with free ports on this one)",
                )
            ]
        return []
    if starting or scenario == "starting":
        names = ", ".join(f"{r['id']} ({r['progress']})" for r in starting) or "the replicas"
        return [
            command(
                f"moorage status --existing {all_urls}",
                note=f"wait: replica {names} is starting; run status again (if a replica "
                "stays starting for minutes, read its log: DATA_DIR/log/moorage.log)",
            )
        ]
    if scenario == "replicas-unhealthy":
        ids = ",".join(r["id"] for r in bad)
        cmds = [
            command(
                f"moorage remove --existing {existing} --replica-id {ids}",
                note=f"replica(s) {ids} do not answer or are broken: take them out of the "
                "cluster (no data is lost: the healthy replicas hold it all)",
            )
        ]
        first = good[0]["url"] if good else "URL"
        for i, r in enumerate(bad):
            cmds.append(
                command(
                    f"moorage join --existing {first} {JOIN_PLACEHOLDERS}",
                    note=(
                        f"then add a replacement for {r['id']}, on a new host or with a new "
                        "directory and free ports (or rebuild it in place: moorage repair "
                        "--existing URL --data-dir ITS_DIR)"
                    )
                    if i == 0
                    else f"and a replacement for {r['id']}",
                )
            )
        return cmds
    steps = _repair_procedure(rows, facts)
    if not steps:
        return [
            command(
                "moorage start --data-dir ITS_DIR",
                note="no etcd member answers: start the replicas (on each host, ITS_DIR its "
                "data directory; several at once: --data-dir A,B,C); if none can start, run "
                "moorage emergency-repair --data-dir ITS_DIR on a survivor",
            )
        ]
    cmds = [
        command(
            steps[0]["command"],
            host=steps[0]["replica_id"],
            note=f"quorum is lost: emergency repair on replica {steps[0]['replica_id']}, the "
            "most up-to-date survivor (on its host)",
        )
    ]
    seen: set[str] = set()
    for step in steps[1:]:
        rid = step["replica_id"]
        note = None
        if rid not in seen:
            seen.add(rid)
            note = f"then replica {rid} becomes a replica of the repaired cluster again"
        cmds.append(command(step["command"], host=rid, note=note))
    return cmds


def action_text(commands: list[dict[str, Any]]) -> str:
    """The commands as one line (the `action` of DESIGN.md §3)."""
    if not commands:
        return "nothing to do: all replicas are healthy"
    parts: list[str] = []
    prev_host: str | None = None
    for c in commands:
        if c["host"] and c["host"] != prev_host and parts:
            parts.append(f"; then on the host of replica {c['host']}: {c['command']}")
        elif parts:
            parts.append(f" && {c['command']}" if c["host"] else f"; {c['command']}")
        else:
            parts.append(c["command"])
            if c["host"]:
                parts.append(
                    f"  # on the host of replica {c['host']}, the most up-to-date survivor"
                )
            elif c["note"]:
                parts.append(f"  # {c['note']}")
        prev_host = c["host"] or prev_host
    return "".join(parts)


def next_block(doc: dict[str, Any]) -> list[str]:
    """The `next:` part of status as a pasteable shell block: one command per line, every
    explanation a comment line of its own."""
    lines = ["next:"]
    commands = doc.get("commands") or []
    if not commands:
        lines.append(f"# {doc['action']}")
        return lines
    if any("--existing" in c["command"] for c in commands):
        lines.append(f"# {PASSWORD_NOTE} (and the user from MOORAGE_USERNAME, default admin)")
    holders = placeholders(commands)
    if holders:
        lines.append("# replace " + "; ".join(f"{k} with {v}" for k, v in holders.items()))
    prev_host: str | None = None
    for c in commands:
        if c["note"]:
            lines.append(f"# {c['note']}")
        if c["host"] and c["host"] != prev_host:
            lines.append(f"# on the host of replica {c['host']}:")
        prev_host = c["host"]
        lines.append(c["command"])
    return lines


def program() -> str:
    """How printed commands name the CLI: `moorage` when that resolves on PATH to the CLI
    running now, otherwise the running CLI's absolute path."""
    running = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if running is None or running.name != "moorage" or not os.access(running, os.X_OK):
        # `python -m moorage`: the console script next to this interpreter.
        running = Path(sys.executable).parent / "moorage"
    running = running.absolute()
    found = shutil.which("moorage")
    try:
        if found and os.path.samefile(found, running):
            return "moorage"
    except OSError:
        pass
    if running.exists():
        return shlex.quote(str(running))
    return f"{shlex.quote(sys.executable)} -m moorage"


_PROGRAM = re.compile(r"(?<![\w/.-])moorage (?=[a-z])")


def localize(doc: dict[str, Any], prog: str) -> dict[str, Any]:
    """The document with every printed command starting with `prog` (see `program`)."""
    if prog == "moorage":
        return doc

    def fix(text: str) -> str:
        return _PROGRAM.sub(lambda _: prog + " ", text)

    for c in doc.get("commands") or []:
        c["command"] = fix(c["command"])
        if c["note"]:
            c["note"] = fix(c["note"])
    for step in doc.get("procedure") or []:
        step["command"] = fix(step["command"])
    if isinstance(doc.get("action"), str):
        doc["action"] = fix(doc["action"])
    return doc


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
