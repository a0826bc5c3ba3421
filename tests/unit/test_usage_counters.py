"""Concurrent blob links of one process add to the namespace's usage counter without
colliding on a counter shard (meta/usage.py `_Counters`), and what a process knows of a
shard can only cost a retry when it is stale, never a wrong count."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence

import pytest

from moorage.meta import keys, usage
from moorage.meta.memory import MemoryMetaStore
from moorage.meta.ops import KV, Guard, Op, Put

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
        assert usage._counters(store)._locks == {}  # a lock lives while a link uses it

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
        counters = usage._counters(store)
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
