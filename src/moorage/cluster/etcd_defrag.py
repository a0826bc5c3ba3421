"""etcd's compaction and defragmentation: each member's database file stays near the size of
what it holds.

etcd compacts on its own (key versions older than `COMPACTION_RETENTION` revisions, every
5 minutes): their pages become free space inside the file, which etcd reuses but never gives
back. Defragmenting a member rewrites its file without them; the member answers nothing
while it runs (seconds per hundred MiB). So one round:

- compacts to the point etcd's own compaction would (nothing when etcd already did);
- reads every member's status (file size, bytes in use) and stops when one does not answer
  or is a learner: with a member missing, defragmenting another could leave no quorum;
- defragments, one after another, the members whose free space is at least
  `MOORAGE_ETCD_DEFRAG_MIN_FREE` bytes (128 MiB) and `MOORAGE_ETCD_DEFRAG_MIN_RATIO` of the
  file (0.25): followers first, the leader last (writes wait while it runs), every member's
  status read again before the next one.

Rounds run every `MOORAGE_ETCD_DEFRAG_INTERVAL` seconds (1 hour) on one worker of one replica
at a time (lock `etcd-defrag`, held for the whole round so no two members are ever
defragmented at once). `MOORAGE_ETCD_COMPACT_RETENTION` lowers the retention (tests).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from dataclasses import dataclass

from moorage.cluster.etcd_process import COMPACTION_RETENTION
from moorage.cluster.replica import Replica
from moorage.cluster.tls import client_tls
from moorage.errors import MoorageError
from moorage.meta.etcd import ClientTls, EtcdCluster, MemberStatus
from moorage.meta.etcd_maintenance import compact, defragment, member_status
from moorage.meta.keys import ETCD_DEFRAG_LOCK

log = logging.getLogger("moorage.housekeeping")
DEFAULT_INTERVAL = 3600.0
DEFAULT_MIN_FREE = 128 * 1024 * 1024
DEFAULT_MIN_RATIO = 0.25
# A round holds the lock until it ends; a worker killed mid-round blocks the next ones for
# this long at most (a round of several large members must fit in it).
LOCK_TTL = 3600
DEFRAG_TIMEOUT = 600.0  # one member's defragmentation
STATUS_TIMEOUT = 5.0
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Settings:
    retention: int = COMPACTION_RETENTION
    min_free: int = DEFAULT_MIN_FREE
    min_ratio: float = DEFAULT_MIN_RATIO

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            int(_number("MOORAGE_ETCD_COMPACT_RETENTION", COMPACTION_RETENTION)),
            int(_number("MOORAGE_ETCD_DEFRAG_MIN_FREE", DEFAULT_MIN_FREE)),
            _number("MOORAGE_ETCD_DEFRAG_MIN_RATIO", DEFAULT_MIN_RATIO),
        )


@dataclass(frozen=True, slots=True)
class Seen:
    """One member as the round found it: its status, or why it has none."""

    name: str
    url: str
    status: MemberStatus | None
    error: str = ""


def free_bytes(status: MemberStatus) -> int:
    return max(0, status.db_size - status.db_size_in_use)


def due(status: MemberStatus, settings: Settings) -> bool:
    free = free_bytes(status)
    return free > 0 and free >= settings.min_free and free >= settings.min_ratio * status.db_size


def plan(seen: list[Seen], settings: Settings) -> list[Seen] | str:
    """The members to defragment, in order, or why none is (a sentence)."""
    if not seen:
        return "no etcd member listed"
    for m in seen:
        if m.status is None:
            return (
                f"skipped: etcd member {m.name} did not answer ({m.error}); defragmenting "
                "another could leave the cluster without quorum"
            )
        if m.status.is_learner:
            return f"skipped: etcd member {m.name} is a learner still catching up"
    chosen = [m for m in seen if m.status is not None and due(m.status, settings)]
    if not chosen:
        return "nothing to defragment: " + ", ".join(_sizes(m) for m in seen)
    return sorted(chosen, key=lambda m: m.status is not None and _leads(m.status))


async def survey(cluster: EtcdCluster, tls: ClientTls) -> list[Seen]:
    async def one(name: str, urls: tuple[str, ...]) -> Seen:
        if not urls:
            return Seen(name, "", None, "not started yet")
        try:
            return Seen(name, urls[0], await member_status(urls[0], STATUS_TIMEOUT, tls=tls))
        except MoorageError as exc:
            return Seen(name, urls[0], None, str(exc))

    members = await cluster.members()
    return list(await asyncio.gather(*(one(m.name or m.hex_id, m.client_urls) for m in members)))


async def run_round(cluster: EtcdCluster, tls: ClientTls, settings: Settings) -> str:
    """Compact, then defragment the members that need it, one at a time: what it did, in
    words. The caller holds the lock."""
    words: list[str] = []
    floor = await cluster.revision() - settings.retention
    if floor > 0 and await compact(cluster, floor):
        words.append(f"compacted below revision {floor}")
    chosen = plan(await survey(cluster, tls), settings)
    if isinstance(chosen, str):
        return "; ".join([*words, chosen])
    for i, member in enumerate(chosen):
        if i:  # the one before is back, and no other went away meanwhile
            now = plan(await survey(cluster, tls), Settings(settings.retention, 0, 0.0))
            if isinstance(now, str):
                words.append(f"stopped before {member.name}: {now}")
                break
        assert member.status is not None
        started = time.monotonic()
        await defragment(member.url, DEFRAG_TIMEOUT, tls=tls)
        took = time.monotonic() - started
        after = await member_status(member.url, STATUS_TIMEOUT, tls=tls)
        line = (
            f"defragmented etcd member {member.name}: {member.status.db_size / MIB:.1f} MiB -> "
            f"{after.db_size / MIB:.1f} MiB in {took:.1f} s"
        )
        log.info("etcd: %s", line)
        words.append(line)
    return "; ".join(words)


async def defrag_round(replica: Replica) -> str:
    """One round, if this worker wins the lock: what it did, in words."""
    cluster = replica.cluster
    if cluster is None:
        return "no cluster store: skipped"
    owner = f"{replica.config.replica_id}/{os.getpid()}"
    holder = await cluster.acquire_lock(ETCD_DEFRAG_LOCK, owner, LOCK_TTL, time.time())
    if holder is not None:
        return f"skipped: {holder.owner} holds the etcd-defrag lock"
    try:
        return await run_round(cluster, client_tls(replica.config), Settings.from_env())
    finally:
        await cluster.release_lock(ETCD_DEFRAG_LOCK, owner)


async def defrag_loop(replica: Replica) -> None:
    every = _number("MOORAGE_ETCD_DEFRAG_INTERVAL", DEFAULT_INTERVAL) or DEFAULT_INTERVAL
    while True:
        await asyncio.sleep(random.uniform(every / 2, every))
        try:
            log.info("etcd compaction and defragmentation: %s", await defrag_round(replica))
        except MoorageError as exc:
            log.warning("etcd compaction and defragmentation failed: %s", exc)


def _leads(status: MemberStatus) -> bool:
    return status.leader == status.member_id


def _sizes(m: Seen) -> str:
    assert m.status is not None
    return f"{m.name} {m.status.db_size / MIB:.1f} MiB, {free_bytes(m.status) / MIB:.1f} MiB free"


def _number(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        log.warning("%s=%r is not a number; using %g", name, raw, default)
        return default
    return value if value >= 0 else default
