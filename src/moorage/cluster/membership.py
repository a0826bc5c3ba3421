"""Join and remove, on the side of the existing cluster (called through its admin API).

A join is three calls from the joining replica: `begin_join` (checks, the join lock, the
new etcd member added as a learner), `promote` once the new member has started and caught
up, and `end_join` (releases the lock). etcd's transient refusals are retried inside.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from moorage.cluster.status import diagnose, gather
from moorage.config import ReplicaConfig
from moorage.errors import MoorageError, StoreUnavailable
from moorage.meta.cluster_store import JOIN_LOCK
from moorage.meta.etcd import EtcdCluster, Member

JOIN_LOCK_TTL = 600


class Refused(MoorageError):
    """The cluster refuses an unsafe membership change; the message says what to do."""


class Busy(MoorageError):
    """Another membership change holds the lock; retry shortly."""


async def _epoch(store: EtcdCluster) -> int:
    cluster = await store.get_cluster()
    return cluster.epoch if cluster else 1


async def cluster_status(store: EtcdCluster, config: ReplicaConfig) -> dict[str, Any]:
    cluster = await store.get_cluster()
    facts = await gather(
        store, config.cluster_id, cluster.epoch if cluster else 1, cluster.size if cluster else 0
    )
    return diagnose(facts)


# A replica whose last health check met a leader election reports it for a few seconds:
# asked again before the join is refused for it.
_ELECTION_WORDS = ("leader changed", "no leader", "election")
ELECTION_PATIENCE = 15.0


async def _unhealthy_after_election(
    store: EtcdCluster, config: ReplicaConfig
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + ELECTION_PATIENCE
    while True:
        doc = await cluster_status(store, config)
        _refuse_without_quorum(doc)
        bad: list[dict[str, Any]] = [r for r in doc["replicas"] if not r["healthy"]]
        in_election = all(
            any(w in str(r.get("error") or "").lower() for w in _ELECTION_WORDS) for r in bad
        )
        if not bad or not in_election or time.monotonic() > deadline:
            return bad
        await asyncio.sleep(1.0)


def _electing(doc: dict[str, Any], leaving: Sequence[str]) -> bool:
    """Whether some replica that stays is unhealthy, and every such one only because its
    health check met a leader election."""
    bad = [r for r in doc["replicas"] if not r["healthy"] and r["id"] not in leaving]
    return bool(bad) and all(
        any(w in str(r.get("error") or "").lower() for w in _ELECTION_WORDS) for r in bad
    )


async def begin_join(
    store: EtcdCluster,
    config: ReplicaConfig,
    replica_id: str,
    peer_url: str,
    unsafe: bool,
) -> dict[str, Any]:
    members = await store.members()
    existing = next((m for m in members if peer_url in m.peer_urls), None)
    if existing is not None and existing.name and existing.name != replica_id:
        raise Refused(
            f"etcd peer URL {peer_url} already belongs to replica {existing.name}; "
            "choose another --etcd-peer-port (or remove that replica first)"
        )
    # The lock first: a join in progress (its learner not started yet) must make another
    # join wait and retry, not look like an unhealthy replica that refuses it.
    try:
        await _acquire_join_lock(store, replica_id)
    except StoreUnavailable:
        _refuse_without_quorum(await cluster_status(store, config))
        raise
    try:
        if not unsafe and existing is None:
            bad = await _unhealthy_after_election(store, config)
            if bad:
                ids = ",".join(r["id"] for r in bad)
                raise Refused(
                    f"replicas {ids} are unhealthy; remove them before joining a new one "
                    f"(moorage remove --existing {config.url} --replica-id {ids}), "
                    "or pass --unsafe-join. Details: "
                    + "; ".join(f"{r['id']}: {r['error']}" for r in bad)
                )
        member = existing or await _add_learner(store, peer_url)
        members = await store.members()
    except BaseException:
        await end_join(store, replica_id)
        raise
    initial = [
        f"{replica_id if m.id == member.id else m.name}={m.peer_urls[0]}"
        for m in members
        if m.peer_urls and (m.name or m.id == member.id)
    ]
    return {
        "cluster_id": config.cluster_id,
        "member_id": member.hex_id,
        "initial_cluster": ",".join(initial),
        "etcd_endpoints": [u for m in members if not m.is_learner for u in m.client_urls],
        "storage": config.storage,
        "epoch": await _epoch(store),
    }


# etcd refuses a member change until every voter has been connected for 5 s (its health
# interval): right after the previous join, the next one waits. It is asked again every
# quarter second, instead of etcd.py's backoff (up to 2 s), which overshoots that moment.
ADD_RETRY_INTERVAL = 0.25
ADD_PATIENCE = 60.0


async def _add_learner(store: EtcdCluster, peer_url: str) -> Member:
    deadline = time.monotonic() + ADD_PATIENCE
    while True:
        try:
            return await store.add_member(peer_url, learner=True, patience=0)
        except StoreUnavailable as exc:
            if "unhealthy cluster" not in str(exc).lower():
                break  # any other refusal: etcd.py's own retries, with its backoff
            if time.monotonic() + ADD_RETRY_INTERVAL > deadline:
                raise
        await asyncio.sleep(ADD_RETRY_INTERVAL)
    return await store.add_member(peer_url, learner=True, patience=deadline - time.monotonic())


def _refuse_without_quorum(doc: dict[str, Any]) -> None:
    if doc["scenario"] == "quorum-lost":
        raise Refused(
            "the cluster has lost quorum: a new member cannot join. If the replicas that are "
            "down can run again, start them ('moorage start --data-dir D' on each; 'moorage "
            "status --existing URL' shows which) and join after; only if they are lost for "
            "good: " + doc["action"]
        )


async def _acquire_join_lock(store: EtcdCluster, owner: str) -> None:
    holder = await store.acquire_lock(JOIN_LOCK, owner, JOIN_LOCK_TTL, time.time())
    if holder is None:  # taken now, or our own lock from a retried call
        return
    raise Busy(f"another join is in progress ({holder.describe()}); retrying")


async def promote(store: EtcdCluster, member_id: int) -> None:
    await store.promote_member(member_id)


async def end_join(store: EtcdCluster, replica_id: str) -> None:
    await store.release_lock(JOIN_LOCK, owner=replica_id)


async def remove(
    store: EtcdCluster,
    config: ReplicaConfig,
    replica_ids: list[str],
    force: bool,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Remove replicas (their etcd member and records). With `dry_run`, only the plan: the
    same checks, what goes, whether each answers now, and the membership left after."""
    doc = await cluster_status(store, config)
    deadline = time.monotonic() + ELECTION_PATIENCE
    while not force and _electing(doc, replica_ids) and time.monotonic() < deadline:
        # A replica whose health check met the election that the loss of the replicas
        # being removed caused is asked again, as for a join.
        await asyncio.sleep(1.0)
        doc = await cluster_status(store, config)
    members = await store.members()
    by_id: dict[str, Member] = {}
    for m in members:
        by_id[m.name or m.hex_id] = m
        by_id[m.hex_id] = m
    rows = {r["id"]: r for r in doc["replicas"]}
    unknown = [rid for rid in replica_ids if rid not in by_id and rid not in rows]
    if unknown:
        raise Refused(
            f"no replica {', '.join(unknown)} in this cluster; 'moorage status' lists them"
        )
    targets = {rid: by_id.get(rid) for rid in replica_ids}
    voters = [m for m in members if not m.is_learner]
    removed_voters = {m.id for m in targets.values() if m is not None and not m.is_learner}
    remaining = [m for m in voters if m.id not in removed_voters]
    needed = len(remaining) // 2 + 1
    healthy_remaining = [
        m for m in remaining if rows.get(m.name or m.hex_id, {}).get("healthy", False)
    ]
    if not remaining:
        raise Refused("cannot remove every voting member; use 'moorage destroy' instead")
    if len(healthy_remaining) < needed and not force:
        raise Refused(
            f"removing {', '.join(replica_ids)} would leave {len(healthy_remaining)} healthy "
            f"voting members of {len(remaining)}, fewer than the {needed} a quorum needs; "
            "fix or join replicas first, or pass --force"
        )
    if dry_run:
        return {
            "removes": [
                {
                    "replica_id": rid,
                    "url": rows.get(rid, {}).get("url"),
                    "answers": bool(rows.get(rid, {}).get("reachable")),
                    "healthy": bool(rows.get(rid, {}).get("healthy")),
                    "voter": m is not None and not m.is_learner,
                    "error": rows.get(rid, {}).get("error"),
                }
                for rid, m in targets.items()
            ],
            "members": len(remaining),
            "needed": needed,
            "healthy_after": len(healthy_remaining),
            "survives_failures_after": max(0, len(healthy_remaining) - needed),
            "remaining": [m.name or m.hex_id for m in remaining],
        }
    done = []
    for rid, member in targets.items():
        if member is not None:
            await store.remove_member(member.id)
            await asyncio.sleep(0)  # let etcd settle; remove_member retries refusals
        name = member.name if member is not None and member.name else rid
        await store.forget_replica(name)
        done.append(name)
    return {"removed": done, "members": len(remaining), "needed": needed}
