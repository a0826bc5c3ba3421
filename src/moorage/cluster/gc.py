"""Garbage collection as a cluster operation: one run at a time, its progress, its result.

- A dry run (`dry_run`) writes nothing, so it takes no lock: it answers its report even
  while a collection runs.
- `start` takes the cluster-wide lock `locks/gc` on a lease (a second caller, on any
  replica, gets GcBusy naming the holder); `GcRun.execute` runs the protocol of
  `moorage.registry.gc` while a task renews the lease, then releases it. The lock's guard
  is part of every delete the run makes: a run whose lease ended (its replica stalled, or
  died: etcd ends the lease `LOCK_TTL` seconds later) changes nothing more, and the next
  run finishes or undoes whatever tombstones it left.
- Progress (`/moorage-gc/progress`, at most once a second) and the last result
  (`/moorage-gc/last`) are in the store, so any replica answers `GET /api/v0/gc`.
- The result goes to the audit log (action `gc`) and to the `on_result` callback (the
  HTTP layer's metrics).
- The schedule (`/moorage-gc/schedule`): every replica's workers look once a minute; when
  the last run finished longer ago than the interval, the one that takes the lock runs.
- A run that died (its replica killed mid-run) leaves tombstones, which keep pushes of
  those blobs out until a run finishes or clears them: the same once-a-minute look starts
  one (with the schedule's grace, else 24 h) as soon as no run holds the lock and a
  tombstone stands, at most once every RECOVER_EVERY seconds per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from moorage.audit import FAILED, OK, AuditEvent, AuditSink
from moorage.cluster.membership import Busy
from moorage.errors import MoorageError, RecordCorrupt
from moorage.meta import keys
from moorage.meta.base import Guard
from moorage.meta.cluster_store import ClusterStore
from moorage.meta.gc_store import GcStore
from moorage.registry import Registry
from moorage.registry.gc import Collector, GcAborted, GcOptions, GcResult, corrupt_message
from moorage.storage import presence

log = logging.getLogger("moorage.gc")

#: Seconds the lock outlives its holder's last renewal (renewed every LOCK_TTL / 4).
LOCK_TTL = 20
_PROGRESS_EVERY = 1.0
#: How often each worker looks at the schedule (MOORAGE_GC_SCHEDULE_CHECK seconds).
SCHEDULE_CHECK = 60.0
#: The shortest schedule interval accepted.
MIN_INTERVAL = 60.0
#: A worker tries to finish a dead run's tombstones at most this often (a run that keeps
#: failing, say on a corrupt record, is not started every minute).
RECOVER_EVERY = 600.0

OnResult = Callable[[GcResult | None, float], None]


class GcBusy(Busy):
    """A collection is running already (423 BUSY in the admin API)."""


@dataclass
class GcRun:
    store: ClusterStore
    registry: Registry
    options: GcOptions
    run: str
    replica_id: str
    lease: int
    fence: Guard
    audit: AuditSink | None = None
    actor: str = "moorage"
    client: str | None = None
    on_result: OnResult | None = None
    _last_progress: float = field(default=0.0, init=False)

    def describe(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "replica_id": self.replica_id,
            "started_by": self.actor,
            "dry_run": self.options.dry_run,
            "grace": self.options.grace,
            "untagged": self.options.untagged,
        }

    async def _progress(self, phase: str, counts: dict[str, int]) -> None:
        now = time.monotonic()
        if now - self._last_progress < _PROGRESS_EVERY:
            return
        self._last_progress = now
        doc = {**self.describe(), "phase": phase, "counts": counts, "at": time.time()}
        with contextlib.suppress(MoorageError):
            await GcStore(self.store).put_doc(keys.GC_PROGRESS, doc)

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(LOCK_TTL / 4)
            try:
                if not await self.store.keep_alive(self.lease):
                    log.error("garbage collection %s lost its lock", self.run)
                    return
            except MoorageError as exc:
                log.warning("garbage collection %s could not renew its lock: %s", self.run, exc)

    async def execute(self) -> GcResult:
        """Run the collection, then release the lock; the result, or the failure (its
        message says what to do) after recording it."""
        started = time.time()
        gc_store = GcStore(self.store)
        keeper = asyncio.create_task(self._keep())
        collector = Collector(
            self.store,
            self.registry.storage,
            self.run,
            self.options,
            journal=self.registry.journal,
            fence=self.fence,
            progress=self._progress,
        )
        collector.store.notice = self.registry.manifests.on_delete  # delete events
        try:
            await gc_store.put_doc(keys.GC_PROGRESS, {**self.describe(), "phase": "start"})
            await _alone(self.registry)
            result = await collector.run()
            # The result is in the store before the lock goes: whoever sees the lock gone
            # finds it.
            with contextlib.suppress(MoorageError):
                await gc_store.put_doc(keys.GC_LAST, self._last(result))
        except (MoorageError, TimeoutError) as exc:
            message = _message(exc)
            log.error("garbage collection %s failed: %s", self.run, message)
            doc = {**self.describe(), "error": message, "finished_at": time.time()}
            with contextlib.suppress(MoorageError):
                await gc_store.put_doc(keys.GC_LAST, doc)
            await self._audit(FAILED, {"error": message[:300]})
            if self.on_result is not None:
                self.on_result(None, time.time() - started)
            raise GcAborted(message) from None
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            with contextlib.suppress(MoorageError):
                await gc_store.delete_doc(keys.GC_PROGRESS)
            with contextlib.suppress(MoorageError):
                await self.store.revoke_lease(self.lease)
        detail = {
            "dry_run": str(result.dry_run).lower(),
            "grace": f"{result.grace:g}",
            "untagged": str(result.untagged).lower(),
            "blobs": str(result.blobs),
            "bytes": str(result.bytes),
            "manifests": str(result.manifests),
            "duration": f"{result.duration:.3f}",
        }
        await self._audit(OK, detail)
        if self.on_result is not None:
            self.on_result(result, result.duration)
        log.info(
            "garbage collection %s%s: %d blobs, %d bytes, %d manifests in %.1f s",
            self.run,
            " (dry run)" if result.dry_run else "",
            result.blobs,
            result.bytes,
            result.manifests,
            result.duration,
        )
        return result

    def _last(self, result: GcResult) -> dict[str, Any]:
        """The result as the store keeps it (its lists of digests are bounded)."""
        return {**result.to_json(), "replica_id": self.replica_id, "started_by": self.actor}

    async def _audit(self, outcome: str, detail: dict[str, str]) -> None:
        if self.audit is not None:
            event = AuditEvent("gc", self.actor, "cluster", outcome, self.client, detail)
            await self.audit.record(event)


def _message(exc: BaseException) -> str:
    if isinstance(exc, RecordCorrupt):
        return corrupt_message(exc)
    if isinstance(exc, MoorageError):
        return exc.message
    return "the metadata store did not answer in time; nothing more was deleted: run it again"


async def _alone(registry: Registry) -> None:
    """GcAborted while another cluster uses this blob storage (moorage.storage.presence):
    what this cluster's records do not name may be that cluster's blobs."""
    cluster = await registry.meta.get_cluster()
    found = await presence.others(registry.storage, cluster.cluster_id if cluster else "")
    if found:
        raise GcAborted(presence.refusal(found, "of this cluster", "collect garbage"))


async def start(
    store: ClusterStore,
    registry: Registry,
    options: GcOptions,
    replica_id: str,
    **extra: Any,
) -> GcRun:
    """Take the collection lock: the run, ready to `execute`; GcBusy while one runs."""
    run = secrets.token_hex(8)
    owner = f"{replica_id}:{run}"
    held = await store.hold_lock(keys.GC_LOCK, owner, LOCK_TTL, time.time())
    if not isinstance(held, tuple):
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(held.at)) if held.at else "?"
        raise GcBusy(
            f"a garbage collection is already running (run {held.owner.partition(':')[2] or '?'} "
            f"on replica {held.owner.partition(':')[0]}, since {since}); wait for it to "
            "finish ('moorage gc --status' shows its progress), then run again"
        )
    lease, fence = held
    return GcRun(store, registry, options, run, replica_id, lease, fence, **extra)


async def dry_run(
    store: ClusterStore,
    registry: Registry,
    options: GcOptions,
    replica_id: str,
    audit: AuditSink | None = None,
    actor: str = "moorage",
    client: str | None = None,
    on_result: OnResult | None = None,
) -> dict[str, Any]:
    """A dry run, without the collection lock: it writes nothing (no tombstone, no delete,
    no progress, no last result), so it may run beside a collection or another dry run.
    Its report: what a collection started now would free (the running one's tombstones
    count as a dead run's would). Audited and measured like a run."""
    options = GcOptions(dry_run=True, grace=options.grace, untagged=options.untagged)
    run = secrets.token_hex(8)
    collector = Collector(store, registry.storage, run, options)
    try:
        await _alone(registry)
        result = await collector.run()
    except (MoorageError, TimeoutError) as exc:
        message = _message(exc)
        if audit is not None:
            detail = {"dry_run": "true", "error": message[:300]}
            await audit.record(AuditEvent("gc", actor, "cluster", FAILED, client, detail))
        if on_result is not None:
            on_result(None, 0.0)
        raise GcAborted(message) from None
    if audit is not None:
        detail = {
            "dry_run": "true",
            "grace": f"{result.grace:g}",
            "untagged": str(result.untagged).lower(),
            "blobs": str(result.blobs),
            "bytes": str(result.bytes),
            "manifests": str(result.manifests),
            "duration": f"{result.duration:.3f}",
        }
        await audit.record(AuditEvent("gc", actor, "cluster", OK, client, detail))
    if on_result is not None:
        on_result(result, result.duration)
    return {**result.to_json(), "replica_id": replica_id, "started_by": actor}


async def status(store: ClusterStore) -> dict[str, Any]:
    """The running collection's progress (None when none runs), the last result, the
    schedule."""
    gc_store = GcStore(store)
    lock = await store.get_lock(keys.GC_LOCK)
    running = None
    if lock is not None:  # its progress, once the run has written any
        running = await gc_store.get_doc(keys.GC_PROGRESS) or {
            "run": lock.owner.partition(":")[2],
            "replica_id": lock.owner.partition(":")[0],
            "phase": "starting",
        }
    return {
        "running": running,
        "last": await gc_store.get_doc(keys.GC_LAST),
        "schedule": await gc_store.get_doc(keys.GC_SCHEDULE),
    }


async def set_schedule(store: ClusterStore, interval: float | None, options: GcOptions) -> Any:
    """Collect every `interval` seconds with `options` (None: no schedule)."""
    gc_store = GcStore(store)
    if interval is None:
        await gc_store.delete_doc(keys.GC_SCHEDULE)
        return None
    if interval < MIN_INTERVAL:
        raise ValueError(f"the interval must be at least {MIN_INTERVAL:g} seconds")
    doc = {"interval": interval, "grace": options.grace, "untagged": options.untagged}
    await gc_store.put_doc(keys.GC_SCHEDULE, doc)
    return doc


def _number(doc: dict[str, Any] | None, name: str, default: float) -> float:
    value = (doc or {}).get(name)
    return (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default
    )


async def schedule_loop(
    store: ClusterStore,
    registry: Registry,
    replica_id: str,
    audit: AuditSink | None,
    on_result: OnResult | None = None,
) -> None:
    """Run the scheduled collection when it is due, on whichever replica takes the lock."""
    try:
        check = float(os.environ.get("MOORAGE_GC_SCHEDULE_CHECK") or SCHEDULE_CHECK)
    except ValueError:
        check = SCHEDULE_CHECK
    check = max(0.1, check)
    await asyncio.sleep(random.uniform(0, check))
    recovered_at = -RECOVER_EVERY
    while True:
        try:
            if time.monotonic() - recovered_at >= RECOVER_EVERY and await _dead_run_left(store):
                recovered_at = time.monotonic()
                await _finish_dead_run(store, registry, replica_id, audit, on_result)
            await _maybe_run(store, registry, replica_id, audit, on_result)
        except GcBusy:
            pass
        except MoorageError as exc:
            log.warning("scheduled garbage collection: %s", exc)
        await asyncio.sleep(check)


async def _dead_run_left(store: ClusterStore) -> bool:
    """Whether a run that died left tombstones: no run holds the lock, yet one stands."""
    if await store.get_lock(keys.GC_LOCK) is not None:
        return False
    for prefix in (keys.GC_DELETING, keys.GC_DELETING_MANIFESTS):
        found, _ = await store._range(prefix, keys.prefix_end(prefix), limit=1, keys_only=True)
        if found:
            return True
    return False


async def _finish_dead_run(
    store: ClusterStore,
    registry: Registry,
    replica_id: str,
    audit: AuditSink | None,
    on_result: OnResult | None,
) -> None:
    """A collection that deletes what the dead run had marked and no manifest needs, and
    clears the rest (what it finds older than the grace period goes too, as in any run)."""
    schedule = await GcStore(store).get_doc(keys.GC_SCHEDULE)
    grace = max(0.0, _number(schedule, "grace", 24 * 3600.0))
    log.warning(
        "a garbage collection died and left tombstones (pushes of those blobs are refused "
        "until a collection finishes them): running one with a grace of %.0f s",
        grace,
    )
    options = GcOptions(grace=grace)
    run = await start(store, registry, options, replica_id, audit=audit, on_result=on_result)
    with contextlib.suppress(GcAborted):
        await run.execute()


async def _maybe_run(
    store: ClusterStore,
    registry: Registry,
    replica_id: str,
    audit: AuditSink | None,
    on_result: OnResult | None,
) -> None:
    gc_store = GcStore(store)
    schedule = await gc_store.get_doc(keys.GC_SCHEDULE)
    if not schedule:
        return
    interval = max(MIN_INTERVAL, _number(schedule, "interval", 24 * 3600.0))
    last = await gc_store.get_doc(keys.GC_LAST)
    if time.time() - _number(last, "finished_at", 0.0) < interval:
        return
    options = GcOptions(
        grace=max(0.0, _number(schedule, "grace", 24 * 3600.0)),
        untagged=bool(schedule.get("untagged")),
    )
    run = await start(store, registry, options, replica_id, audit=audit, on_result=on_result)
    # Another replica may have finished a run between the read and the lock.
    last = await gc_store.get_doc(keys.GC_LAST)
    if time.time() - _number(last, "finished_at", 0.0) < interval:
        await store.revoke_lease(run.lease)
        return
    with contextlib.suppress(GcAborted):
        await run.execute()


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(value: object, what: str = "grace") -> float:
    """Seconds from a number or a span like `90s`, `30m`, `24h`, `7d`, `0`; ValueError
    saying what is accepted otherwise."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip().lower()
        unit = _UNITS.get(text[-1])
        try:
            seconds = float(text[:-1]) * unit if unit else float(text)
        except ValueError:
            seconds = -1.0
    else:
        seconds = -1.0
    if not 0 <= seconds <= 10 * 365 * 86400 or seconds != seconds:
        raise ValueError(
            f"{what} must be a duration like 90s, 30m, 24h or 7d (or seconds), "
            f"not {str(value)[:40]!r}"
        )
    return seconds
