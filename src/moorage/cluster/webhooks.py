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
import secrets
import time
import urllib.parse
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
EVENTS = ("push", "delete", "pull")
_MAX_URL = 2048
_MAX_NAME = 64
_MAX_SECRET = 256
_QUEUE_PAGE = 32
_CONCURRENCY = 8
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
#: Seconds a claim lasts: longer than TIMEOUT, so a live deliverer never loses it.
CLAIM_TTL = max(int(_env("MOORAGE_WEBHOOK_CLAIM_TTL", 30.0)), int(TIMEOUT) + 2)
#: Seconds the other replicas leave a new event to the replica that accepted it.
HANDOFF = _env("MOORAGE_WEBHOOK_HANDOFF", 10.0)


# -- input ---------------------------------------------------------------------------------
def check_url(url: object) -> str:
    """An http(s) URL with a host, no credentials, no fragment; ValueError says why not."""
    if not isinstance(url, str) or not url:
        raise ValueError("url is required: the http:// or https:// address of the receiver")
    if len(url) > _MAX_URL:
        raise ValueError(f"url is longer than {_MAX_URL} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise ValueError("url must not contain spaces or control characters")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"url must start with http:// or https://, not {url[:100]!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"url has an invalid port: {url[:100]!r}") from None
    if not parts.hostname:
        raise ValueError(f"url has no host: {url[:100]!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "url must not carry credentials (they would be shown back); use --secret to let "
            "the receiver check the signature instead"
        )
    if parts.fragment:
        raise ValueError("url must not have a #fragment")
    del port
    return url


def check_events(events: object) -> tuple[str, ...]:
    if isinstance(events, str):
        events = [e.strip() for e in events.split(",") if e.strip()]
    if not isinstance(events, list) or not events:
        raise ValueError("events is required: some of push, delete, pull")
    out: list[str] = []
    for e in events:
        if not isinstance(e, str) or e not in EVENTS:
            raise ValueError(f"unknown event {str(e)[:40]!r}: choose from {', '.join(EVENTS)}")
        if e not in out:
            out.append(e)
    return tuple(out)


def check_secret(secret: object) -> str | None:
    if secret is None or secret == "":
        return None
    if not isinstance(secret, str) or len(secret) > _MAX_SECRET:
        raise ValueError(f"secret must be a string of at most {_MAX_SECRET} characters")
    return secret


def check_name(name: object, url: str) -> str:
    if name is None or name == "":
        return urllib.parse.urlsplit(url).hostname or "webhook"
    if not isinstance(name, str) or len(name) > _MAX_NAME or not name.isprintable():
        raise ValueError(f"name must be printable text of at most {_MAX_NAME} characters")
    return name


def new_webhook(body: dict[str, Any], actor: str) -> WebhookRecord:
    unknown = set(body) - {"url", "events", "secret", "name"}
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))[:200]}")
    url = check_url(body.get("url"))
    return WebhookRecord(
        id=secrets.token_hex(6),
        url=url,
        events=check_events(body.get("events")),
        name=check_name(body.get("name"), url),
        secret=check_secret(body.get("secret")),
        created_at=round(time.time(), 3),
        created_by=actor,
    )


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
        self._background: set[asyncio.Task[None]] = set()

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
        """Queue a pull event in the background, for the webhooks last known to want it."""
        hooks = self.known
        if not any(event["action"] in h.events for h in hooks):
            return
        task = asyncio.create_task(self._queue_quietly(event, hooks))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _queue_quietly(self, event: dict[str, Any], hooks: list[WebhookRecord]) -> None:
        try:
            await self._queue(event, hooks)
        except MoorageError as exc:
            log.warning("a %s event was not queued: %s", event.get("action"), exc)

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
        status, error = await post(hook, envelope([event]), self.replica_id, 1)
        delivery = _delivery(hook.id, event, status, error, 1, self.replica_id)
        await self.store.record(hook.id, seq(), delivery)
        return delivery


async def post(
    hook: WebhookRecord, body: bytes, replica_id: str, attempt: int
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
        async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False) as client:
            resp = await client.post(hook.url, content=body, headers=headers)
    except httpx.HTTPError as exc:
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

    async def round(self) -> str:
        """One round: deliver what is due. What it did, in words."""
        hooks = await self.webhooks.store.hooks()
        self.webhooks.known = hooks
        if not hooks:
            return "no webhooks"
        now = time.time()
        due: list[tuple[WebhookRecord, Queued]] = []
        for hook in hooks[:MAX_WEBHOOKS]:
            for q in await self.webhooks.store.queued(hook.id, _QUEUE_PAGE):
                if q.item.next_at > now:
                    continue
                if q.item.origin != self.webhooks.replica_id and now - q.item.created_at < HANDOFF:
                    continue  # its own replica delivers it, unless it is gone
                due.append((hook, q))
        if not due:
            return f"{len(hooks)} webhook(s), nothing due"
        gate = asyncio.Semaphore(_CONCURRENCY)

        async def one(hook: WebhookRecord, q: Queued) -> str:
            async with gate:
                return await self._deliver(hook, q)

        outcomes = await asyncio.gather(*(one(h, q) for h, q in due))
        counts = {o: outcomes.count(o) for o in dict.fromkeys(outcomes)}
        return ", ".join(f"{n} {what}" for what, n in counts.items())

    async def _deliver(self, hook: WebhookRecord, q: Queued) -> str:
        store = self.webhooks.store
        lease = await store.claim(q, self.owner, CLAIM_TTL)
        if lease is None:
            return "claimed elsewhere"
        try:
            attempt = q.item.attempts + 1
            body = envelope([q.item.event])
            status, error = await post(hook, body, self.webhooks.replica_id, attempt)
            if error is None or attempt >= ATTEMPTS:
                rid = self.webhooks.replica_id
                delivery = _delivery(hook.id, q.item.event, status, error, attempt, rid)
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
        finally:
            with contextlib.suppress(MoorageError):
                await store.release(lease)


async def dispatch_loop(webhooks: Webhooks, owner: str) -> None:
    dispatcher = Dispatcher(webhooks, owner)
    said = ""
    while True:
        try:
            what = await dispatcher.round()
        except MoorageError as exc:
            what = f"round failed: {exc}"
        except Exception:  # a bug must not end delivery for the life of the worker
            log.exception("webhook round failed")
            what = "round failed"
        if what != said and not what.endswith("nothing due") and what != "no webhooks":
            log.info("webhooks: %s", what)
        said = what
        await asyncio.sleep(POLL)


__all__ = [
    "ATTEMPTS",
    "EVENTS",
    "KEEP_DELIVERIES",
    "MAX_WEBHOOKS",
    "MEDIA_TYPE",
    "SIGNATURE_HEADER",
    "Dispatcher",
    "RequestInfo",
    "Webhooks",
    "backoff",
    "check_events",
    "check_url",
    "dispatch_loop",
    "envelope",
    "new_webhook",
    "sign",
]
