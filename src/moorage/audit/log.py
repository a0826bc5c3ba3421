"""The cluster-wide audit log, kept in etcd (issue #9 item 6).

Events live under their own prefix, outside the registry's keys (meta/keys.py):

    /moorage-audit/events/<unix µs, 17 digits>-<origin>-<sequence, 8 hex>   -> event (JSON)

`origin` names the writer (replica id and process id, or `cli.<random>` for a command), the
sequence counts its events: keys are unique and sort by time, so a time range is a key
range and a page resumes after the last key it returned (the opaque cursor is that key).

Writing never slows the operation it describes: `EtcdAuditLog.record` only appends to a
buffer in memory (the flusher encodes the events); the flusher writes the buffer every
`FLUSH_INTERVAL` (0.1 s) or as soon as `FLUSH_COUNT` events wait, one transaction per
batch. Security events (failed logins, account, permission and token changes, cluster
operations: everything but pushes, deletes and successful logins) are flushed at once.
While etcd cannot take them the events stay buffered (up to `BUFFER_MAX`) and the flush is
retried with backoff; an event that does not fit is written to the process log instead, in
full, with a warning. A retried batch rewrites the same keys, so a write that succeeded but
whose answer was lost makes no duplicate.

Retention (`trim`): events older than MOORAGE_AUDIT_MAX_AGE seconds (default 90 days) and
the oldest beyond MOORAGE_AUDIT_MAX_EVENTS (default 1,000,000) are deleted in bounded
batches, every MOORAGE_AUDIT_TRIM_INTERVAL seconds (default 600), by one replica at a time
(the one that takes the lease-backed lock `audit-trim` for that interval).

Reading the log, paged and bounded, is `moorage.audit.query`.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import os
import random
import re
import secrets
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from moorage.audit import DENIED, OK, AuditEvent, AuditSink
from moorage.errors import MoorageError
from moorage.meta import keys
from moorage.meta.base import TXN_BYTES, TXN_OPS, Delete, MetaStore, Put
from moorage.meta.cluster_store import ClusterStore

log = logging.getLogger("moorage.audit")

PREFIX = keys.AUDIT_EVENTS
END = keys.prefix_end(PREFIX)

FLUSH_INTERVAL = 0.1
FLUSH_COUNT = 256
BUFFER_MAX = 20_000
RETRY_FIRST, RETRY_MAX = 0.2, 5.0

DEFAULT_MAX_AGE = 90 * 24 * 3600.0
DEFAULT_MAX_EVENTS = 1_000_000
DEFAULT_TRIM_INTERVAL = 600.0
TRIM_BATCH = 500
TRIM_LOCK = "audit-trim"

#: Actions written in batches; every other one is a security event, flushed at once.
BATCHED = frozenset({"push", "delete", "pull"})

_FIELD_MAX = {"action": 64, "actor": 256, "target": 1024, "outcome": 16, "client": 128}
_DETAIL_ITEMS, _DETAIL_KEY, _DETAIL_VALUE = 32, 64, 1024
_ORIGIN = re.compile(r"[^0-9a-z.]")


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        log.warning("%s=%r is not a number; using %g", name, raw, default)
        return default
    return value if value > 0 else default


@dataclass(frozen=True)
class Retention:
    max_age: float = DEFAULT_MAX_AGE
    max_events: int = DEFAULT_MAX_EVENTS
    interval: float = DEFAULT_TRIM_INTERVAL

    @classmethod
    def from_env(cls) -> Retention:
        return cls(
            _env_number("MOORAGE_AUDIT_MAX_AGE", DEFAULT_MAX_AGE),
            int(_env_number("MOORAGE_AUDIT_MAX_EVENTS", DEFAULT_MAX_EVENTS)),
            _env_number("MOORAGE_AUDIT_TRIM_INTERVAL", DEFAULT_TRIM_INTERVAL),
        )


def _cut(value: object, limit: int) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def stored_form(event: AuditEvent) -> dict[str, Any]:
    """The event as it is stored: every field bounded (an actor name or a target comes from
    a request, and one event must never approach etcd's request limit)."""
    doc: dict[str, Any] = {
        name: _cut(getattr(event, name), limit) for name, limit in _FIELD_MAX.items()
    }
    if event.client is None:
        doc["client"] = None
    doc["at"] = float(event.at)
    items = list(event.detail.items())[:_DETAIL_ITEMS]
    doc["detail"] = {_cut(k, _DETAIL_KEY): _cut(v, _DETAIL_VALUE) for k, v in items}
    return doc


def urgent(event: AuditEvent) -> bool:
    """A security event, written at once: failed logins, account, permission and token
    changes, cluster operations (everything but pushes, deletes and successful logins)."""
    if event.action == "login":
        return event.outcome != OK
    return event.action not in BATCHED


def time_key(at: float) -> bytes:
    """The first key of events at or after `at` (unix seconds)."""
    micros = min(max(int(at * 1_000_000), 0), 10**17 - 1)
    return PREFIX + f"{micros:017d}".encode()


def origin_name(*parts: object) -> str:
    """A key-safe writer name: lowercase letters, digits and dots, at most 64."""
    return _ORIGIN.sub("", ".".join(str(p).lower() for p in parts))[:64] or "x"


class Keys:
    """Unique, time-ordered keys for one writer."""

    def __init__(self, origin: str) -> None:
        self.origin = origin_name(origin)
        self._seq = 0

    def next(self, at: float) -> bytes:
        self._seq = (self._seq + 1) % 2**32
        return time_key(at) + f"-{self.origin}-{self._seq:08x}".encode()


def encode(event: AuditEvent) -> bytes:
    try:
        doc = stored_form(event)
    except Exception:  # a field that is not what it says: keep what can be kept
        log.exception("audit event partly unreadable")
        doc = {"action": _cut(event.action, 64), "at": time.time(), "detail": {"error": "bad"}}
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


class EtcdAuditLog(AuditSink):
    """Events into the store, batched (see the module's docstring). Works over any
    MetaStore (etcd in production, the in-memory store in unit tests)."""

    def __init__(
        self,
        store: MetaStore,
        origin: str,
        *,
        flush_interval: float = FLUSH_INTERVAL,
        flush_count: int = FLUSH_COUNT,
        buffer_max: int = BUFFER_MAX,
        retention: Retention | None = None,
    ) -> None:
        self.store = store
        self.keys = Keys(origin)
        self.flush_interval = flush_interval
        self.flush_count = max(1, min(flush_count, TXN_OPS))
        self.buffer_max = buffer_max
        self.retention = retention or Retention.from_env()
        # (key, event): encoded by the flusher, off the request's path
        self.buffer: deque[tuple[bytes, AuditEvent]] = deque()
        self.dropped = 0
        self.written = 0
        self._pending = asyncio.Event()
        self._now = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._failing = False

    async def record(self, event: AuditEvent) -> None:
        try:
            if len(self.buffer) >= self.buffer_max:
                self.dropped += 1
                log.error(
                    "audit log buffer full (%d events; is etcd reachable?): event not kept "
                    "in the cluster's log: %s",
                    len(self.buffer),
                    event.json_line(),
                )
                return
            self.buffer.append((self.keys.next(event.at), event))
            self._pending.set()
            if urgent(event) or len(self.buffer) >= self.flush_count:
                self._now.set()
            self._start()
        except Exception:  # never into the operation the event describes
            log.exception("audit event not recorded: %s", event)

    def _start(self) -> None:
        if self._flusher is None or self._flusher.done():
            with contextlib.suppress(RuntimeError):  # no running loop: flushed by close()
                self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        delay = RETRY_FIRST
        while True:
            await self._pending.wait()
            if not self._now.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._now.wait(), self.flush_interval)
            self._pending.clear()
            self._now.clear()
            if await self.flush():
                delay = RETRY_FIRST
                continue
            self._pending.set()  # retry, later
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, RETRY_MAX)

    def _batch(self) -> list[tuple[bytes, bytes]]:
        batch: list[tuple[bytes, bytes]] = []
        size = 0
        for key, event in self.buffer:
            value = encode(event)
            if batch and (
                len(batch) >= self.flush_count or size + len(key) + len(value) > TXN_BYTES
            ):
                break
            batch.append((key, value))
            size += len(key) + len(value)
        return batch

    async def flush(self) -> bool:
        """Write what is buffered, one transaction per batch: True when all of it is in the
        store; False (the rest still buffered, in order) when the store refused."""
        while self.buffer:
            batch = self._batch()
            try:
                await self.store._txn([], [Put(k, v) for k, v in batch])
            except Exception as exc:  # StoreUnavailable, or anything: keep the events
                if not self._failing:
                    log.warning(
                        "audit log: %d event(s) wait for the store, retrying: %s",
                        len(self.buffer),
                        exc,
                    )
                self._failing = True
                return False
            for _ in batch:  # record() only appends: the batch is still the buffer's head
                self.buffer.popleft()
            self.written += len(batch)
            if self._failing:
                log.warning("audit log: the store takes events again")
                self._failing = False
        return True

    async def close(self, patience: float = 3.0) -> None:
        """Stop the flusher and write what is left (for up to `patience` seconds); what
        cannot be written goes to the process log."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), patience)
        for _, event in self.buffer:
            log.error("audit event not written to the cluster's log: %s", event.json_line())
        self.dropped += len(self.buffer)
        self.buffer.clear()

    async def _trim_loop(self) -> None:
        interval = self.retention.interval
        await asyncio.sleep(random.uniform(0, min(interval, 60.0)))
        while True:
            try:
                if await self._trim_turn(interval):
                    deleted = await trim(self.store, self.retention)
                    if deleted:
                        log.info("audit log: %d old event(s) trimmed", deleted)
            except MoorageError as exc:
                log.warning("audit log trim failed: %s", exc)
            except Exception:  # the job goes on: a later round may succeed
                log.exception("audit log trim failed")
            await asyncio.sleep(interval)

    async def _trim_turn(self, interval: float) -> bool:
        """Whether this writer trims this round: one replica per interval takes the lock
        (and leaves it to expire with its lease)."""
        if not isinstance(self.store, ClusterStore):
            return True
        ttl = max(1, int(interval) - 1)
        return await self.store.acquire_lock(TRIM_LOCK, self.keys.origin, ttl, time.time()) is None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The flusher and the retention job for as long as the block lasts; at the end,
        what is buffered is written."""
        self._start()
        trimmer = asyncio.create_task(self._trim_loop())
        try:
            yield
        finally:
            trimmer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await trimmer
            await self.close()


async def trim(
    store: MetaStore, retention: Retention, now: float | None = None, max_deletes: int = 200_000
) -> int:
    """Delete events older than the retention's age, then the oldest beyond its count, in
    transactions of at most TRIM_BATCH deletes (and at most `max_deletes` in one call; the
    next call goes on). Idempotent: replicas racing on the same keys do no harm."""
    now = time.time() if now is None else now
    batch = max(1, min(TRIM_BATCH, TXN_OPS))
    deleted = 0
    cutoff = time_key(now - retention.max_age)
    while deleted < max_deletes:
        kvs, _ = await store._range(PREFIX, cutoff, limit=batch, keys_only=True)
        if not kvs:
            break
        await store._txn([], [Delete(kv.key) for kv in kvs])
        deleted += len(kvs)
    excess = await store._count(PREFIX, END) - retention.max_events
    while excess > 0 and deleted < max_deletes:
        kvs, _ = await store._range(PREFIX, END, limit=min(batch, excess), keys_only=True)
        if not kvs:
            break
        await store._txn([], [Delete(kv.key) for kv in kvs])
        deleted += len(kvs)
        excess -= len(kvs)
    return deleted


async def write_now(store: MetaStore, events: Sequence[AuditEvent], origin: str = "cli") -> bool:
    """Write `events` at once, in one transaction (a command that ran an operation on the
    cluster's store itself: emergency repair, restore, repair). False, with a warning in
    the log, when the store refused: the operation is done, its event is not."""
    names = Keys(origin_name(origin, secrets.token_hex(4)))
    try:
        await store._txn([], [Put(names.next(e.at), encode(e)) for e in events])
    except Exception as exc:
        for e in events:
            log.warning("audit event not written to the cluster's log (%s): %s", exc, e.json_line())
        return False
    return True


def command_actor() -> tuple[str, str]:
    """(actor, client) of an operation a command ran on this host without credentials
    (emergency repair, restore): the operating-system user and the host name."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"local:{user}", socket.gethostname()


def login_recorder(sink: AuditSink) -> Callable[[str, str | None, bool], Awaitable[None]]:
    """The `on_login` callback of the password authenticator: every password check that
    ran (not the ones answered from its cache), ok or failed, with the client's address."""

    async def on_login(name: str, client: str | None, ok: bool) -> None:
        await sink.record(
            AuditEvent(
                "login",
                name,
                target=f"user:{name}",
                outcome=OK if ok else DENIED,
                client=client,
                detail={"method": "password"},
            )
        )

    return on_login
