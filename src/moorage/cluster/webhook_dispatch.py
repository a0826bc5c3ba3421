"""Delivering webhook events, in every API worker of every replica (cluster/jobs.py).

- Woken, not polling: an etcd watch on `/moorage-webhooks/` wakes the dispatcher when the
  outbox or the webhooks change, and a webhook's loop when its queue or claims change; a
  timer wakes a loop when its next retry or hand-off is due. An idle cluster reads nothing
  but one fallback read per webhook every POLL seconds (1 s while the watch is down).
- `Dispatcher`: keeps one `HookLoop` per webhook and moves outbox entries into the queues
  of the webhooks that want them (`WebhookStore.fan_out`, one guarded transaction each).
- `HookLoop`: reads the first page of its webhook's queue (ordered by when each event is
  due: a retry moves its event behind what is due before it) and delivers each due event
  on its own, at most CONCURRENCY at once: a receiver that is down holds back neither the
  other webhooks (each has its own loop) nor its own newer events (each event has its own
  schedule). An event is claimed first (a create-only key on the worker's lease, kept alive
  while the worker lives: a dead claimer's claims end after CLAIM_TTL), POSTed signed, then
  finished (out of the queue, recorded as a delivery) or moved to its next attempt at
  BACKOFF * 2^(attempts-1) (capped), and recorded as failed after ATTEMPTS.
- Other replicas leave an event to the replica that accepted it for HANDOFF seconds, so a
  healthy replica delivers its own events and the others take over when it is gone.
- A receiver that fails BREAK_AFTER attempts in a row (whatever the events) is taken to be
  down: the loop then sends one event at a time, the first due, no sooner than the backoff
  of that run of failures, until one is delivered; the others keep their schedule and
  their attempts. Before, every queued event had its own retries: 10,000 events for a dead
  receiver were 100,000 attempts, each a claim and a record in etcd, and the replica's
  other requests ran 5-15x slower.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace
from typing import Any

from prometheus_client import Counter

from moorage.cluster.webhooks import (
    ATTEMPTS,
    CLAIM_TTL,
    CONCURRENCY,
    HANDOFF,
    POLL,
    QUEUE_MAX,
    Webhooks,
    _delivery,
    backoff,
    envelope,
    post,
    seq,
)
from moorage.errors import MoorageError
from moorage.logs import Repeating
from moorage.meta import keys
from moorage.meta.etcd import EtcdMetaStore
from moorage.meta.etcd_watch import WatchClosed, watch_prefixes
from moorage.meta.webhooks import Queued, QueuedEvent, WebhookRecord

log = logging.getLogger("moorage.webhooks")

_PAGE = 32
#: Seconds a stopping dispatcher waits for its cancelled loops and deliveries to end.
_STOP_WAIT = 2.0
#: Deliveries recorded by this worker before it prunes the list down to KEEP_DELIVERIES (a
#: count, a read and a delete each time: after every delivery, most of a webhook's reads).
#: The list's readers take up to twice KEEP_DELIVERIES, so several workers' surplus fits.
_PRUNE_AFTER = 5
#: Failed attempts in a row (any events) after which a webhook's receiver is taken as down.
BREAK_AFTER = 3
_WATCH_DOWN_POLL = 1.0
#: A queue's length is read again after this many seconds (an estimate in between).
_COUNT_EVERY = 2.0
#: Drops are recorded as one delivery per webhook per this many seconds.
_NOTE_EVERY = 60.0

DROPPED = Counter(
    "moorage_webhook_events_dropped_total",
    "webhook events not queued because the webhook's queue was full",
    ["webhook"],
)


class HookLoop:
    """The deliveries of one webhook in this worker."""

    def __init__(self, dispatcher: Dispatcher, hook: WebhookRecord) -> None:
        self.dispatcher = dispatcher
        self.hook = hook
        self.wake = asyncio.Event()
        self.inflight: dict[str, asyncio.Task[str]] = {}  # queue seq -> its delivery
        self.busy: dict[str, float] = {}  # seq claimed elsewhere -> when to look again
        self.finished = 0
        self.failures = 0  # attempts failed in a row, whatever their events
        self.down_until = 0.0  # the receiver is down: no attempt before this (time.time())

    def claim_changed(self, seq_: str) -> None:
        self.busy.pop(seq_, None)
        self.wake.set()

    async def run(self) -> None:
        try:
            while True:
                self.wake.clear()
                try:
                    pause = await self._step()
                except MoorageError as exc:
                    log.info("webhook %s: %s", self.hook.id, exc)
                    pause = _WATCH_DOWN_POLL
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), max(0.0, pause))
        finally:
            inflight = list(self.inflight.values())
            for task in inflight:
                task.cancel()
            await _stopped(inflight)

    async def _step(self) -> float:
        """Start what is due; how long to wait for the next look (unless woken first)."""
        store = self.dispatcher.webhooks.store
        if self.finished >= _PRUNE_AFTER:
            self.finished = 0
            await store.prune(self.hook.id)
        now = time.time()
        wake_at = now + self.dispatcher.poll()
        self.busy = {s: t for s, t in self.busy.items() if t > now}
        me = self.dispatcher.webhooks.replica_id
        down = self.failures >= BREAK_AFTER
        if down and now < self.down_until:
            return min(wake_at, self.down_until) - now
        # A receiver taken as down gets one event at a time until it answers again.
        limit = 1 if down else CONCURRENCY
        for q in await store.queued(self.hook.id, _PAGE):
            if q.seq in self.inflight:
                continue
            if q.seq in self.busy:
                wake_at = min(wake_at, self.busy[q.seq])
                continue
            if q.item.next_at > now:
                wake_at = min(wake_at, q.item.next_at)
                continue
            if q.item.origin != me and now - q.item.created_at < HANDOFF:
                wake_at = min(wake_at, q.item.created_at + HANDOFF)
                continue  # its own replica delivers it, unless it is gone
            if len(self.inflight) >= limit:
                break  # a delivery ending wakes this loop
            self.inflight[q.seq] = asyncio.create_task(self._deliver(q))
        return wake_at - now

    async def _deliver(self, q: Queued) -> str:
        try:
            return await self._attempt(q)
        except MoorageError as exc:
            log.info("webhook %s: delivery of %s: %s", self.hook.id, q.seq, exc)
            return "store error"
        finally:
            self.inflight.pop(q.seq, None)
            self.wake.set()

    async def _attempt(self, q: Queued) -> str:
        d = self.dispatcher
        store, hook = d.webhooks.store, self.hook
        if not await store.claim(q, d.owner, await d.lease()):
            self.busy[q.seq] = time.time() + min(CLAIM_TTL, d.poll())
            return "claimed elsewhere"
        attempt = q.item.attempts + 1
        body = envelope(q.item.events)
        rid = d.webhooks.replica_id
        status, error = await post(d.webhooks.client(), hook, body, rid, attempt)
        self._outcome(error is None)
        if error is None or attempt >= ATTEMPTS:
            delivery = _delivery(hook.id, q.item.event, status, error, attempt, rid)
            delivery = replace(delivery, events=len(q.item.events))
            await store.finish(q, delivery, seq())
            self.finished += 1
            outcome = "delivered" if error is None else "failed"
            log.info("webhook %s: event %s %s", hook.id, q.item.event.get("id"), outcome)
            return outcome
        next_at = round(time.time() + backoff(attempt), 3)
        item = replace(
            q.item, attempts=attempt, next_at=next_at, last_error=error, last_status=status
        )
        # The failed attempt is shown at once (not only after the last one, minutes later).
        failed = _delivery(hook.id, q.item.event, status, error, attempt, rid)
        failed = replace(failed, events=len(q.item.events), state="retrying", next_at=next_at)
        await store.retry(q, item, seq(next_at), failed, seq())
        self.finished += 1  # a delivery recorded: prune
        return "to retry"

    def _outcome(self, delivered: bool) -> None:
        if delivered:
            if self.failures >= BREAK_AFTER:
                log.info("webhook %s: the receiver answers again", self.hook.id)
            self.failures, self.down_until = 0, 0.0
            return
        self.failures += 1
        if self.failures >= BREAK_AFTER:
            pause = backoff(self.failures - BREAK_AFTER + 1)
            self.down_until = time.time() + pause
            if self.failures == BREAK_AFTER:
                log.warning(
                    "webhook %s: %d attempts failed in a row: its receiver is taken as down, "
                    "one event at a time is tried until it answers (the next in %.0f s)",
                    self.hook.id,
                    self.failures,
                    pause,
                )


class Dispatcher:
    def __init__(self, webhooks: Webhooks, owner: str) -> None:
        self.webhooks = webhooks
        self.owner = owner
        self.loops: dict[str, tuple[HookLoop, asyncio.Task[None]]] = {}
        self.wake = asyncio.Event()
        self.watching = False
        #: The watch and the steps retry every second while etcd is down: each reason is
        #: logged once, then once a minute.
        self._watch_down = Repeating(log, logging.INFO)
        self._step_failed = Repeating(log, logging.INFO)
        self._lease = 0
        self._lease_at = 0.0
        #: per webhook: when its queue was counted, and the count (plus what was queued since)
        self._counts: dict[str, tuple[float, int]] = {}
        #: per webhook: when drops were last recorded, how many since, the last one's event
        self._drops: dict[str, tuple[float, int, dict[str, Any]]] = {}

    def poll(self) -> float:
        return POLL if self.watching else min(POLL, _WATCH_DOWN_POLL)

    async def lease(self) -> int:
        """This worker's lease for its claims, kept alive while it is in use."""
        store = self.webhooks.store
        now = time.monotonic()
        if self._lease and now - self._lease_at > CLAIM_TTL / 3:
            if await store.store.keep_alive(self._lease):
                self._lease_at = now
            else:
                self._lease = 0
        if not self._lease:
            self._lease, self._lease_at = await store.lease(CLAIM_TTL), now
        return self._lease

    def changed(self, changed: list[bytes]) -> None:
        """The watch saw these keys change: wake whoever they concern."""
        for key in changed:
            if key.startswith((keys.WEBHOOK_HOOKS, keys.WEBHOOK_OUTBOX)):
                if key.startswith(keys.WEBHOOK_HOOKS):
                    self.webhooks.forget_push_view()
                self.wake.set()
                continue
            for prefix in (keys.WEBHOOK_QUEUE, keys.WEBHOOK_CLAIMS):
                if key.startswith(prefix):
                    hook_id, _, seq_ = key[len(prefix) :].decode(errors="replace").partition("/")
                    entry = self.loops.get(hook_id)
                    if entry is not None:
                        entry[0].claim_changed(seq_)

    async def step(self) -> float:
        """Follow the webhooks (a loop each), move the outbox into their queues; how long
        to wait for the next look."""
        store = self.webhooks.store
        hooks = await store.hooks()
        self.webhooks.known = hooks
        by_id = {h.id: h for h in hooks}
        for hook_id in [h for h in self.loops if h not in by_id]:
            self.loops.pop(hook_id)[1].cancel()
        for hook in hooks:
            entry = self.loops.get(hook.id)
            if entry is not None and entry[0].hook == hook:
                continue
            if entry is not None:  # changed (the secret opens now, say): start it afresh
                entry[1].cancel()
            loop = HookLoop(self, hook)
            self.loops[hook.id] = (loop, asyncio.create_task(loop.run()))
        return await self._fan_out(hooks)

    async def _fan_out(self, hooks: list[WebhookRecord]) -> float:
        """Move a page of the outbox into the webhooks' queues: in one transaction when
        it fits and no other worker moves one of them meanwhile, else one by one."""
        store = self.webhooks.store
        now = time.time()
        wake_at = now + self.poll()
        moves: list[tuple[bytes, int, QueuedEvent, list[tuple[str, str, QueuedEvent]]]] = []
        for key, revision, item in await store.outbox(_PAGE):
            if item is None:
                log.warning("dropped a corrupt webhook outbox entry %r", key[:200])
                await store.fan_out(key, revision, [])
                continue
            if item.origin != self.webhooks.replica_id and now - item.created_at < HANDOFF:
                wake_at = min(wake_at, item.created_at + HANDOFF)
                continue  # its own replica moves it, unless it is gone
            at = key[len(keys.WEBHOOK_OUTBOX) :].decode(errors="replace")
            action = item.event.get("action")
            queued = replace(item, hooks=())
            wanted = [
                (h.id, at, queued)
                for h in hooks
                if action in h.events and (h.id in item.hooks or not item.hooks)
            ]
            moves.append((key, revision, item, wanted))
        if not moves:
            await self._note_drops({h.id for h in hooks})
            return wake_at - now
        live = {h.id for h in hooks}
        # Which webhook queues are full, as if the earlier moves of the page were made.
        planned: dict[bytes, list[tuple[str, str, QueuedEvent]]] = {}
        added: dict[str, int] = {}
        for key, _, _, wanted in moves:
            keep = []
            for w in wanted:
                if not await self._full(w[0], added.get(w[0], 0)):
                    keep.append(w)
                    added[w[0]] = added.get(w[0], 0) + 1
            planned[key] = keep
        together = [(key, revision, planned[key]) for key, revision, _, _ in moves]
        if len(moves) > 1 and await store.fan_out_many(together):
            moved = moves
        else:
            moved = [m for m in moves if await store.fan_out(m[0], m[1], planned[m[0]])]
        for key, _, item, wanted in moved:
            if item.origin != self.webhooks.replica_id:  # a gone replica's (else: its own)
                log.info("webhooks: moved an event of replica %s, %.1f s old", item.origin,
                         now - item.created_at)  # fmt: skip
            queued_for = {w[0] for w in planned[key]}
            for hook_id, _, _ in wanted:
                if hook_id not in queued_for:
                    await self._dropped(hook_id, item.event, live)
                else:
                    checked, count = self._counts[hook_id]
                    self._counts[hook_id] = (checked, count + 1)
        await self._note_drops(live)
        return 0.0  # look at the next page

    async def _full(self, hook_id: str, more: int = 0) -> bool:
        """Whether the webhook's queue holds QUEUE_MAX events with `more` added (counted at
        most every _COUNT_EVERY seconds, plus what this worker queued since)."""
        now = time.monotonic()
        checked, count = self._counts.get(hook_id, (-_COUNT_EVERY, 0))
        if now - checked >= _COUNT_EVERY:
            count = await self.webhooks.store.pending(hook_id)
            self._counts[hook_id] = (now, count)
        return count + more >= QUEUE_MAX

    async def _dropped(self, hook_id: str, event: dict[str, Any], live: set[str]) -> None:
        """An event not queued for a webhook whose queue is full: counted, and told in its
        deliveries (one record for the drops of each _NOTE_EVERY seconds)."""
        DROPPED.labels(hook_id).inc()
        noted, count, _ = self._drops.get(hook_id, (-_NOTE_EVERY, 0, event))
        self._drops[hook_id] = (noted, count + 1, event)
        await self._note_drops(live)

    async def _note_drops(self, live: set[str]) -> None:
        """Record the drops of each webhook of `live` not told for _NOTE_EVERY seconds."""
        now = time.monotonic()
        for hook_id, (noted, count, event) in list(self._drops.items()):
            if hook_id not in live:  # removed meanwhile: nothing to tell
                del self._drops[hook_id]
                self._counts.pop(hook_id, None)
                continue
            if not count or now - noted < _NOTE_EVERY:
                continue
            self._drops[hook_id] = (now, 0, event)
            error = (
                f"the webhook's queue holds {QUEUE_MAX} undelivered events (its receiver fails "
                f"or is too slow): {count} new event(s) were dropped, this one the last; make "
                "the receiver answer 2xx, or raise MOORAGE_WEBHOOK_QUEUE_MAX"
            )
            log.warning("webhook %s: %s", hook_id, error)
            delivery = _delivery(hook_id, event, None, error, 0, self.webhooks.replica_id)
            await self.webhooks.store.record(
                hook_id, seq(), replace(delivery, events=count, state="dropped")
            )

    async def run(self) -> None:
        watch = None
        meta = self.webhooks.store.store
        if isinstance(meta, EtcdMetaStore):
            watch = asyncio.create_task(self._watch(meta))
        try:
            while True:
                self.wake.clear()
                try:
                    pause = await self.step()
                    self._step_failed.clear()
                except MoorageError as exc:
                    self._step_failed(f"webhooks: {exc}")
                    pause = _WATCH_DOWN_POLL
                except Exception:  # a bug must not end delivery for the life of the worker
                    log.exception("webhook dispatcher step failed")
                    pause = _WATCH_DOWN_POLL
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), max(0.0, pause))
        finally:
            tasks = [task for _, task in self.loops.values()]
            if watch is not None:
                tasks.append(watch)
            for task in tasks:
                task.cancel()
            await _stopped(tasks)
            if self._lease:
                with contextlib.suppress(MoorageError):
                    await self.webhooks.store.release(self._lease)

    def _ready(self) -> None:
        if not self.watching:
            log.info("webhook watch established: deliveries start on changes")
        self.watching = True
        self._watch_down.clear()
        self.wake.set()  # changes made before the watch existed: look once
        for loop, _ in self.loops.values():
            loop.wake.set()

    async def _watch(self, meta: EtcdMetaStore) -> None:
        while True:
            pause = _WATCH_DOWN_POLL
            try:
                prefixes = (keys.WEBHOOKS,)
                await watch_prefixes(meta, prefixes, self._ready, lambda: None, self.changed)
            except WatchClosed:
                pause = 0.05  # a reopen (new members, a renewed certificate): watch again now
            except MoorageError as exc:
                self._watch_down(f"webhook watch: {exc}; retrying (reading every second meanwhile)")
            except Exception:  # never let the watch die silently
                log.exception("webhook watch failed; retrying")
            self.watching = False
            self.wake.set()  # read every second until the watch is back
            for loop, _ in self.loops.values():
                loop.wake.set()
            await asyncio.sleep(pause)


async def _stopped(tasks: list[asyncio.Task[Any]]) -> None:
    """Wait a moment for cancelled tasks to end (a task left pending is "destroyed but
    pending" when the loop closes), never for long: a stop must not hang on a delivery."""
    if tasks:
        await asyncio.wait(tasks, timeout=_STOP_WAIT)


async def dispatch_loop(webhooks: Webhooks, owner: str) -> None:
    try:
        await Dispatcher(webhooks, owner).run()
    finally:
        await webhooks.aclose()
