"""An in-memory store with etcd's semantics, for fast unit tests of the layers above.

tests/test_store_contract.py runs the same cases against it and against etcd, so what
passes here holds there. Leases end only when revoked (no clock): tests revoke them.

Like etcd it can refuse a transaction with too many guards or operations (`max_txn_ops`)
and answer a read with fewer keys than asked once `page_bytes` of values are reached,
so tests can check that the layers above stay within both bounds.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from moorage.errors import StoreUnavailable
from moorage.meta.base import KV, LAST_REVISION, MUST_EXIST, Delete, Guard, Op, Put
from moorage.meta.cluster_store import ClusterStore


class MemoryMetaStore(ClusterStore):
    def __init__(self, max_txn_ops: int = 1024, page_bytes: int = 0) -> None:
        self._data: dict[bytes, KV] = {}
        self._keys: list[bytes] = []
        self._revision = 1
        self.max_txn_ops = max_txn_ops
        self.page_bytes = page_bytes
        self.largest_read = 0  # the most keys one read returned
        self._leases: dict[int, set[bytes]] = {}  # lease -> the keys it holds
        self._next_lease = 1

    async def _get(self, key: bytes) -> KV | None:
        return self._data.get(key)

    async def _range(
        self, start: bytes, end: bytes, limit: int, keys_only: bool = False, revision: int = 0
    ) -> tuple[list[KV], bool]:
        if limit <= 0:
            raise ValueError("unbounded read")
        if revision and revision != self._revision:  # no history kept: as if compacted
            raise StoreUnavailable(f"required revision {revision} has been compacted")
        lo = bisect.bisect_left(self._keys, start)
        hi = bisect.bisect_left(self._keys, end)
        selected: list[KV] = []
        size = 0
        for k in self._keys[lo : min(hi, lo + limit)]:
            kv = self._data[k]
            size += len(k) + (0 if keys_only else len(kv.value))
            if selected and self.page_bytes and size > self.page_bytes:
                break
            selected.append(kv)
        self.largest_read = max(self.largest_read, len(selected))
        return selected, lo + len(selected) < hi

    async def _txn(self, guards: Sequence[Guard], ops: Sequence[Op]) -> bool:
        if len(guards) > self.max_txn_ops or len(ops) > self.max_txn_ops:
            raise StoreUnavailable("etcdserver: too many operations in txn request")
        if not self._hold(guards):
            return False
        self._revision += 1
        LAST_REVISION.set(self._revision)
        for op in ops:
            for held in self._leases.values():  # like etcd: a write detaches a key
                held.discard(op.key)
            if isinstance(op, Put):
                if op.key not in self._data:
                    bisect.insort(self._keys, op.key)
                self._data[op.key] = KV(op.key, op.value, self._revision)
            elif isinstance(op, Delete) and op.key in self._data:
                del self._data[op.key]
                self._keys.remove(op.key)
        return True

    async def revision(self) -> int:
        return self._revision

    async def close(self) -> None:
        return None

    async def grant_lease(self, ttl: int) -> int:
        lease, self._next_lease = self._next_lease, self._next_lease + 1
        self._leases[lease] = set()
        return lease

    async def revoke_lease(self, lease: int) -> None:
        held = self._leases.pop(lease, set())
        await self._txn([], [Delete(k) for k in sorted(held)])

    async def keep_alive(self, lease: int) -> bool:
        return lease in self._leases

    async def put_with_lease(self, key: bytes, value: bytes, lease: int) -> None:
        if lease not in self._leases:
            raise StoreUnavailable("etcdserver: requested lease not found")
        await self._txn([], [Put(key, value)])
        self._leases[lease].add(key)

    def _hold(self, guards: Sequence[Guard]) -> bool:
        for key, rev in guards:
            kv = self._data.get(key)
            if rev == MUST_EXIST:
                if kv is None:
                    return False
            elif (kv.mod_revision if kv else 0) != rev:
                return False
        return True

    async def _create_leased(
        self, key: bytes, value: bytes, lease: int, guards: Sequence[Guard] = ()
    ) -> bool:
        if key in self._data or not self._hold(guards):
            return False
        await self.put_with_lease(key, value, lease)
        return True
