"""Concurrent blob links of one process add to the namespace's usage counter without
colliding on a counter shard (meta/link_hints.py `Counters`), and what a process knows of a
shard can only cost a retry when it is stale, never a wrong count."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from types import SimpleNamespace

import pytest

from moorage.errors import QuotaExceeded
from moorage.meta import keys, link_hints, usage
from moorage.meta.link_hints import collection_quiet, counters_of
from moorage.meta.memory import MemoryMetaStore
from moorage.meta.ops import KV, Delete, Guard, Op, Put
from moorage.meta.policy_records import PolicyRecord

pytestmark = pytest.mark.unit

SIZE = 4096


class SlowStore(MemoryMetaStore):
    """The in-memory store with a round trip's wait before each read and transaction, so
    concurrent links interleave as they do against etcd; counts transactions."""

    def __init__(self) -> None:
        super().__init__()
        self.txns = 0

    async def _get(self, key: bytes) -> KV | None:
        await asyncio.sleep(0.001)
        return await super()._get(key)

    async def _txn(self, guards: Sequence[Guard], ops: Sequence[Op]) -> bool:
        await asyncio.sleep(0.002)
        self.txns += 1
        return await super()._txn(guards, ops)


def _digests(n: int, salt: str = "") -> list[str]:
    return [f"sha256:{hashlib.sha256(f'{salt}{i}'.encode()).hexdigest()}" for i in range(n)]


async def _push_all(store: SlowStore, digests: list[str], concurrency: int = 16) -> None:
    left = iter(digests)

    async def pusher() -> None:
        for digest in left:
            read = await usage.read_link(store, "team/app", digest)
            await asyncio.sleep(0.002)  # the blob's commit, between the read and the link
            assert await store.link_blob("team/app", digest, SIZE, True, read)

    await asyncio.gather(*(pusher() for _ in range(concurrency)))


def test_concurrent_links_take_one_transaction_each_and_count_exactly() -> None:
    """Sixteen concurrent pushes into one namespace: no link retries (with shards picked at
    random, two links guarding one shard made one of them retry: 326 transactions for these
    160 links), and the total is exact."""

    async def main() -> None:
        store = SlowStore()
        await _push_all(store, _digests(160))
        assert store.txns == 160
        now = await usage.current(store, "team")
        assert (now.bytes, now.blobs) == (160 * SIZE, 160)
        assert counters_of(store)._locks == {}  # a lock lives while a link uses it

    asyncio.run(main())


def test_a_shard_changed_by_another_process_costs_a_retry_not_a_wrong_count() -> None:
    """Another replica adds to every shard behind this process's back (its known values are
    stale), and the store is then restored to revisions below what it knew: links still
    land, and the total counts everything."""

    async def main() -> None:
        store = SlowStore()
        await _push_all(store, _digests(32, "a"))
        shards = [keys.usage("team", k) for k in range(keys.USAGE_SHARDS)]
        for shard in shards:  # another process: one more blob of 1 byte on each shard
            kv = await store._get(shard)
            guard, put = usage._add(shard, kv, 1, 1)
            assert await store._txn([guard], [put])
        await _push_all(store, _digests(32, "b"))
        counters = counters_of(store)
        for shard in shards:  # known from a store whose revisions ran higher
            counters._known[shard] = KV(shard, b'{"bytes": 0, "blobs": 0}', 10**9)
        await _push_all(store, _digests(32, "c"))
        now = await usage.current(store, "team")
        n = keys.USAGE_SHARDS
        assert (now.bytes, now.blobs) == (96 * SIZE + n, 96 + n)

    asyncio.run(main())


def test_a_failed_link_releases_its_shard() -> None:
    """A link whose transaction raises leaves the shard's lock free: the next links on
    that shard go through."""

    class Failing(SlowStore):
        fail = True

        async def _txn(self, guards: Sequence[Guard], ops: Sequence[Op]) -> bool:
            if self.fail and any(isinstance(op, Put) and b"/usage/" in op.key for op in ops):
                self.fail = False
                raise RuntimeError("the store failed")
            return await super()._txn(guards, ops)

    async def main() -> None:
        store = Failing()
        with pytest.raises(RuntimeError):
            await store.link_blob("team/app", _digests(1, "x")[0], SIZE, True)
        await asyncio.wait_for(_push_all(store, _digests(16, "y"), concurrency=4), 10)
        assert (await usage.current(store, "team")).blobs == 16

    asyncio.run(main())


class Guessing(SlowStore):
    """A store that answers a refused transaction's reads with it, as etcd does: uploads
    then link from a guess while no collection runs (meta/link_hints.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def _get_many(self, keys_: Sequence[bytes]) -> list[KV | None]:
        self.reads += 1
        return await super()._get_many(keys_)

    async def txn_else_get(
        self, guards: Sequence[Guard], ops: Sequence[Op], reads: Sequence[bytes]
    ) -> tuple[bool, list[KV | None]]:
        if await self._txn(guards, ops):
            return True, []
        return False, [await MemoryMetaStore._get(self, k) for k in reads]


def test_a_guessed_link_takes_one_transaction_and_no_read() -> None:
    """While no collection runs, a new blob's link is one transaction; a wrong guess (the
    blob linked elsewhere in the namespace, a policy the guess did not know, a tombstone)
    costs the refused transaction, whose reads the retry starts from, never a wrong count."""

    async def main() -> None:
        store = Guessing()
        assert await collection_quiet(store)
        digests = _digests(40)
        for digest in digests:
            assert await store.link_blob("team/app", digest, SIZE, True, usage.GUESS)
        assert (store.txns, store.reads) == (40, 0)
        for digest in digests[:10]:  # counted in the namespace already: the guess is wrong
            assert await store.link_blob("team/other", digest, SIZE, True, usage.GUESS)
        assert (store.txns, store.reads) == (60, 0)
        now = await usage.current(store, "team")
        assert (now.bytes, now.blobs) == (40 * SIZE, 40)
        policy = PolicyRecord("team", quota=41 * SIZE).encode()  # not known here yet
        assert await store._txn([], [Put(keys.policy("team"), policy)])
        assert await store.link_blob("team/app", _digests(1, "q")[0], SIZE, True, usage.GUESS)
        with pytest.raises(QuotaExceeded):
            await store.link_blob("team/app", _digests(1, "r")[0], SIZE, True, usage.GUESS)
        doomed = _digests(1, "gc")[0]
        assert await store._txn([], [Put(keys.blob_tombstone(doomed), b'{"run": "r"}')])
        assert not await store.link_blob("team/app", doomed, SIZE, True, usage.GUESS)
        assert (await usage.current(store, "team")).blobs == 41

    asyncio.run(main())


def test_collection_quiet_reads_the_lock_and_the_tombstones_once_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Quiet only with neither the collection's lock nor a tombstone, re-read once per
    QUIET_FOR; a store that cannot answer reads with a refused transaction never is."""
    clock = [1000.0]
    monkeypatch.setattr(link_hints, "time", SimpleNamespace(monotonic=lambda: clock[0]))

    async def main() -> None:
        assert not await collection_quiet(MemoryMetaStore())
        store = Guessing()
        assert await collection_quiet(store)
        lock = keys.lock(keys.GC_LOCK)
        assert await store._txn([], [Put(lock, b"{}")])
        assert await collection_quiet(store)  # as read less than QUIET_FOR ago
        clock[0] += link_hints.QUIET_FOR
        assert not await collection_quiet(store)
        tombstone = keys.blob_tombstone("sha256:" + "a" * 64)
        assert await store._txn([], [Delete(lock), Put(tombstone, b"{}")])
        clock[0] += link_hints.QUIET_FOR
        assert not await collection_quiet(store)
        assert await store._txn([], [Delete(tombstone)])
        clock[0] += link_hints.QUIET_FOR
        assert await collection_quiet(store)

    asyncio.run(main())
