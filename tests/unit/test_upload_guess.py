"""A blob upload while no garbage collection runs commits without reading the store and
links from a guess (registry/uploads.py, meta/link_hints.py); the bytes are checked after
the link, so a collection that deleted them meanwhile never leaves a link to nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from moorage.errors import BlobCollecting
from moorage.meta import keys
from moorage.meta.ops import Put
from moorage.registry import Registry
from moorage.storage.filesystem import FilesystemStorage
from tests.oci import sha256
from tests.unit.test_usage_counters import Guessing

pytestmark = pytest.mark.unit

DATA = b"a layer's bytes " * 300


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _registry(tmp_path: Path) -> tuple[Registry, Guessing]:
    store = Guessing()
    return Registry(FilesystemStorage(tmp_path / "blobs"), store), store


def test_an_upload_with_no_collection_running_links_in_one_transaction(tmp_path: Path) -> None:
    async def main() -> None:
        registry, store = _registry(tmp_path)
        blobs = [DATA + str(i).encode() for i in range(5)]
        for data in blobs:
            await registry.uploads.monolithic("team/app", sha256(data), _body(data), len(data))
        assert (store.txns, store.reads) == (5, 0)
        for data in blobs:
            assert await registry.storage.read_bytes(sha256(data)) == data
            assert await store.blob_size("team/app", sha256(data)) == len(data)

    asyncio.run(main())


def test_an_upload_while_a_collection_runs_reads_first(tmp_path: Path) -> None:
    async def main() -> None:
        registry, store = _registry(tmp_path)
        assert await store._txn([], [Put(keys.lock(keys.GC_LOCK), b"{}")])
        await registry.uploads.monolithic("team/app", sha256(DATA), _body(DATA), len(DATA))
        assert (store.txns, store.reads) == (2, 1)  # the lock's write, the link; its read
        assert await store.blob_size("team/app", sha256(DATA)) == len(DATA)

    asyncio.run(main())


def test_bytes_collected_between_the_commit_and_the_link_leave_no_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A collection that tombstoned the digest before the commit, deleted the bytes after
    it and cleared its tombstone before the link: the link goes, the client uploads again."""

    async def main() -> None:
        registry, store = _registry(tmp_path)
        storage = registry.storage
        commit_then_collect = storage.stat

        async def gone(digest: str) -> int | None:
            await storage.delete_blob(digest)
            return await commit_then_collect(digest)

        monkeypatch.setattr(storage, "stat", gone)
        with pytest.raises(BlobCollecting):
            await registry.uploads.monolithic("team/app", sha256(DATA), _body(DATA), len(DATA))
        assert await store.blob_size("team/app", sha256(DATA)) is None
        monkeypatch.undo()
        await registry.uploads.monolithic("team/app", sha256(DATA), _body(DATA), len(DATA))
        assert await storage.read_bytes(sha256(DATA)) == DATA
        assert await store.blob_size("team/app", sha256(DATA)) == len(DATA)

    asyncio.run(main())
