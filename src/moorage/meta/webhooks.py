"""What webhooks keep in the store: the webhooks, their event queues, claims and deliveries.

Keys are drawn in meta/keys.py (`/moorage-webhooks/...`). The guarantees delivery needs:

* `outbox_op`: the one write that puts a push's or delete's event in the outbox, made part
  of the very transaction that records the push or delete (meta/base.py's `also`): an
  acknowledged push has its event, a push that failed has none.
* `fan_out`: one transaction (guarded by the outbox entry's revision) moves an outbox entry
  into the queue of every webhook that wants its action.
* The queue is ordered by when each event is due: a new event's key is its time, a retry
  moves the event to the key of its next attempt, so the first page of a queue holds what
  is due now and an event backing off never stands in front of newer ones.
* `claim`: create-only with a lease, so one worker delivers an event at a time; a worker
  that dies lets its lease end and another claims the event.
* `finish` / `retry`: one transaction each, guarded by the queued event's revision.
* Every read is bounded: webhooks (at most MAX_WEBHOOKS) in one page, a queue one page at a
  time, the deliveries of a webhook at most KEEP_DELIVERIES (older ones are deleted when a
  new one is written).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from moorage.meta import keys
from moorage.meta.base import MUST_EXIST, STORE_PAGE, Delete, Guard, Op, Put, op_batches
from moorage.meta.cluster_store import ClusterStore
from moorage.meta.records import dumps
from moorage.meta.webhook_seal import Sealer

log = logging.getLogger("moorage.webhooks")

#: Webhooks a cluster may have (so one bounded read lists them all).
MAX_WEBHOOKS = 100
#: The deliveries kept per webhook (older ones are deleted).
KEEP_DELIVERIES = 50
_DELETE_BATCH = 256


def _doc(value: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(value)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


@dataclass(frozen=True, slots=True)
class WebhookRecord:
    id: str
    url: str
    events: tuple[str, ...]
    name: str
    secret: str | None = None
    created_at: float = 0.0
    created_by: str = ""
    #: Why the stored secret could not be opened (deliveries fail rather than go unsigned).
    secret_error: str | None = None

    def encode(self, sealer: Sealer) -> bytes:
        """The stored form: the secret sealed (meta/webhook_seal.py), never in plain text."""
        doc = {**asdict(self), "events": list(self.events)}
        del doc["secret"], doc["secret_error"]
        if self.secret is not None:
            doc["sealed_secret"] = sealer.seal(self.id, self.secret)
        return dumps(doc)

    @classmethod
    def decode(cls, value: bytes, sealer: Sealer) -> WebhookRecord | None:
        doc = _doc(value)
        if doc is None or not isinstance(doc.get("id"), str) or not isinstance(doc.get("url"), str):
            return None
        events = doc.get("events")
        secret, error = None, None
        sealed, legacy = doc.get("sealed_secret"), doc.get("secret")
        if isinstance(legacy, str) and legacy:  # written before secrets were sealed
            secret = legacy
        elif isinstance(sealed, str) and sealed:
            try:
                secret = sealer.open(doc["id"], sealed)
            except ValueError as exc:
                error = str(exc)
        return cls(
            id=doc["id"],
            url=doc["url"],
            events=tuple(str(e) for e in events) if isinstance(events, list) else (),
            name=str(doc.get("name") or ""),
            secret=secret,
            created_at=float(doc.get("created_at") or 0.0),
            created_by=str(doc.get("created_by") or ""),
            secret_error=error,
        )

    def public(self) -> dict[str, Any]:
        """What the API shows: everything but the secret (only whether there is one)."""
        return {
            "id": self.id,
            "name": self.name,
            "url": self.url,
            "events": list(self.events),
            "signed": self.secret is not None or self.secret_error is not None,
            "created_at": self.created_at,
            "created_by": self.created_by,
        }


@dataclass(frozen=True, slots=True)
class QueuedEvent:
    """An event waiting for delivery to one webhook (`event` is the envelope's one event)."""

    event: dict[str, Any]
    origin: str  # the replica that accepted the request (it delivers first)
    created_at: float
    attempts: int = 0
    next_at: float = 0.0
    last_error: str | None = None
    last_status: int | None = None
    #: Further events sent in the same envelope (pulls of the same moment, coalesced).
    more: tuple[dict[str, Any], ...] = ()
    #: In the outbox: the webhooks that wanted the event when it was written (a webhook
    #: added later does not get it).
    hooks: tuple[str, ...] = ()

    def encode(self) -> bytes:
        return dumps({**asdict(self), "more": list(self.more), "hooks": list(self.hooks)})

    @property
    def events(self) -> list[dict[str, Any]]:
        return [self.event, *self.more]

    @classmethod
    def decode(cls, value: bytes) -> QueuedEvent | None:
        doc = _doc(value)
        if doc is None or not isinstance(doc.get("event"), dict):
            return None
        try:
            return cls(
                event=doc["event"],
                origin=str(doc.get("origin") or ""),
                created_at=float(doc.get("created_at") or 0.0),
                attempts=int(doc.get("attempts") or 0),
                next_at=float(doc.get("next_at") or 0.0),
                last_error=doc.get("last_error"),
                last_status=doc.get("last_status"),
                more=tuple(e for e in doc.get("more") or () if isinstance(e, dict)),
                hooks=tuple(str(h) for h in doc.get("hooks") or ()),
            )
        except (TypeError, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class Queued:
    """One queued event as read: its key's parts and revision."""

    hook_id: str
    seq: str
    item: QueuedEvent
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of one event's delivery to one webhook."""

    webhook: str
    event_id: str
    action: str
    repository: str
    digest: str
    tag: str
    delivered: bool
    status_code: int | None
    attempts: int
    error: str | None
    finished_at: float
    replica: str
    events: int = 1  # in the envelope (coalesced pulls: several); dropped: how many
    #: "retrying" (an attempt failed; the next at `next_at`), "dropped" (the queue was
    #: full: `events` events were not queued), or empty: delivered or failed for good
    state: str = ""
    next_at: float | None = None

    def encode(self) -> bytes:
        return dumps(asdict(self))

    @classmethod
    def decode(cls, value: bytes) -> Delivery | None:
        doc = _doc(value)
        if doc is None:
            return None
        status, error = doc.get("status_code"), doc.get("error")
        try:
            return cls(
                webhook=str(doc.get("webhook", "")),
                event_id=str(doc.get("event_id", "")),
                action=str(doc.get("action", "")),
                repository=str(doc.get("repository", "")),
                digest=str(doc.get("digest", "")),
                tag=str(doc.get("tag", "")),
                delivered=bool(doc.get("delivered")),
                status_code=int(status) if status is not None else None,
                attempts=int(doc.get("attempts") or 0),
                error=str(error) if error is not None else None,
                finished_at=float(doc.get("finished_at") or 0.0),
                replica=str(doc.get("replica", "")),
                events=int(doc.get("events") or 1),
                state=str(doc.get("state") or ""),
                next_at=float(doc["next_at"]) if doc.get("next_at") is not None else None,
            )
        except (TypeError, ValueError):
            return None

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["status"] = self.state or ("delivered" if self.delivered else "failed")
        return doc


class WebhookStore:
    def __init__(self, store: ClusterStore, sealer: Sealer | None = None) -> None:
        self.store = store
        self.sealer = sealer or Sealer(b"")

    # -- webhooks ------------------------------------------------------------------------
    async def hooks_guarded(self) -> tuple[Guard, list[WebhookRecord]]:
        """The webhooks, and a guard that refuses a transaction once one was added or
        removed since (the revision of `keys.WEBHOOK_SET`, read first: a change between the
        two reads makes the guard refuse, never pass, a push that missed it)."""
        (kv,) = await self.store._get_many([keys.WEBHOOK_SET])
        guard = (keys.WEBHOOK_SET, kv.mod_revision if kv is not None else 0)
        return guard, await self.hooks()

    async def hooks(self) -> list[WebhookRecord]:
        end = keys.prefix_end(keys.WEBHOOK_HOOKS)
        kvs, _ = await self.store._range(
            keys.WEBHOOK_HOOKS, end, limit=min(MAX_WEBHOOKS, STORE_PAGE)
        )
        out = []
        for kv in kvs:
            record = WebhookRecord.decode(kv.value, self.sealer)
            if record is None:
                log.warning("skipped a corrupt webhook record %r", kv.key[:200])
            else:
                out.append(record)
        out.sort(key=lambda r: (r.created_at, r.id))  # the order they were added in
        return out

    async def get(self, hook_id: str) -> WebhookRecord | None:
        kv = await self.store._get(keys.webhook(hook_id))
        return WebhookRecord.decode(kv.value, self.sealer) if kv else None

    async def add(self, record: WebhookRecord) -> bool:
        """Create the webhook (False when one of that id exists)."""
        key = keys.webhook(record.id)
        ops = [Put(key, record.encode(self.sealer)), Put(keys.WEBHOOK_SET, b"")]
        return await self.store._txn([(key, 0)], ops)

    async def remove(self, hook_id: str) -> bool:
        """Delete the webhook, then its queue, claims and deliveries (in bounded batches)."""
        key = keys.webhook(hook_id)
        if await self.store._get(key) is None:
            return False
        await self.store._txn([], [Delete(key), Put(keys.WEBHOOK_SET, b"")])
        for prefix in (
            keys.webhook_queue(hook_id),
            keys.webhook_claim(hook_id),
            keys.webhook_delivery(hook_id),
        ):
            await self._delete_prefix(prefix)
        return True

    async def _delete_prefix(self, prefix: bytes) -> None:
        end = keys.prefix_end(prefix)
        while True:
            kvs, _ = await self.store._range(prefix, end, limit=_DELETE_BATCH, keys_only=True)
            if not kvs:
                return
            await self.store._txn([], [Delete(kv.key) for kv in kvs])

    # -- the outbox ----------------------------------------------------------------------
    @staticmethod
    def outbox_op(seq: str, item: QueuedEvent) -> Op:
        """The write that puts an event in the outbox: the caller makes it part of the
        transaction of the change the event tells of."""
        return Put(keys.webhook_outbox(seq), item.encode())

    async def outbox(self, limit: int) -> list[tuple[bytes, int, QueuedEvent | None]]:
        """The first `limit` outbox entries (key, revision, event or None if corrupt)."""
        kvs, _ = await self.store._range(
            keys.WEBHOOK_OUTBOX,
            keys.prefix_end(keys.WEBHOOK_OUTBOX),
            limit=min(limit, STORE_PAGE),
        )
        return [(kv.key, kv.mod_revision, QueuedEvent.decode(kv.value)) for kv in kvs]

    async def fan_out(
        self, key: bytes, revision: int, items: Sequence[tuple[str, str, QueuedEvent]]
    ) -> bool:
        """Move one outbox entry into the queues of `items` (hook id, seq, event): one
        transaction guarded by the entry's revision (False: another worker did it)."""
        batches = list(op_batches(_moved(key, items)))
        for batch in batches[:-1]:  # more webhooks than one transaction holds: rare
            await self.store._txn([], batch)
        return await self.store._txn([(key, revision)], batches[-1])

    async def fan_out_many(
        self, moves: Sequence[tuple[bytes, int, Sequence[tuple[str, str, QueuedEvent]]]]
    ) -> bool:
        """`fan_out` of several outbox entries (key, revision, items) in one transaction
        guarded by every entry's revision; False when they do not fit in one, or another
        worker moved one of them (then move them one by one)."""
        ops = [op for key, _, items in moves for op in _moved(key, items)]
        if len(list(op_batches(ops))) != 1:
            return False
        return await self.store._txn([(key, revision) for key, revision, _ in moves], ops)

    # -- the queue -----------------------------------------------------------------------
    async def enqueue(self, items: Sequence[tuple[str, str, QueuedEvent]]) -> None:
        """Queue (hook id, seq, event) items, in one transaction when they fit (always, for
        up to MAX_WEBHOOKS webhooks)."""
        ops: list[Op] = [Put(keys.webhook_queue(h, s), item.encode()) for h, s, item in items]
        for batch in op_batches(ops):
            await self.store._txn([], batch)

    async def queued(self, hook_id: str, limit: int) -> list[Queued]:
        """The first `limit` events in `hook_id`'s queue, soonest due first (one bounded
        read)."""
        prefix = keys.webhook_queue(hook_id)
        kvs, _ = await self.store._range(
            prefix, keys.prefix_end(prefix), limit=min(limit, STORE_PAGE)
        )
        out = []
        for kv in kvs:
            seq = kv.key[len(prefix) :].decode(errors="replace")
            item = QueuedEvent.decode(kv.value)
            if item is None:  # a corrupt entry would block nothing but itself: drop it
                log.warning("dropped a corrupt queued webhook event %r", kv.key[:200])
                await self.store._txn([(kv.key, kv.mod_revision)], [Delete(kv.key)])
                continue
            out.append(Queued(hook_id, seq, item, kv.mod_revision))
        return out

    async def pending(self, hook_id: str) -> int:
        prefix = keys.webhook_queue(hook_id)
        return await self.store._count(prefix, keys.prefix_end(prefix))

    async def lease(self, ttl: int) -> int:
        """A lease for a round's claims (`claim`): they end with it."""
        return await self.store.grant_lease(ttl)

    async def claim(self, q: Queued, owner: str, lease: int) -> bool:
        """Claim a queued event until `lease` ends: False when another worker has it, or
        when the event changed since `q` was read (another worker's attempt came and went:
        `q` would send that attempt again)."""
        key = keys.webhook_claim(q.hook_id, q.seq)
        guard = (keys.webhook_queue(q.hook_id, q.seq), q.mod_revision)
        return await self.store._create_leased(key, dumps({"owner": owner}), lease, [guard])

    async def release(self, lease: int) -> None:
        await self.store.revoke_lease(lease)

    async def finish(self, q: Queued, delivery: Delivery, seq: str) -> bool:
        """The event is done (delivered, or failed for good): out of the queue, its outcome
        recorded as delivery `seq`, in one transaction guarded by the event's revision (call
        `prune` after)."""
        queue_key = keys.webhook_queue(q.hook_id, q.seq)
        ops: list[Op] = [
            Delete(queue_key),
            Delete(keys.webhook_claim(q.hook_id, q.seq)),
            Put(keys.webhook_delivery(q.hook_id, seq), delivery.encode()),
        ]
        hook = keys.webhook(q.hook_id)
        return await self.store._txn([(queue_key, q.mod_revision), (hook, MUST_EXIST)], ops)

    async def retry(
        self, q: Queued, item: QueuedEvent, seq: str, attempt: Delivery, attempt_seq: str
    ) -> bool:
        """Keep the event queued with its attempts, moved to `seq` (the time of its next
        attempt: behind what is due before it), guarded like `finish`; the failed attempt
        recorded as delivery `attempt_seq` (call `prune` after)."""
        queue_key = keys.webhook_queue(q.hook_id, q.seq)
        ops: list[Op] = [
            Delete(queue_key),
            Put(keys.webhook_queue(q.hook_id, seq), item.encode()),
            Delete(keys.webhook_claim(q.hook_id, q.seq)),
            Put(keys.webhook_delivery(q.hook_id, attempt_seq), attempt.encode()),
        ]
        return await self.store._txn([(queue_key, q.mod_revision)], ops)

    async def drop(self, q: Queued) -> None:
        """An event of a webhook that no longer exists."""
        await self.store._txn([], [Delete(keys.webhook_queue(q.hook_id, q.seq))])

    # -- deliveries ----------------------------------------------------------------------
    async def record(self, hook_id: str, seq: str, delivery: Delivery) -> None:
        """Record a delivery outside the queue (`webhook test`)."""
        await self.store._txn([], [Put(keys.webhook_delivery(hook_id, seq), delivery.encode())])
        await self.prune(hook_id)

    async def prune(self, hook_id: str) -> None:
        """Delete the oldest deliveries beyond KEEP_DELIVERIES (after a round's `finish`es)."""
        prefix = keys.webhook_delivery(hook_id)
        end = keys.prefix_end(prefix)
        surplus = await self.store._count(prefix, end) - KEEP_DELIVERIES
        if surplus <= 0:
            return
        kvs, _ = await self.store._range(
            prefix, end, limit=min(surplus, _DELETE_BATCH), keys_only=True
        )
        if kvs:
            await self.store._txn([], [Delete(kv.key) for kv in kvs])

    async def deliveries(self, hook_id: str) -> list[Delivery]:
        """The last KEEP_DELIVERIES deliveries of a webhook, oldest first (one bounded read)."""
        prefix = keys.webhook_delivery(hook_id)
        kvs, _ = await self.store._range(
            prefix, keys.prefix_end(prefix), limit=min(2 * KEEP_DELIVERIES, STORE_PAGE)
        )
        out = []
        for kv in kvs:
            d = Delivery.decode(kv.value)
            if d is not None:
                out.append(d)
        return out[-KEEP_DELIVERIES:]


def _moved(key: bytes, items: Sequence[tuple[str, str, QueuedEvent]]) -> list[Op]:
    """The writes that move outbox entry `key` into the queues of `items` (hook id, seq,
    event): each queued, the entry deleted."""
    return [*(Put(keys.webhook_queue(h, s), i.encode()) for h, s, i in items), Delete(key)]
