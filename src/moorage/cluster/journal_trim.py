"""The journal trimming job: which entries no recovery can need (the floor), and one round of
trimming under a lock (moorage.storage.journal_trim deletes; the reasoning is there).

The floor of cluster C in epoch E is the lower of
- (E, the lowest newest-registry-data revision of every etcd member): emergency repair
  replays past the survivor's revision, and every member, hence every future survivor,
  already holds what is below it (learners included; a member that does not answer, or has
  no client URL yet, stops the round: its revision is unknown);
- (epoch, revision) of the newest backup written whole (`moorage backup` records it): restore
  replays past the backup's revision. With no backup recorded nothing is trimmed. A restore
  of an older backup than the newest loses the changes between the two, and says so (the
  floor is recorded in blob storage first: moorage.storage.journal_trim.trimmed_to).

A trim racing an emergency repair removes nothing the repair replays: the repair replays past
its survivor's revision, which is at least what that member had when the floor was read.
Rounds run every `MOORAGE_JOURNAL_TRIM_INTERVAL` seconds (1 hour) on one worker of one
replica at a time (lock `journal-trim`); concurrent rounds would be safe too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable

from moorage.cluster.replica import Replica
from moorage.cluster.tls import client_tls
from moorage.errors import MoorageError
from moorage.meta.etcd import EtcdCluster, data_revision
from moorage.meta.etcd_members import ClientTls
from moorage.meta.keys import JOURNAL_TRIM_LOCK
from moorage.storage.journal_trim import Floor, TrimResult, trim

log = logging.getLogger("moorage.housekeeping")
#: Called with every finished round (the HTTP layer's metrics).
OnTrim = Callable[[TrimResult], None]
DEFAULT_INTERVAL = 3600.0
# Short: a worker killed mid-round (its replica lost in a quorum loss) holds the lock until
# its lease ends, and a repair's new leader restarts every lease's time. A round that takes
# longer may run beside another one, which is safe.
LOCK_TTL = 60


async def floor(store: EtcdCluster, cluster_id: str, tls: ClientTls) -> Floor | str:
    """The floor of this cluster's journal now, or why there is none."""
    backup = await store.last_backup()
    if backup is None:
        return "no backup recorded yet: the journal is kept whole"
    cluster = await store.get_cluster()
    if cluster is None:
        return "no cluster record"
    members = await store.members()
    revisions: list[int] = []
    for m in members:
        if not m.client_urls:
            return f"etcd member {m.name or m.hex_id} has not started: its revision is unknown"
        try:
            revisions.append(await data_revision(m.client_urls[0], tls=tls))
        except MoorageError as exc:
            return f"etcd member {m.name or m.hex_id} did not answer: {exc}"
    if not revisions:
        return "no etcd member listed"
    top = min(backup, (cluster.epoch, min(revisions)))
    return Floor(cluster_id, top[0], top[1])


async def trim_round(replica: Replica, on_trim: OnTrim | None = None) -> str:
    """One round, if this worker wins the lock: what it did, in words."""
    cluster = replica.cluster
    if cluster is None:
        return "no cluster store: skipped"
    config = replica.config
    owner = f"{config.replica_id}/{os.getpid()}"
    holder = await cluster.acquire_lock(JOURNAL_TRIM_LOCK, owner, LOCK_TTL, time.time())
    if holder is not None:
        return f"skipped: {holder.owner} holds the journal-trim lock"
    try:
        found = await floor(cluster, config.cluster_id, client_tls(config))
        if isinstance(found, str):
            return found
        result = await trim(config.storage, found)
        if on_trim is not None:
            on_trim(result)
        await cluster.put_journal_trim(
            {
                "at": time.time(),
                "floor_epoch": found.epoch,
                "floor_revision": found.revision,
                "deleted": result.deleted,
                "kept": result.kept + result.skipped_recent,
                "errors": result.errors[:5],
            }
        )
    finally:
        await cluster.release_lock(JOURNAL_TRIM_LOCK, owner)
    return f"at or below epoch {found.epoch} revision {found.revision}: {result.sentence()}"


def interval() -> float:
    raw = os.environ.get("MOORAGE_JOURNAL_TRIM_INTERVAL", "")
    with contextlib.suppress(ValueError):
        if float(raw) > 0:
            return float(raw)
    return DEFAULT_INTERVAL


async def trim_loop(replica: Replica, on_trim: OnTrim | None = None) -> None:
    every = interval()
    while True:
        await asyncio.sleep(random.uniform(every / 2, every))
        try:
            log.info("journal trim: %s", await trim_round(replica, on_trim))
        except MoorageError as exc:
            log.warning("journal trim failed: %s", exc)
