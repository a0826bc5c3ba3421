"""The etcd watch behind the tag cache (moorage.meta.tag_cache): every change under the tags
prefix with the value it replaced, and progress on request. Beside meta/etcd.py and
meta/etcd_watch.py, a module allowed to speak to the etcd client (pyproject's contract)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import grpc
from aetcd import rpc

from moorage.errors import StoreUnavailable, own_cancellation
from moorage.meta import keys
from moorage.meta.etcd import _UNAVAILABLE, EtcdMetaStore
from moorage.meta.etcd_watch import WatchClosed as WatchClosed

_DELETE = 1  # mvccpb.Event.EventType.DELETE
#: How long the member may take to create the watch.
OPEN_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class TagEvent:
    key: bytes
    revision: int
    value: bytes | None  # None: the tag was deleted
    previous: bytes | None  # None: the tag was created (no value before)


class TagWatch:
    """One watch stream on `keys.TAGS`. `open` returns the revision it starts after; `next`
    the next batch of events and the revision every change up to which has been delivered.

    Progress without events comes only from the watch's own periodic notifications
    (`progress_notify`, every `--experimental-watch-progress-notify-interval`, which the
    replica sets for its etcd). etcd sends one only while the watch has every change up to
    its revision queued before it, on the same channel as the events. Never from an explicit
    progress request: etcd 3.4 answers one (watch id -1) on a channel of its own with its
    current revision, which can overtake events still queued for the watch (a cache then
    vouched for a re-point it had not applied: a stale tag served after its 201)."""

    def __init__(self, store: EtcdMetaStore) -> None:
        self.store = store
        self._call: Any = None
        self.watch_id: int | None = None

    async def open(self) -> int:
        client = self.store._client
        await client.connect()
        self._call = rpc.WatchStub(client.channel).Watch(metadata=client.metadata)
        create = rpc.WatchCreateRequest(
            key=keys.TAGS, range_end=keys.prefix_end(keys.TAGS), prev_kv=True, progress_notify=True
        )
        try:
            async with asyncio.timeout(OPEN_SECONDS), self._guarded():
                await self._call.write(rpc.WatchRequest(create_request=create))
                resp = await self._call.read()
        except TimeoutError:
            # A member that never answers (paused, stuck catching up) would keep the cache
            # off for good: the session starts over instead, as after any store failure.
            self.close()
            raise StoreUnavailable(
                f"{_UNAVAILABLE}: the tag watch was not created within {OPEN_SECONDS:g} s"
            ) from None
        if resp is grpc.aio.EOF or not resp.created or resp.canceled:
            raise StoreUnavailable(f"{_UNAVAILABLE}: the tag watch was refused")
        self.watch_id = int(resp.watch_id)
        return int(resp.header.revision)

    async def next(self) -> tuple[list[TagEvent], int]:
        async with self._guarded():
            resp = await self._call.read()
        if resp is grpc.aio.EOF or resp.canceled or resp.compact_revision:
            why = "compacted" if resp is not grpc.aio.EOF and resp.compact_revision else "ended"
            raise StoreUnavailable(f"{_UNAVAILABLE}: the tag watch {why}")
        events = [
            TagEvent(
                key=bytes(e.kv.key),
                revision=int(e.kv.mod_revision),
                value=None if e.type == _DELETE else bytes(e.kv.value),
                previous=bytes(e.prev_kv.value) if e.HasField("prev_kv") else None,
            )
            for e in resp.events
        ]
        return events, progress_of(resp, events, self.watch_id)

    def close(self) -> None:
        if self._call is not None:
            self._call.cancel()

    def _guarded(self) -> _Translated:
        return _Translated()


def progress_of(resp: Any, events: list[TagEvent], watch_id: int | None) -> int:
    """The revision up to which `resp` shows every change delivered: the newest of its
    events; for a response without events, its header's revision when it is this watch's own
    progress notification, else 0 (nothing: an answer to a progress request, which etcd 3.4
    may send ahead of events still queued; see TagWatch)."""
    if events:
        return max(e.revision for e in events)
    if watch_id is not None and int(resp.watch_id) == watch_id:
        return int(resp.header.revision)
    return 0


async def member_lease(store: EtcdMetaStore, key: bytes) -> int | None:
    """The lease a member key is on, by a quorum read (never a member's own copy): None when
    the key is gone (its lease revoked or expired)."""
    resp = await store._quorum_read(rpc.RangeRequest(key=key))
    return int(resp.kvs[0].lease) if resp.kvs else None


async def read_members(store: EtcdMetaStore, page: int = 256) -> list[tuple[bytes, bytes]]:
    """Every tag cache member key and value, by quorum reads only (never a member's local
    copy, which may lack a member registered just before a change): StoreUnavailable when
    etcd cannot answer such a read."""
    out: list[tuple[bytes, bytes]] = []
    start, end = keys.TAG_CACHE_MEMBERS, keys.prefix_end(keys.TAG_CACHE_MEMBERS)
    while True:
        request = rpc.RangeRequest(key=start, range_end=end, limit=page)
        resp = await store._quorum_read(request)  # an election is waited out
        out += [(bytes(kv.key), bytes(kv.value)) for kv in resp.kvs]
        if not resp.more or not resp.kvs:
            return out
        start = bytes(resp.kvs[-1].key) + b"\x00"


class _Translated:
    """gRPC failures of the stream become StoreUnavailable."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, grpc.aio.AioRpcError):
            detail = exc.details() or exc.code().name
            raise StoreUnavailable(f"{_UNAVAILABLE}: {detail}") from exc
        if isinstance(exc, asyncio.InvalidStateError):  # written after the stream closed
            raise StoreUnavailable(f"{_UNAVAILABLE}: the tag watch closed") from exc
        if isinstance(exc, asyncio.CancelledError) and not own_cancellation():
            # grpc cancelled the call: its channel was closed (EtcdMetaStore.reopen retires
            # channels); the cache watches again on the new one (`_resume`)
            raise WatchClosed(f"{_UNAVAILABLE}: the tag watch's channel was closed")
