"""Webhooks: registry events in the Distribution notification format, delivered at least
once from a queue in etcd (the deliveries themselves: cluster/webhook_dispatch.py).

- `Webhooks.event` builds an event; `outbox_op` is the write that puts it in the outbox,
  which the push or delete makes part of its own transaction (api/webhooks.py passes it
  down to meta/base.py): an acknowledged push always has its event, a push that failed never
  has one, and a replica lost right after a push loses nothing (the outbox is in etcd).
  `wanted` reads the webhooks afresh first, so a cluster without a webhook that wants the
  action writes nothing more. A push instead uses the webhooks as last read here
  (`for_push`), with a guard in its transaction that refuses it once a webhook was added or
  removed since (`keys.WEBHOOK_SET`): its retry reads them afresh. So an acknowledged push
  has the event of every webhook added before it committed, without a read per push.
- Pull events (optional per webhook) never wait on etcd: the webhooks that want them are
  read from a copy the dispatcher keeps current, and the write runs in the background,
  the pulls of half a second together; `aclose` (a worker's graceful stop, SIGTERM) queues
  those still waiting. A replica killed right after a pull may lose that pull event.
- Delivery is at least once: a deliverer that dies after the receiver answered but before
  its transaction commits leaves the event to be sent again. Receivers dedupe by event id.
- A delivery (`post`) has TIMEOUT seconds in all, connecting, sending and reading the answer,
  of which at most MAX_ANSWER bytes are read: a receiver answering gigabytes, or trickling a
  byte at a time, costs a worker neither memory nor a delivery slot for longer than that.
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
import secrets
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from moorage import __version__
from moorage.errors import MoorageError
from moorage.meta.cluster_store import ClusterStore
from moorage.meta.ops import Guard, Op
from moorage.meta.webhook_seal import Sealer
from moorage.meta.webhooks import (
    KEEP_DELIVERIES,
    MAX_WEBHOOKS,
    Delivery,
    QueuedEvent,
    WebhookRecord,
    WebhookStore,
)

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("moorage.webhooks")

MEDIA_TYPE = "application/vnd.docker.distribution.events.v2+json"
SIGNATURE_HEADER = "X-Moorage-Signature"
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


#: Seconds between the dispatcher's reads while its etcd watch is live (a fallback: the watch
#: wakes it on every change), MOORAGE_WEBHOOK_POLL; at most 1 s while the watch is down.
POLL = _env("MOORAGE_WEBHOOK_POLL", 30.0)
#: Events of one webhook in flight at once, per API worker (MOORAGE_WEBHOOK_CONCURRENCY).
CONCURRENCY = int(_env("MOORAGE_WEBHOOK_CONCURRENCY", 4))
#: The first retry's delay, doubled per attempt up to BACKOFF_CAP (MOORAGE_WEBHOOK_BACKOFF).
BACKOFF = _env("MOORAGE_WEBHOOK_BACKOFF", 2.0)
BACKOFF_CAP = _env("MOORAGE_WEBHOOK_BACKOFF_CAP", 300.0)
#: Attempts before an event is recorded as failed (MOORAGE_WEBHOOK_ATTEMPTS).
ATTEMPTS = int(_env("MOORAGE_WEBHOOK_ATTEMPTS", 10))
#: Seconds one delivery may take in all (MOORAGE_WEBHOOK_TIMEOUT): connecting, sending the
#: event and reading the answer, a total deadline (a receiver trickling its answer a byte at
#: a time fails it too, never holds a delivery slot for good).
TIMEOUT = _env("MOORAGE_WEBHOOK_TIMEOUT", 10.0)
#: The most of a receiver's answer read, in bytes as they arrive (never decompressed): its
#: status is all a delivery records; the rest is left unread and the connection closed.
MAX_ANSWER = 64 * 1024
#: Seconds a dead worker's claims last (its lease, kept alive while it lives).
CLAIM_TTL = max(int(_env("MOORAGE_WEBHOOK_CLAIM_TTL", 30.0)), 2 * int(TIMEOUT) + 2)
#: Seconds the other replicas leave a new event to the replica that accepted it.
HANDOFF = _env("MOORAGE_WEBHOOK_HANDOFF", 10.0)
#: Events one webhook's queue may hold (MOORAGE_WEBHOOK_QUEUE_MAX): past that, new events for
#: it are dropped and counted, so a receiver that is down for days cannot fill etcd.
QUEUE_MAX = int(_env("MOORAGE_WEBHOOK_QUEUE_MAX", 10000))


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

    def __init__(
        self, store: ClusterStore, replica_id: str, source_addr: str, cluster_secret: bytes = b""
    ) -> None:
        self.store = WebhookStore(store, Sealer(cluster_secret))
        self.replica_id = replica_id
        self.source_addr = source_addr
        #: The webhooks as of the dispatcher's last round (pull events read only this).
        self.known: list[WebhookRecord] = []
        #: What pushes go by (`for_push`): the webhooks and the guard they were read under.
        self._push_view: tuple[Guard, list[WebhookRecord]] | None = None
        self._pulls: list[dict[str, Any]] = []
        self._client: httpx.AsyncClient | None = None
        self._flusher: asyncio.Task[None] | None = None

    def client(self) -> httpx.AsyncClient:
        """One HTTP client per worker (a new one per POST costs a TLS context each)."""
        if self._client is None:
            import httpx  # loaded by the first delivery (with click and pygments here)

            self._client = httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False)
        return self._client

    async def aclose(self) -> None:
        """The worker stops: queue the pull events still waiting, close the HTTP client."""
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._pulls:
            await self._flush_now()
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
        if digest and request.base_url:  # none for a delete the registry decides itself
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

    async def wanted(self, action: str) -> bool:
        """Whether a webhook wants `action` (the webhooks read afresh: one bounded read)."""
        self.known = await self.store.hooks()
        return self.wants(action)

    async def for_push(self, fresh: bool) -> tuple[Guard, list[WebhookRecord]]:
        """The webhooks a push goes by and the guard for its transaction (refused once a
        webhook was added or removed since they were read); `fresh`: read them again (the
        retry of a push the guard refused)."""
        if fresh or self._push_view is None:
            self._push_view = await self.store.hooks_guarded()
        return self._push_view

    def forget_push_view(self) -> None:
        """A webhook changed (the dispatcher's watch saw it): the next push reads afresh."""
        self._push_view = None

    def outbox_op(self, event: dict[str, Any], known: Sequence[WebhookRecord] | None = None) -> Op:
        """The write that puts `event` in the outbox, for the webhooks that want it (of
        `known`, else those `wanted` found): part of its change's transaction."""
        now = time.time()
        among = self.known if known is None else known
        hooks = tuple(h.id for h in among if event["action"] in h.events)
        item = QueuedEvent(event, self.replica_id, round(now, 3), hooks=hooks)
        return self.store.outbox_op(seq(now), item)

    async def on_delete(self, repository: str, digest: str, tag: str, actor: str) -> list[Op]:
        """The event of a delete the registry decides itself (retention, garbage collection:
        registry.manifests.DeleteNotice), for its transaction; nothing when no webhook
        wants deletes."""
        if not await self.wanted("delete"):
            return []
        request = RequestInfo("", "", "", "", f"moorage/{__version__}", actor, "")
        return [self.outbox_op(self.event("delete", repository, request, digest=digest, tag=tag))]

    async def emit(self, event: dict[str, Any]) -> None:
        """Put `event` in the outbox on its own (a change already committed: `test`, or the
        unit tier)."""
        await self.store.store._txn([], [self.outbox_op(event)])

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
        await self._flush_now()

    async def _flush_now(self) -> None:
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
    import httpx

    headers = {
        "Content-Type": MEDIA_TYPE,
        "User-Agent": f"moorage/{__version__}",
        "X-Moorage-Webhook": hook.id,
        "X-Moorage-Replica": replica_id,
        "X-Moorage-Attempt": str(attempt),
    }
    if hook.secret_error is not None:  # never sent unsigned when it should be signed
        return None, hook.secret_error[:_ERROR_CHARS]
    if hook.secret is not None:
        headers[SIGNATURE_HEADER] = sign(hook.secret, body)
    seen: list[int] = []  # the status, once the answer's head arrived
    try:
        async with asyncio.timeout(TIMEOUT):
            await _exchange(client, hook.url, body, headers, seen)
    except TimeoutError:
        what = f"its answer (HTTP {seen[0]}) did not end" if seen else "no answer"
        return _first(seen), f"{what} within {TIMEOUT:g} s (MOORAGE_WEBHOOK_TIMEOUT)"
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
        return _first(seen), f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]
    status = seen[0]
    if 200 <= status < 400:
        return status, None
    return status, f"the receiver answered {status}"


async def _exchange(
    client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str], seen: list[int]
) -> None:
    """POST `body`, then read at most MAX_ANSWER bytes of the answer (its status into
    `seen`); leaving the stream unfinished closes the connection instead of reading on."""
    async with client.stream("POST", url, content=body, headers=headers) as resp:
        seen.append(resp.status_code)
        read = 0
        async for chunk in resp.aiter_raw():
            read += len(chunk)
            if read >= MAX_ANSWER:
                break


def _first(seen: list[int]) -> int | None:
    return seen[0] if seen else None


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


__all__ = [
    "ATTEMPTS",
    "KEEP_DELIVERIES",
    "MAX_ANSWER",
    "MAX_WEBHOOKS",
    "MEDIA_TYPE",
    "QUEUE_MAX",
    "SIGNATURE_HEADER",
    "RequestInfo",
    "Webhooks",
    "backoff",
    "envelope",
    "sign",
]
