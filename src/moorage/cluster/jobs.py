"""The replica's own background jobs, run in every API worker while it serves.

- the health loop, every `CHECK_INTERVAL` seconds: probes etcd and blob storage, checks
  the fence marker, finds this replica's etcd role and whether it is read-only (quorum
  lost), and renews its heartbeat in the store; it updates the `Replica`'s state, which
  the HTTP layer reads;
- the purge loop: abandoned uploads and staging files. A client that starts an upload and
  never finishes it leaves its bytes in `uploads/`; a crash mid-write can leave a staging
  file in `tmp/`. Every replica's workers purge what has not been touched for
  `MOORAGE_UPLOAD_MAX_AGE` seconds (default 7 days, as Distribution's upload purging),
  every `MOORAGE_UPLOAD_PURGE_INTERVAL` seconds (default 1 hour). Replicas and workers may
  race on the same file; a file another one removed first is skipped;
- the policy loop, every `MOORAGE_RETENTION_INTERVAL` seconds (default 1 hour): applies
  every retention rule (registry/retention.py) and counts the links of namespaces with a
  quota that are not counted yet (restored ones); one replica's worker at a time, under the
  lease-backed lock `policies`, renewed while the round runs however long it takes (a worker
  that dies mid-run lets its lease expire; each tag delete is its own guarded transaction, so
  nothing is left half-done).
- the journal trimming job (moorage.cluster.journal_trim), every
  `MOORAGE_JOURNAL_TRIM_INTERVAL` seconds (default 1 hour), under the lock `journal-trim`;
- the garbage collection schedule (`moorage.cluster.gc.schedule_loop`): when the cluster
  has one and a collection is due, the worker that takes the lock runs it.
- etcd's compaction and defragmentation (`moorage.cluster.etcd_defrag`), every
  `MOORAGE_ETCD_DEFRAG_INTERVAL` seconds (default 1 hour), under the lock `etcd-defrag`;
- the webhook dispatcher (`moorage.cluster.webhook_dispatch.dispatch_loop`): delivers the events
  queued in etcd, each claimed by one worker at a time.

`running` starts them for as long as its block lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from moorage.cluster import etcd_defrag, gc, journal_trim, webhook_dispatch
from moorage.cluster.bootstrap import bootstrap
from moorage.cluster.replica import ComponentHealth, Replica
from moorage.cluster.tls import client_tls
from moorage.errors import MoorageError
from moorage.meta import usage
from moorage.meta.cluster_store import ClusterStore
from moorage.meta.etcd_maintenance import MemberProbe
from moorage.registry.retention import Retention
from moorage.storage import presence
from moorage.storage.base import BlobStorage

log = logging.getLogger("moorage.health")
purge_log = logging.getLogger("moorage.housekeeping")
CHECK_INTERVAL = 2.0
#: While read-only (no leader), the next round comes sooner: writes are refused on the last
#: round's word, and an election ends in a second or two (a full run saw a push and its retry
#: refused right after the new leader of five was elected).
READ_ONLY_CHECK_INTERVAL = 0.5
CHECK_TIMEOUT = 3.0

#: Called after every round of the health loop (the HTTP layer's metrics gauges).
Observer = Callable[[Replica], None]


async def _check(component: ComponentHealth, probe: Awaitable[object]) -> None:
    try:
        await asyncio.wait_for(probe, CHECK_TIMEOUT)
    except Exception as exc:
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        if component.healthy or component.error != message:
            log.warning("health check failed: %s", message)
        component.healthy, component.error = False, message
    else:
        component.healthy, component.error = True, None
    component.checked_at = time.time()


async def check_once(replica: Replica) -> None:
    await asyncio.gather(
        _check(replica.etcd, replica.registry.meta.revision()),
        _check(replica.storage, replica.registry.storage.probe()),
    )


async def _role(replica: Replica, member: MemberProbe) -> str:
    try:
        status = await member.status(CHECK_TIMEOUT, client_tls(replica.config))
    except MoorageError:
        return "unknown"
    if status.is_learner:
        return "learner"
    if not status.leader:
        return "unknown"
    return "leader" if status.leader == status.member_id else "follower"


async def _local_member_answers(replica: Replica, member: MemberProbe) -> bool:
    try:
        await member.status(CHECK_TIMEOUT, client_tls(replica.config))
    except MoorageError:
        return False
    return True


async def health_loop(replica: Replica, observe: Observer | None = None) -> None:
    member = MemberProbe(replica.config.etcd_client_url)  # the local etcd member
    marked = 0.0
    try:
        while True:
            await _health_round(replica, member, observe)
            if replica.storage.healthy and time.monotonic() - marked >= presence.MARK_SECONDS:
                marked = time.monotonic()
                await _mark_storage(replica)
            await asyncio.sleep(READ_ONLY_CHECK_INTERVAL if replica.read_only else CHECK_INTERVAL)
    finally:
        if marked:  # (a directory: no suspension; S3: bounded by its probe timeout)
            storage, config = replica.registry.storage, replica.config
            with contextlib.suppress(MoorageError, TimeoutError):
                await presence.unmark(storage, config.cluster_id, config.replica_id)
        await member.close()


async def _mark_storage(replica: Replica) -> None:
    """Say that this cluster uses the blob storage (moorage.storage.presence)."""
    config = replica.config
    try:
        await asyncio.wait_for(
            presence.mark(replica.registry.storage, config.cluster_id, config.replica_id),
            CHECK_TIMEOUT,
        )
    except (MoorageError, TimeoutError) as exc:  # the probe reports the storage's health
        log.debug("could not mark the blob storage as used: %s", exc)


async def _health_round(replica: Replica, member: MemberProbe, observe: Observer | None) -> None:
    await check_once(replica)
    with contextlib.suppress(OSError):  # the storage check reports an unreadable storage
        replica.fence_refusal()
    replica.role = await _role(replica, member) if replica.cluster is not None else "leader"
    # Quorum lost: the local member answers but nobody leads. Pulls go on from its copy.
    replica.read_only = (
        replica.cluster is not None
        and not replica.etcd.healthy
        and replica.role == "unknown"
        and await _local_member_answers(replica, member)
    )
    if observe is not None:
        observe(replica)
    if replica.heartbeat is not None:
        problem = replica.problem()
        try:
            await asyncio.wait_for(replica.heartbeat.beat(problem is None, problem), CHECK_TIMEOUT)
        except (MoorageError, TimeoutError) as exc:
            log.debug("heartbeat not written: %s", exc)


DEFAULT_UPLOAD_MAX_AGE = 7 * 24 * 3600.0
DEFAULT_PURGE_INTERVAL = 3600.0
TMP_MAX_AGE = 24 * 3600.0


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        purge_log.warning("%s=%r is not a number of seconds; using %g", name, raw, default)
        return default
    return value if value > 0 else default


async def purge_loop(storage: BlobStorage) -> None:
    max_age = _seconds("MOORAGE_UPLOAD_MAX_AGE", DEFAULT_UPLOAD_MAX_AGE)
    interval = _seconds("MOORAGE_UPLOAD_PURGE_INTERVAL", DEFAULT_PURGE_INTERVAL)
    # Spread the workers and replicas out instead of all scanning at once.
    await asyncio.sleep(random.uniform(0, min(interval, 60.0)))
    while True:
        try:
            removed = await storage.purge_stale(max_age, min(max_age, TMP_MAX_AGE))
        except MoorageError as exc:
            purge_log.warning("upload purge failed: %s", exc)
        else:
            if removed:
                purge_log.info("purged %d abandoned upload or staging file(s)", removed)
        await asyncio.sleep(interval)


DEFAULT_RETENTION_INTERVAL = 3600.0
POLICY_LOCK = "policies"
#: Seconds the policy lock outlives its holder's last renewal (renewed every TTL / 4 while
#: the round runs, however long: as the garbage collection's lock, cluster/gc.py).
POLICY_LOCK_TTL = 600


async def keep_lease(store: ClusterStore, lease: int, what: str, ttl: float) -> None:
    """Renew `lease` every `ttl` / 4 seconds until cancelled, or until it has ended."""
    while True:
        await asyncio.sleep(ttl / 4)
        try:
            if not await store.keep_alive(lease):
                purge_log.error("%s lost its lock (its lease ended)", what)
                return
        except MoorageError as exc:
            purge_log.warning("%s could not renew its lock: %s", what, exc)


async def policy_round(replica: Replica) -> str:
    """One round of the policy job, if this worker wins the lock: what it did, in words."""
    if replica.cluster is None:
        return "no cluster store: skipped"
    store = replica.cluster
    owner = f"{replica.config.replica_id}/{os.getpid()}"
    held = await store.hold_lock(POLICY_LOCK, owner, POLICY_LOCK_TTL, time.time())
    if not isinstance(held, tuple):
        return f"skipped: {held.owner} holds the policy lock"
    lease = held[0]
    keeper = asyncio.create_task(keep_lease(store, lease, "the policy job", POLICY_LOCK_TTL))
    try:
        meta = replica.registry.meta
        counted = 0
        for record in await replica.registry.manifests.policies.every():
            if record.quota is not None and "/" not in record.target:
                counted += await usage.recount(meta, record.target)
        retention = Retention(replica.registry.manifests, replica.audit)
        deleted, skipped = await retention.apply(actor="moorage")
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
        with contextlib.suppress(MoorageError):
            await store.revoke_lease(lease)  # its lock goes with it
    return (
        f"retention deleted {deleted.count} tag(s), kept {skipped.count} changed since the plan; "
        f"counted {counted} blob link(s)"
    )


async def policy_loop(replica: Replica) -> None:
    interval = _seconds("MOORAGE_RETENTION_INTERVAL", DEFAULT_RETENTION_INTERVAL)
    while True:
        await asyncio.sleep(random.uniform(interval / 2, interval))
        try:
            purge_log.info("policy job: %s", await policy_round(replica))
        except MoorageError as exc:
            purge_log.warning("policy job failed: %s", exc)


@contextlib.asynccontextmanager
async def running(
    replica: Replica,
    admin_password: str | None = None,
    observe: Observer | None = None,
    on_gc: gc.OnResult | None = None,
    on_trim: journal_trim.OnTrim | None = None,
) -> AsyncIterator[None]:
    """The replica's jobs, for as long as the block lasts: first the cluster record and the
    admin account if missing (a learner or a store without quorum is only logged: the
    health state reports it) and one health check, then the health and purge loops.

    The first two run at once: neither needs the other, and with a store that does not
    answer yet (a replica started before enough of its peers) each waits out its timeout."""

    async def first_start() -> None:
        try:
            await bootstrap(replica.registry.meta, replica.config.cluster_id, admin_password)
        except MoorageError as exc:
            log.warning("store not ready at start: %s", exc)

    # The fence marker's first read too (on S3): until it succeeds, writes are refused.
    await asyncio.gather(first_start(), check_once(replica), replica.fence_watch.read_once())
    tasks = [
        asyncio.create_task(replica.fence_watch.run()),  # on S3: keeps the marker's read fresh
        asyncio.create_task(health_loop(replica, observe)),
        asyncio.create_task(purge_loop(replica.registry.storage)),
        asyncio.create_task(policy_loop(replica)),
    ]
    if replica.cluster is not None:  # the garbage collection schedule (cluster.gc)
        loop = gc.schedule_loop(
            replica.cluster, replica.registry, replica.config.replica_id, replica.audit, on_gc
        )
        tasks.append(asyncio.create_task(loop))
        tasks.append(asyncio.create_task(journal_trim.trim_loop(replica, on_trim)))
        tasks.append(asyncio.create_task(etcd_defrag.defrag_loop(replica)))
    if replica.webhooks is not None:  # deliver queued events (cluster.webhook_dispatch)
        owner = f"{replica.config.replica_id}/{os.getpid()}"
        tasks.append(asyncio.create_task(webhook_dispatch.dispatch_loop(replica.webhooks, owner)))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
