"""The garbage collection protocol step by step, with the race placed exactly: a registry on
the in-memory store and real blob files, and a collection whose progress hook makes the
concurrent push happen between two of its steps (the replica tests race it for real)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from moorage.cluster import gc as cluster_gc
from moorage.errors import BlobUnknown, ManifestBlobUnknown
from moorage.meta import keys
from moorage.meta.base import Put
from moorage.meta.memory import MemoryMetaStore
from moorage.oci.digest import parse_digest
from moorage.registry import Registry, gc_result
from moorage.registry.gc import Collector, GcAborted, GcOptions, GcResult
from moorage.storage.filesystem import FilesystemStorage
from tests.oci import sha256

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


CONFIG = b'{"architecture":"amd64","os":"linux"}'
LAYER = b"a layer only this image has " * 400
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(CONFIG),
            "size": len(CONFIG),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": sha256(LAYER),
                "size": len(LAYER),
            }
        ],
    }
).encode()


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def push(registry: Registry, repo: str = "r") -> None:
    for blob in (CONFIG, LAYER):
        await registry.uploads.monolithic(repo, sha256(blob), _body(blob), len(blob))
    await registry.manifests.put(repo, "v1", MANIFEST, OCI_MANIFEST)


def registry_in(tmp_path: Path) -> Registry:
    return Registry(FilesystemStorage(tmp_path / "blobs"), MemoryMetaStore())


async def collect(
    registry: Registry, at_phase: str, action: Callable[[], Awaitable[None]]
) -> GcResult:
    """A grace-0 collection that runs `action` once, when it first reports `at_phase`."""
    fired = False

    async def progress(phase: str, counts: dict[str, int]) -> None:
        nonlocal fired
        if phase == at_phase and not fired:
            fired = True
            await action()

    collector = Collector(
        registry.meta, registry.storage, "run1", GcOptions(grace=0), progress=progress
    )
    result = await collector.run()
    assert fired, at_phase
    return result


async def present(registry: Registry, repo: str = "r") -> bool:
    """The image is whole: recorded, tagged, every blob linked and its bytes stored."""
    tag = await registry.meta.get_tag(repo, "v1")
    if tag is None:
        return False
    for digest in (sha256(CONFIG), sha256(LAYER), sha256(MANIFEST)):
        if await registry.storage.stat(digest) is None:
            return False
    return not await registry.meta.missing_blobs(repo, [sha256(CONFIG), sha256(LAYER)])


def test_a_push_committed_after_the_mark_is_rescued_by_the_recheck(tmp_path: Path) -> None:
    async def main() -> None:
        registry = registry_in(tmp_path)
        await push(registry)
        await registry.manifests.delete("r", sha256(MANIFEST))
        # after the mark at M (the storage scan), before the tombstones: pushed again
        result = await collect(registry, "storage", lambda: push(registry))
        assert result.blobs == 0
        # config and layer (the manifest's bytes too, unless the scan met them after the
        # push refreshed their time)
        assert result.rescued >= 2
        assert await present(registry)
        assert await registry.meta._get(keys.blob_tombstone(sha256(LAYER))) is None

    asyncio.run(main())


def test_a_manifest_put_after_the_tombstones_fails_cleanly(tmp_path: Path) -> None:
    async def main() -> None:
        registry = registry_in(tmp_path)
        await push(registry)
        await registry.manifests.delete("r", sha256(MANIFEST))
        refused: list[Exception] = []

        # Another image of the same blobs: the client saw them (HEAD), then GC tombstoned them.
        other = json.dumps({**json.loads(MANIFEST), "annotations": {"a": "b"}}).encode()

        async def late_manifest() -> None:
            try:
                await registry.manifests.put("r", "v2", other, OCI_MANIFEST)
            except ManifestBlobUnknown as exc:
                refused.append(exc)

        result = await collect(registry, "tombstones", late_manifest)
        assert len(refused) == 1
        assert sha256(LAYER) in str(refused[0])
        assert result.blobs == 3
        assert await registry.meta.get_tag("r", "v2") is None  # never acknowledged
        await push(registry)  # the client pushes again: whole
        assert await present(registry)

    asyncio.run(main())


def test_a_blob_uploaded_again_during_the_sweep_ends_present(tmp_path: Path) -> None:
    async def main() -> None:
        registry = registry_in(tmp_path)
        await push(registry)
        await registry.manifests.delete("r", sha256(MANIFEST))
        uploads: list[asyncio.Task[object]] = []

        async def upload_again() -> None:  # waits for the collection to finish the digest
            coro = registry.uploads.monolithic("r", sha256(LAYER), _body(LAYER), len(LAYER))
            uploads.append(asyncio.create_task(coro))
            await asyncio.sleep(0.3)
            assert not uploads[0].done()

        result = await collect(registry, "tombstones", upload_again)
        assert result.blobs == 3
        await uploads[0]
        assert await registry.storage.read_bytes(sha256(LAYER)) == LAYER
        assert await registry.meta.blob_size("r", sha256(LAYER)) == len(LAYER)

    asyncio.run(main())


@pytest.mark.parametrize("dead_run_found", ["unreferenced", "referenced"])
def test_a_dead_runs_tombstone_is_finished_or_cleared(tmp_path: Path, dead_run_found: str) -> None:
    async def main() -> None:
        registry = registry_in(tmp_path)
        await push(registry)
        if dead_run_found == "unreferenced":
            await registry.manifests.delete("r", sha256(MANIFEST))
        gc_store_tombstone = keys.blob_tombstone(sha256(LAYER))
        await registry.meta._txn([], [Put(gc_store_tombstone, b'{"run":"dead"}')])
        options = GcOptions(grace=3600)  # young: only the dead run's tombstone is due
        result = await Collector(registry.meta, registry.storage, "run2", options).run()
        assert await registry.meta._get(gc_store_tombstone) is None
        if dead_run_found == "unreferenced":
            assert result.blobs == 1
            assert await registry.storage.stat(sha256(LAYER)) is None
        else:
            assert result.blobs == 0
            assert await present(registry)

    asyncio.run(main())


def test_a_dead_runs_tombstone_keeps_pushes_out_but_not_pulls(tmp_path: Path) -> None:
    """A collection SIGKILLed between its tombstones and its re-check leaves a tombstone on
    a blob that a manifest acknowledged after its mark references. Until the next
    collection clears it (20 s at least: the dead run's lock lease), a pull (GET) still gets
    the blob, linked and stored (the chaos `gc` scenario once saw it as lost); a push's HEAD
    is told to upload, as while a live collection deletes it."""

    async def main() -> None:
        registry = registry_in(tmp_path)
        await push(registry)
        tombstone = keys.blob_tombstone(sha256(LAYER))
        await registry.meta._txn([], [Put(tombstone, b'{"run":"dead"}')])
        assert await registry.blobs.stat("r", sha256(LAYER), pull=True) == (
            parse_digest(sha256(LAYER)),
            len(LAYER),
        )
        assert (await registry.blobs.linked("r", sha256(LAYER), pull=True))[1] == len(LAYER)
        with pytest.raises(BlobUnknown):
            await registry.blobs.stat("r", sha256(LAYER))
        with pytest.raises(BlobUnknown):  # never linked there: no pull either
            await registry.blobs.stat("other", sha256(LAYER), pull=True)
        await Collector(registry.meta, registry.storage, "run2", GcOptions(grace=0)).run()
        assert await registry.meta._get(tombstone) is None
        assert (await registry.blobs.stat("r", sha256(LAYER)))[1] == len(LAYER)

    asyncio.run(main())


def test_a_dry_run_answers_during_a_collection(tmp_path: Path) -> None:
    """A dry run takes no lock: while a collection holds it (and has tombstoned the blobs) a
    dry run answers its report, writes nothing, and a second collection is still BUSY."""

    async def main() -> None:
        store = MemoryMetaStore()
        registry = Registry(FilesystemStorage(tmp_path / "blobs"), store)
        await push(registry)
        await registry.manifests.delete("r", sha256(MANIFEST))
        held = await cluster_gc.start(store, registry, GcOptions(grace=0), "replica-a")
        reports: list[dict[str, object]] = []

        async def dry_run() -> None:
            reports.append(await cluster_gc.dry_run(store, registry, GcOptions(grace=0), "b"))
            with pytest.raises(cluster_gc.GcBusy):
                await cluster_gc.start(store, registry, GcOptions(grace=0), "replica-b")

        await dry_run()  # the lock held, the run not started
        result = await collect(registry, "tombstones", dry_run)  # its tombstones standing
        assert result.blobs == 3
        assert [r["blobs"] for r in reports] == [3, 3]
        assert all(r["dry_run"] is True and r["replica_id"] == "b" for r in reports)
        for key in (keys.GC_LAST, keys.GC_PROGRESS):
            assert await store._get(key) is None
        await store.revoke_lease(held.lease)
        after = await cluster_gc.dry_run(store, registry, GcOptions(grace=0), "b")
        assert after["blobs"] == 0

    asyncio.run(main())


def test_the_mark_reads_manifests_in_batches_and_names_a_missing_one(tmp_path: Path) -> None:
    """More manifests than one read batch (`_READ_BATCH`), read off the event loop: every
    one's blobs are referenced; one whose bytes are gone stops the run, naming it."""

    async def main() -> None:
        registry = registry_in(tmp_path)
        await push(registry)
        doc = json.loads(MANIFEST)
        digests = []
        for i in range(150):
            body = json.dumps({**doc, "annotations": {"n": str(i)}}).encode()
            await registry.manifests.put("r", f"t{i}", body, OCI_MANIFEST)
            digests.append(sha256(body))
        result = await Collector(registry.meta, registry.storage, "run1", GcOptions(grace=0)).run()
        assert result.blobs == 0
        assert await present(registry)
        layout = registry.storage.layout  # type: ignore[attr-defined]
        layout.blob(digests[100]).unlink()
        with pytest.raises(GcAborted, match=digests[100]):
            await Collector(registry.meta, registry.storage, "run2", GcOptions(grace=0)).run()
        assert await present(registry)

    asyncio.run(main())


def test_the_recheck_reads_at_a_revision_a_quorum_read_gave(tmp_path: Path) -> None:
    """The re-check after the tombstones must see every write committed before them: it
    reads at the revision a quorum read gives (etcd refuses that revision on a member that
    has not reached it), never "now" on whichever member answers (a read that fell back to
    a lagging member's copy could miss a manifest and let its blob be deleted)."""

    class Recording(MemoryMetaStore):
        def __init__(self) -> None:
            super().__init__()
            self.reads: list[tuple[bytes, int]] = []

        async def _range(
            self, start: bytes, end: bytes, limit: int, keys_only: bool = False, revision: int = 0
        ) -> tuple[list[Any], bool]:
            self.reads.append((start, revision))
            return await super()._range(start, end, limit, keys_only, revision)

    async def main() -> None:
        meta = Recording()
        registry = Registry(FilesystemStorage(tmp_path / "blobs"), meta)
        await push(registry)
        await registry.manifests.delete("r", sha256(MANIFEST))
        result = await Collector(meta, registry.storage, "run1", GcOptions(grace=0)).run()
        assert result.blobs >= 2
        rechecks = [rev for start, rev in meta.reads if start in (keys.MANIFESTS, keys.GC_PENDING)]
        assert rechecks
        assert all(rev > 0 for rev in rechecks)

    asyncio.run(main())


def test_a_result_lists_the_repositories_that_free_the_most() -> None:
    """A scale probe's registry answered 232 KB for 1,267 repositories; one etcd value
    holds the result, so tens of thousands of them could not be stored at all (the command
    then said the run stopped without a result). Counts stay complete."""
    result = GcResult("r", False, 0.0, False, 0.0)
    for i in range(gc_result.MAX_REPOSITORIES + 500):
        result.add(f"repo/{i:05d}", f"sha256:{i:064x}", i)
    doc = result.to_json()
    assert len(doc["repositories"]) == gc_result.MAX_REPOSITORIES
    assert doc["repository_count"] == gc_result.MAX_REPOSITORIES + 500
    assert doc["repositories_truncated"] is True
    assert "repo/00000" not in doc["repositories"]  # frees the least
    assert f"repo/{gc_result.MAX_REPOSITORIES + 499:05d}" in doc["repositories"]
    assert list(doc["repositories"]) == sorted(doc["repositories"])
    small = GcResult("r", False, 0.0, False, 0.0)
    small.add("a", "sha256:" + "1" * 64, 5)
    assert small.to_json()["repositories_truncated"] is False
