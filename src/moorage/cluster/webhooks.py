"""Webhooks: registry events delivered at least once, from a queue in etcd.

- `Webhooks.emit` builds an event in the Distribution notification format and writes it
  into the queue of every webhook that wants its action, in one transaction, before the
  push or delete that caused it is acknowledged (the API handler awaits it; if the write
  fails the request fails and the client retries, which queues the event again). So a
  replica lost right after a push loses no event: the queue is in etcd.
- Pull events (optional per webhook) never wait on etcd: the webhooks that want them are
  read from a copy the dispatcher refreshes each round, and the write runs in the
  background (a replica that dies right after a pull may lose that pull event).
- `Dispatcher.round`, in every API worker of every replica, every POLL seconds: for each
  webhook, the first page of its queue; an event due (its backoff over) is claimed with a
  lease (create-only key: one deliverer at a time; a dead claimer's lease ends after
  CLAIM_TTL and another worker takes the event), POSTed with an HMAC-SHA256 signature, then
  taken out of the queue and recorded as a delivery, or kept with its next attempt at
  BACKOFF * 2^(attempts-1) (capped), or after ATTEMPTS recorded as failed.
  Other replicas leave an event to the replica that accepted it for HANDOFF seconds, so a
  healthy replica delivers its own events and the others take over when it is gone.
- Delivery is at least once: a deliverer that dies after the receiver answered but before
  its transaction commits leaves the event to be sent again. Receivers dedupe by event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import hmac
import json
import logging
import os
import random
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import httpx

from moorage import __version__
from moorage.errors import MoorageError
from moorage.meta.cluster_store import ClusterStore
from moorage.meta.webhooks import (
    KEEP_DELIVERIES,
    MAX_WEBHOOKS,
    Delivery,
    Queued,
    QueuedEvent,
    WebhookRecord,
    WebhookStore,
)

log = logging.getLogger("moorage.webhooks")

MEDIA_TYPE = "application/vnd.docker.distribution.events.v2+json"
SIGNATURE_HEADER = "X-Moorage-Signature"
_QUEUE_PAGE = 32
_CONCURRENCY = 8
_PER_ROUND = 2 * _CONCURRENCY
#: Pull events wait this long in memory, to be queued together (one write for many pulls).
_PULL_FLUSH = 0.5
_PULL_BATCH = 100
_ERROR_CHARS = 300


def _env(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, "") or default)
    except ValueError:
        return default
    return value if value > 0 else default


#: Seconds between the dispatcher's rounds (MOORAGE_WEBHOOK_POLL).
POLL = _env("MOORAGE_WEBHOOK_POLL", 1.0)
#: The first retry's delay, doubled per attempt up to BACKOFF_CAP (MOORAGE_WEBHOOK_BACKOFF).
BACKOFF = _env("MOORAGE_WEBHOOK_BACKOFF", 2.0)
BACKOFF_CAP = _env("MOORAGE_WEBHOOK_BACKOFF_CAP", 300.0)
#: Attempts before an event is recorded as failed (MOORAGE_WEBHOOK_ATTEMPTS).
ATTEMPTS = int(_env("MOORAGE_WEBHOOK_ATTEMPTS", 10))
#: Seconds a receiver has to answer (MOORAGE_WEBHOOK_TIMEOUT).
TIMEOUT = _env("MOORAGE_WEBHOOK_TIMEOUT", 10.0)
#: Seconds a claim lasts. A round claims at most _PER_ROUND events, _CONCURRENCY at a time,
#: on one lease: it outlasts two receivers' timeouts, so a live deliverer never loses one.
CLAIM_TTL = max(int(_env("MOORAGE_WEBHOOK_CLAIM_TTL", 30.0)), 2 * int(TIMEOUT) + 2)
#: Seconds the other replicas leave a new event to the replica that accepted it.
HANDOFF = _env("MOORAGE_WEBHOOK_HANDOFF", 10.0)


# -- events --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What an event says of the request that caused it."""

    id: str
    addr: str
    host: str
    method: str
    useragent: str
    actor: str
    base_url: str


def _timestamp(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat().replace("+00:00", "Z")


def seq(at: float | None = None) -> str:
    """A queue or delivery key's sortable name: nanoseconds, then randomness."""
    ns = int((time.time() if at is None else at) * 1e9)
    return f"{ns:020d}-{secrets.token_hex(4)}"


def envelope(events: Iterable[dict[str, Any]]) -> bytes:
    return json.dumps({"events": list(events)}, separators=(",", ":")).encode()


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Webhooks:
    """The webhooks of one API worker: emitting events and delivering them."""

    def __init__(self, store: ClusterStore, replica_id: str, source_addr: str) -> None:
        self.store = WebhookStore(store)
        self.replica_id = replica_id
        self.source_addr = source_addr
        #: The webhooks as of the dispatcher's last round (pull events read only this).
        self.known: list[WebhookRecord] = []
        self._pulls: list[dict[str, Any]] = []
        self._client: httpx.AsyncClient | None = None
        self._flusher: asyncio.Task[None] | None = None

    def client(self) -> httpx.AsyncClient:
        """One HTTP client per worker (a new one per POST costs a TLS context each)."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def event(
        self,
        action: str,
        repository: str,
        request: RequestInfo,
        digest: str = "",
        media_type: str = "",
        size: int | None = None,
        tag: str = "",
    ) -> dict[str, Any]:
        now = time.time()
        target: dict[str, Any] = {"repository": repository}
        if media_type:
            target["mediaType"] = media_type
        if size is not None:
            target["size"] = size
            target["length"] = size
        if digest:
            target["digest"] = digest
            target["url"] = f"{request.base_url}/v2/{repository}/manifests/{digest}"
        if tag:
            target["tag"] = tag
        return {
            "id": str(uuid.uuid4()),
            "timestamp": _timestamp(now),
            "action": action,
            "target": target,
            "request": {
                "id": request.id,
                "addr": request.addr,
                "host": request.host,
                "method": request.method,
                "useragent": request.useragent,
            },
            "actor": {"name": request.actor},
            "source": {"addr": self.source_addr, "instanceID": self.replica_id},
        }

    async def emit(self, event: dict[str, Any]) -> int:
        """Queue `event` for every webhook that wants its action (read afresh): durable in
        etcd when this returns. How many webhooks it was queued for."""
        hooks = await self.store.hooks()
        self.known = hooks
        return await self._queue(event, hooks)

    def wants(self, action: str) -> bool:
        return any(action in h.events for h in self.known)

    def emit_later(self, event: dict[str, Any]) -> None:
        """Queue a pull event soon, in the background, with the other pulls of the moment
        (one transaction for all), for the webhooks last known to want it."""
        if not any(event["action"] in h.events for h in self.known):
            return
        self._pulls.append(event)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_pulls())

    async def _flush_pulls(self) -> None:
        await asyncio.sleep(_PULL_FLUSH)
        events, self._pulls = self._pulls, []
        now = time.time()
        # One queued envelope per webhook, of every pull of the moment (up to _PULL_BATCH).
        items = [
            (h.id, seq(now), QueuedEvent(chunk[0], self.replica_id, now, more=tuple(chunk[1:])))
            for h in self.known
            if "pull" in h.events
            for i in range(0, len(events), _PULL_BATCH)
            if (chunk := events[i : i + _PULL_BATCH])
        ]
        try:
            await self.store.enqueue(items)
        except MoorageError as exc:
            log.warning("%d pull event(s) were not queued: %s", len(events), exc)

    async def _queue(self, event: dict[str, Any], hooks: list[WebhookRecord]) -> int:
        now = time.time()
        item = QueuedEvent(event=event, origin=self.replica_id, created_at=round(now, 3))
        items = [(h.id, seq(now), item) for h in hooks if event["action"] in h.events]
        if items:
            await self.store.enqueue(items)
        return len(items)

    async def test(self, hook: WebhookRecord, request: RequestInfo) -> Delivery:
        """Send one `test` event to `hook` now (no retries) and record the outcome."""
        event = self.event("test", "", request)
        event["target"] = {}
        status, error = await post(self.client(), hook, envelope([event]), self.replica_id, 1)
        delivery = _delivery(hook.id, event, status, error, 1, self.replica_id)
        await self.store.record(hook.id, seq(), delivery)
        return delivery


async def post(
    client: httpx.AsyncClient, hook: WebhookRecord, body: bytes, replica_id: str, attempt: int
) -> tuple[int | None, str | None]:
    """POST one envelope: (status code, None) on 2xx/3xx, else (status or None, why)."""
    headers = {
        "Content-Type": MEDIA_TYPE,
        "User-Agent": f"moorage/{__version__}",
        "X-Moorage-Webhook": hook.id,
        "X-Moorage-Replica": replica_id,
        "X-Moorage-Attempt": str(attempt),
    }
    if hook.secret is not None:
        headers[SIGNATURE_HEADER] = sign(hook.secret, body)
    try:
        resp = await client.post(hook.url, content=body, headers=headers)
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]
    if 200 <= resp.status_code < 400:
        return resp.status_code, None
    return resp.status_code, f"the receiver answered {resp.status_code}"


def _delivery(
    hook_id: str,
    event: dict[str, Any],
    status: int | None,
    error: str | None,
    attempts: int,
    replica_id: str,
) -> Delivery:
    target = event.get("target") or {}
    return Delivery(
        webhook=hook_id,
        event_id=str(event.get("id", "")),
        action=str(event.get("action", "")),
        repository=str(target.get("repository", "")),
        digest=str(target.get("digest", "")),
        tag=str(target.get("tag", "")),
        delivered=error is None,
        status_code=status,
        attempts=attempts,
        error=error,
        finished_at=round(time.time(), 3),
        replica=replica_id,
    )


def backoff(attempts: int) -> float:
    return float(min(BACKOFF_CAP, BACKOFF * 2 ** max(0, attempts - 1)))


class Dispatcher:
    def __init__(self, webhooks: Webhooks, owner: str) -> None:
        self.webhooks = webhooks
        self.owner = owner

    async def round(self) -> tuple[str, bool]:
        """One round: deliver what is due (at most _PER_ROUND events). What it did, in words,
        and whether it left due events for the next round."""
        store = self.webhooks.store
        hooks = await store.hooks()
        self.webhooks.known = hooks
        if not hooks:
            return "no webhooks", False
        now = time.time()
        due: list[tuple[WebhookRecord, Queued]] = []
        for hook in hooks[:MAX_WEBHOOKS]:
            for q in await store.queued(hook.id, _QUEUE_PAGE):
                if q.item.next_at > now:
                    continue
                if q.item.origin != self.webhooks.replica_id and now - q.item.created_at < HANDOFF:
                    continue  # its own replica delivers it, unless it is gone
                due.append((hook, q))
        if not due:
            return f"{len(hooks)} webhook(s), nothing due", False
        random.shuffle(due)  # workers that look at once claim different events first
        more, due = len(due) > _PER_ROUND, due[:_PER_ROUND]
        gate = asyncio.Semaphore(_CONCURRENCY)
        lease = await store.lease(CLAIM_TTL)

        async def one(hook: WebhookRecord, q: Queued) -> str:
            async with gate:
                return await self._deliver(hook, q, lease)

        try:
            outcomes = await asyncio.gather(*(one(h, q) for h, q in due))
            for hook_id in {h.id for h, _ in due}:
                await store.prune(hook_id)
        finally:
            with contextlib.suppress(MoorageError):
                await store.release(lease)
        counts = {o: outcomes.count(o) for o in dict.fromkeys(outcomes)}
        return ", ".join(f"{n} {what}" for what, n in counts.items()), more

    async def _deliver(self, hook: WebhookRecord, q: Queued, lease: int) -> str:
        store = self.webhooks.store
        if not await store.claim(q, self.owner, lease):
            return "claimed elsewhere"
        attempt = q.item.attempts + 1
        body = envelope(q.item.events)
        status, error = await post(
            self.webhooks.client(), hook, body, self.webhooks.replica_id, attempt
        )
        if error is None or attempt >= ATTEMPTS:
            rid = self.webhooks.replica_id
            delivery = _delivery(hook.id, q.item.event, status, error, attempt, rid)
            delivery = replace(delivery, events=len(q.item.events))
            await store.finish(q, delivery, seq())
            return "delivered" if error is None else "failed"
        item = replace(
            q.item,
            attempts=attempt,
            next_at=round(time.time() + backoff(attempt), 3),
            last_error=error,
            last_status=status,
        )
        await store.retry(q, item)
        return "to retry"


async def dispatch_loop(webhooks: Webhooks, owner: str) -> None:
    try:
        await _dispatch(Dispatcher(webhooks, owner))
    finally:
        await webhooks.aclose()


async def _dispatch(dispatcher: Dispatcher) -> None:
    said = ""
    while True:
        more = False
        try:
            what, more = await dispatcher.round()
        except MoorageError as exc:
            what = f"round failed: {exc}"
        except Exception:  # a bug must not end delivery for the life of the worker
            log.exception("webhook round failed")
            what = "round failed"
        if what != said and not what.endswith("nothing due") and what != "no webhooks":
            log.info("webhooks: %s", what)
        said = what
        await asyncio.sleep(0 if more else POLL)


__all__ = [
    "ATTEMPTS",
    "KEEP_DELIVERIES",
    "MAX_WEBHOOKS",
    "MEDIA_TYPE",
    "SIGNATURE_HEADER",
    "Dispatcher",
    "RequestInfo",
    "Webhooks",
    "backoff",
    "dispatch_loop",
    "envelope",
    "sign",
]
