"""What a replica knows about the store that saves a blob link a round trip or a retry
(meta/usage.py `link`): the namespaces' counter shards and policies as this process last
read or wrote them, a lock per shard in use (`Counters`), and whether a garbage collection
may be running (`collection_quiet`). All of it is a guess checked by the link's guards:
wrong, it costs a retry, never a wrong count or a link to bytes being collected."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from moorage.errors import StoreUnavailable
from moorage.meta import keys
from moorage.meta.ops import KV, LAST_REVISION, Put

if TYPE_CHECKING:
    from moorage.meta.base import MetaStore

#: Counter shards (and namespace policies) whose value a process keeps: ~2 MiB at most.
KNOWN = 8192
QUIET_FOR = 1.0  # seconds `collection_quiet` trusts its last read


async def collection_quiet(store: MetaStore) -> bool:
    """True when, as read within the last QUIET_FOR seconds, no garbage collection holds its
    lock and no tombstone stands: a blob upload may then commit its bytes without reading
    the store first and link them from a guess (GUESS). Only for a store that answers a
    refused transaction's reads in the same request (etcd); never on error.

    A collection that started since the last read is caught by the link's own guard (the
    tombstone): the upload is then refused with BlobCollecting and sent again, as one that
    raced the collection between its read and its commit always was."""
    if getattr(store, "txn_else_get", None) is None:
        return False
    counters = counters_of(store)
    now = time.monotonic()
    if now < counters.quiet_until:
        return counters.quiet
    counters.quiet_until = now + QUIET_FOR  # one read per interval, whoever asks meanwhile
    try:
        lock = await store._get(keys.lock(keys.GC_LOCK))
        end = keys.prefix_end(keys.GC_DELETING)
        tombstones, _ = await store._range(keys.GC_DELETING, end, limit=1, keys_only=True)
    except StoreUnavailable:
        counters.quiet, counters.quiet_until = False, 0.0
        return False
    counters.quiet = lock is None and not tombstones
    return counters.quiet


class Counters:
    """The counter shards as this process last read or wrote them, one lock per shard.

    Concurrent links of one process used to pick their shard at random, so two of them often
    guarded the same one, and one failed and retried (another read and transaction: 1,600
    links at concurrency 16 took about 2,970 transactions). A link now adds to a shard that no
    other link of this process is writing if there is one, or waits for the one it read, and
    adds to the newest value known of it. A value another process changed since fails the
    guard: it is forgotten and the retry reads afresh, so this can cost a retry, never make a
    count wrong."""

    def __init__(self) -> None:
        self._known: dict[bytes, KV] = {}
        self._policies: dict[bytes, KV | None] = {}  # each namespace's policy as last read
        self.quiet = False  # no collection running, as read at `quiet_until - QUIET_FOR`
        self.quiet_until = 0.0
        # a lock per shard some link of this process is using, and how many links use it
        # (gone with the last one: as many entries as links in flight, at most)
        self._locks: dict[bytes, tuple[asyncio.Lock, int]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def choose(self, shards: list[bytes], pick: int, read: KV | None) -> int:
        """The shard read (`pick`), or while another link uses it, one that no link uses
        and whose value is known."""
        self._see(shards[pick], read)
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests): the old one's locks are gone
            self._loop, self._locks = loop, {}
        if shards[pick] in self._locks:
            free = [i for i, k in enumerate(shards) if k in self._known and k not in self._locks]
            if free:
                return random.choice(free)
        return pick

    @asynccontextmanager
    async def holding(self, key: bytes) -> AsyncIterator[KV | None]:
        """The shard's lock held; yields its newest value known."""
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield self._known.get(key)
        finally:
            held, users = self._locks.get(key, (None, 0))
            if held is lock and users > 1:
                self._locks[key] = (lock, users - 1)
            elif held is lock:
                del self._locks[key]

    def guess(self, pkey: bytes, shards: list[bytes]) -> tuple[int, tuple[KV | None, ...]]:
        """What a link of a blob just uploaded most likely finds (usage.LinkRead's fields):
        no link, no record of the blob in the namespace, no tombstone; the policy and a
        shard as last known here."""
        pick = random.randrange(len(shards))
        return pick, (None, None, self._policies.get(pkey), None, self._known.get(shards[pick]))

    def policy_seen(self, pkey: bytes, kv: KV | None) -> None:
        if len(self._policies) >= KNOWN:
            self._policies.clear()
        self._policies[pkey] = kv

    def wrote(self, put: Put, held: bool) -> None:
        """After the transaction: its write is the shard's newest value (at the revision the
        transaction committed at), or what was known of the shard was stale."""
        if held:
            self._see(put.key, KV(put.key, put.value, LAST_REVISION.get()))
        else:
            self._known.pop(put.key, None)

    def _see(self, key: bytes, kv: KV | None) -> None:
        old = self._known.get(key)
        if kv is not None and (old is None or kv.mod_revision > old.mod_revision):
            if len(self._known) >= KNOWN:
                self._known.clear()
            self._known[key] = kv


def counters_of(store: MetaStore) -> Counters:
    found = getattr(store, "_usage_counters", None)
    if not isinstance(found, Counters):
        found = Counters()
        store._usage_counters = found  # type: ignore[attr-defined]
    return found
