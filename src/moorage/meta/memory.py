"""An in-memory store with etcd's semantics, for fast unit tests of the layers above."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from moorage.meta.base import KV, LAST_REVISION, MUST_EXIST, Delete, Guard, MetaStore, Op, Put


class MemoryMetaStore(MetaStore):
    def __init__(self) -> None:
        self._data: dict[bytes, KV] = {}
        self._keys: list[bytes] = []
        self._revision = 1

    async def _get(self, key: bytes) -> KV | None:
        return self._data.get(key)

    async def _range(
        self, start: bytes, end: bytes, limit: int = 0, keys_only: bool = False
    ) -> tuple[list[KV], bool]:
        lo = bisect.bisect_left(self._keys, start)
        hi = bisect.bisect_left(self._keys, end)
        selected = [self._data[k] for k in self._keys[lo:hi]]
        if limit and len(selected) > limit:
            return selected[:limit], True
        return selected, False

    async def _txn(self, guards: Sequence[Guard], ops: Sequence[Op]) -> bool:
        for key, rev in guards:
            kv = self._data.get(key)
            if rev == MUST_EXIST:
                if kv is None:
                    return False
            elif (kv.mod_revision if kv else 0) != rev:
                return False
        self._revision += 1
        LAST_REVISION.set(self._revision)
        for op in ops:
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
