"""A manifest deleted by digest while clients keep pushing it again: every re-push revises
its record, so the delete's guarded transaction keeps failing. After its retries (jittered,
so a steady stream of pushes does not starve it in lockstep) the delete answers a
`StoreUnavailable` (503 with Retry-After: retry), never a bare RuntimeError (a 500 a probe
saw for up to 59 of 205 deletes under 24 concurrent re-pushes)."""

from __future__ import annotations

import asyncio

import pytest

from moorage.errors import StoreUnavailable
from moorage.meta import keys
from moorage.meta.memory import MemoryMetaStore
from moorage.meta.ops import Put
from moorage.meta.records import ManifestRecord
from moorage.oci import mediatypes as mt

DIGEST = "sha256:" + "a" * 64


class _RepushedStore(MemoryMetaStore):
    """Every read of the manifest's record is followed by a push of it again (its revision
    moves) before the reader's transaction."""

    async def _get(self, key: bytes) -> object:  # type: ignore[override]
        found = await super()._get(key)
        if key == keys.manifest("r/x", DIGEST) and found is not None:
            record = ManifestRecord(DIGEST, mt.OCI_MANIFEST, 10)
            tag = record.tag_record()
            await self._txn(
                [], [Put(key, record.encode()), Put(keys.tag("r/x", "t"), tag.encode())]
            )
        return found


def test_a_delete_outrun_by_repushes_is_a_retryable_unavailable() -> None:
    store = _RepushedStore()

    async def run() -> None:
        record = ManifestRecord(DIGEST, mt.OCI_MANIFEST, 10)
        await store._txn(
            [],
            [
                Put(keys.manifest("r/x", DIGEST), record.encode()),
                Put(keys.tag("r/x", "t"), record.tag_record().encode()),
            ],
        )
        with pytest.raises(StoreUnavailable, match="pushed again while it was deleted"):
            await store.delete_manifest("r/x", DIGEST)
        # Nothing was half deleted: the manifest and its tag are both there.
        assert await MemoryMetaStore._get(store, keys.manifest("r/x", DIGEST)) is not None
        assert await MemoryMetaStore._get(store, keys.tag("r/x", "t")) is not None

    asyncio.run(run())
