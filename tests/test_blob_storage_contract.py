"""The blob storage contract: the same cases on the filesystem driver and on S3 (a real
SeaweedFS gateway on loopback), so what the registry relies on holds on both.

Each case gets a `make` that opens another instance of the same storage: a second call is
another replica (its own connections, no shared memory), which is how uploads that move
between replicas are tested.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from harness.process import free_port
from harness.seaweed import SeaweedFS

from moorage.errors import (
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    StorageUnavailable,
    UploadBusy,
)
from moorage.meta.memory import MemoryMetaStore
from moorage.registry.uploads import Uploads
from moorage.storage import open_blob_storage
from moorage.storage import s3 as s3_driver
from moorage.storage.base import BlobStorage
from moorage.storage.s3 import S3Storage
from moorage.storage.s3location import parse

T = TypeVar("T")
Make = Callable[[], BlobStorage]
UPLOAD = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"
MiB = 1024 * 1024


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(params=["filesystem", "s3"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Make:
    if request.param == "filesystem":
        root = tmp_path / "blobs"
        return lambda: open_blob_storage(str(root))
    url: str = request.getfixturevalue("s3_url")
    return lambda: open_blob_storage(url)


def run(make: Make, scenario: Callable[..., Coroutine[Any, Any, T]], replicas: int = 1) -> T:
    """Run `scenario(storage, ...)` with `replicas` instances, closed at the end."""

    async def main() -> T:
        stores = [make() for _ in range(replicas)]
        try:
            return await scenario(*stores)
        finally:
            for s in stores:
                await s.close()

    return asyncio.run(main())


async def read_all(
    s: BlobStorage, digest: str, offset: int = 0, length: int | None = None
) -> bytes:
    return b"".join([c async for c in s.read(digest, offset, length)])


async def append(s: BlobStorage, upload_id: str, data: bytes, piece: int = 256 * 1024) -> int:
    handle = await s.open_upload(upload_id)
    try:
        writer = await handle.append(None)
        for i in range(0, len(data), piece):
            await writer.write(data[i : i + piece])
        return await writer.close()
    finally:
        await handle.release()


async def everything(s: BlobStorage) -> list[tuple[str, int]]:
    return sorted((d, size) for batch in [b async for b in s.blobs()] for d, size, _ in batch)


async def start_upload(s: BlobStorage, upload_id: str) -> None:
    """A chunked upload's start: the created session is stored when released."""
    await (await s.create_upload(upload_id)).release()


def session_objects(seaweed: SeaweedFS, s: BlobStorage) -> list[str]:
    """What an S3 store keeps under uploads/ (nothing to look at on the filesystem)."""
    if not isinstance(s, S3Storage):
        return []
    return seaweed.keys(s.layout.uploads)


# -- committed blobs ------------------------------------------------------------------
def test_committed_blobs_stat_read_list_delete(make: Make) -> None:
    small, big = b"manifest", os.urandom(3 * MiB + 5)

    async def scenario(s: BlobStorage) -> None:
        assert await s.stat(sha256(small)) is None
        assert await s.read_bytes(sha256(small)) is None
        assert await s.modified(sha256(small)) is None
        await s.put_bytes(sha256(small), small)
        await s.put_bytes(sha256(big), big)
        assert await s.stat(sha256(small)) == len(small)
        assert await s.read_bytes(sha256(small)) == small
        assert await everything(s) == sorted([(sha256(small), 8), (sha256(big), len(big))])
        # Streamed in pieces, whole or by range.
        pieces = [c async for c in s.read(sha256(big))]
        assert b"".join(pieces) == big
        assert len(pieces) >= 3
        assert await read_all(s, sha256(big), 0, 1) == big[:1]
        assert await read_all(s, sha256(big), MiB - 3, MiB + 7) == big[MiB - 3 : 2 * MiB + 4]
        assert await read_all(s, sha256(big), len(big) - 10) == big[-10:]
        assert await read_all(s, sha256(big), 5, 0) == b""
        assert await s.delete_blob(sha256(big)) == len(big)
        assert await s.delete_blob(sha256(big)) is None
        assert await s.stat(sha256(big)) is None
        with pytest.raises(DigestInvalid):
            await s.stat("sha256:../../etc")

    run(make, scenario)


def test_read_many_returns_each_body_in_order_none_for_a_missing_one(make: Make) -> None:
    # More digests than the S3 driver reads at once (READ_MANY_CONCURRENCY).
    bodies = [f"manifest {i}".encode() for i in range(40)]
    absent = sha256(b"never stored")

    async def scenario(s: BlobStorage) -> None:
        for body in bodies:
            await s.put_bytes(sha256(body), body)
        digests = [sha256(b) for b in bodies]
        got = await s.read_many([*digests[:20], absent, *digests[20:]])
        assert got == [*bodies[:20], None, *bodies[20:]]
        assert await s.read_many([]) == []

    run(make, scenario)


def test_delete_blobs_and_modified_many_answer_in_order_none_for_a_missing_one(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Garbage collection's batches: more digests than the S3 driver sends at once, and on
    # S3 more than one DeleteObjects request.
    monkeypatch.setattr(s3_driver, "DELETE_BATCH", 7)
    bodies = [f"garbage {i}".encode() * (i + 1) for i in range(30)]
    kept = b"still referenced"
    absent = sha256(b"never stored")

    async def scenario(s: BlobStorage) -> None:
        for body in [*bodies, kept]:
            await s.put_bytes(sha256(body), body)
        digests = [sha256(b) for b in bodies]
        times = await s.modified_many([*digests[:10], absent, *digests[10:]])
        assert times[10] is None
        assert all(t is not None and abs(t - time.time()) < 600 for t in times[:10] + times[11:])
        assert await s.modified_many([]) == []
        sizes = await s.delete_blobs([*digests[:10], absent, *digests[10:]])
        assert sizes == [*(len(b) for b in bodies[:10]), None, *(len(b) for b in bodies[10:])]
        assert await everything(s) == [(sha256(kept), len(kept))]
        assert await s.delete_blobs(digests) == [None] * len(digests)
        assert await s.delete_blobs([]) == []
        # Sizes a listing gave are trusted (garbage collection's sweep): no HEAD needed.
        again = [sha256(b) for b in bodies[:9]]
        for body in bodies[:9]:
            await s.put_bytes(sha256(body), body)
        listed = {d: size async for page in s.blobs() for d, size, _ in page}
        assert await s.delete_blobs([*again, absent], listed) == [
            *(len(b) for b in bodies[:9]),
            None,
        ]
        assert await everything(s) == [(sha256(kept), len(kept))]

    run(make, scenario)


def test_storing_a_blob_again_refreshes_its_modification_time(make: Make) -> None:
    async def scenario(s: BlobStorage) -> tuple[float, float]:
        await s.put_bytes(sha256(b"x"), b"x")
        first = await s.modified(sha256(b"x"))
        await asyncio.sleep(1.1)  # S3 keeps modification times to the second
        await s.put_bytes(sha256(b"x"), b"x")
        second = await s.modified(sha256(b"x"))
        assert first is not None
        assert second is not None
        return first, second

    first, second = run(make, scenario)
    assert second > first


# -- uploads --------------------------------------------------------------------------
def test_chunks_of_any_size_resume_on_another_replica(make: Make, seaweed: SeaweedFS) -> None:
    sizes = [1, 4 * MiB, 5 * MiB + 1, 12 * MiB]
    data = os.urandom(sum(sizes))

    async def scenario(a: BlobStorage, b: BlobStorage) -> None:
        await (await a.create_upload(UPLOAD, "lib/x")).release()
        offset = 0
        for i, size in enumerate(sizes):
            replica = (a, b)[i % 2]
            assert await append(replica, UPLOAD, data[offset : offset + size]) == offset + size
            offset += size
            assert await (a, b)[(i + 1) % 2].upload_size(UPLOAD) == offset
        assert await b.upload_repo(UPLOAD) == "lib/x"
        handle = await a.open_upload(UPLOAD)
        try:
            assert handle.size == len(data)
            # The digest read back from storage (no hasher saw every byte here).
            assert "sha256:" + await handle.hash("sha256") == sha256(data)
            await handle.commit(sha256(data))
        finally:
            await handle.release()
        assert await b.stat(sha256(data)) == len(data)
        assert await read_all(b, sha256(data)) == data
        assert await b.upload_size(UPLOAD) is None
        with pytest.raises(BlobUploadUnknown):
            await b.open_upload(UPLOAD)

    run(make, scenario, replicas=2)
    assert session_objects(seaweed, make()) == []


def test_a_streamed_hash_needs_no_read_back_and_small_blobs_commit(make: Make) -> None:
    async def scenario(s: BlobStorage) -> None:
        for body in (b"", b"tiny", os.urandom(9 * MiB)):
            handle = await s.create_upload(UPLOAD)
            hasher = hashlib.sha256()
            writer = await handle.append(hasher)
            await writer.write(body)
            assert await writer.close() == len(body)
            assert "sha256:" + hasher.hexdigest() == sha256(body)
            await handle.commit(sha256(body))
            await handle.release()
            assert await read_all(s, sha256(body)) == body
            # The same bytes again: the blob is kept, the session ends.
            handle = await s.create_upload(OTHER)
            writer = await handle.append(None)
            await writer.write(body)
            await writer.close()
            await handle.commit(sha256(body))
            await handle.release()
            assert await s.upload_size(OTHER) is None
            assert await s.stat(sha256(body)) == len(body)

    run(make, scenario)


def test_one_request_at_a_time_holds_a_session_on_every_replica(make: Make) -> None:
    async def scenario(a: BlobStorage, b: BlobStorage) -> None:
        await (await a.create_upload(UPLOAD)).release()
        await append(a, UPLOAD, b"abc")
        held = await a.open_upload(UPLOAD)
        try:
            for replica in (a, b):
                with pytest.raises(UploadBusy) as busy:
                    await replica.open_upload(UPLOAD)
                assert busy.value.current_size == 3
            await (await b.create_upload(OTHER)).release()
            await (await b.open_upload(OTHER)).release()  # another session is free
        finally:
            await held.release()
        await held.release()  # twice is harmless
        assert await append(b, UPLOAD, b"d") == 4
        with pytest.raises(BlobUploadUnknown):
            await b.open_upload("9" * 32)
        assert await b.upload_size("9" * 32) is None
        assert await b.upload_repo("9" * 32) is None

    run(make, scenario, replicas=2)


def test_an_aborted_writer_leaves_the_session_as_it_was(make: Make) -> None:
    kept = os.urandom(6 * MiB)
    more = os.urandom(3 * MiB)

    async def scenario(s: BlobStorage) -> None:
        await (await s.create_upload(UPLOAD)).release()
        await append(s, UPLOAD, kept)
        handle = await s.open_upload(UPLOAD)
        try:
            writer = await handle.append(None)
            await writer.write(os.urandom(20 * MiB))  # parts went out meanwhile on S3
            await writer.abort()
            await writer.abort()
            assert handle.size == len(kept)
        finally:
            await handle.release()
        assert await s.upload_size(UPLOAD) == len(kept)
        await append(s, UPLOAD, more)
        handle = await s.open_upload(UPLOAD)
        try:
            assert "sha256:" + await handle.hash("sha256") == sha256(kept + more)
            await handle.commit(sha256(kept + more))
        finally:
            await handle.release()
        assert await read_all(s, sha256(kept + more)) == kept + more

    run(make, scenario)


def test_cancel_ends_the_session_and_drops_its_bytes(make: Make, seaweed: SeaweedFS) -> None:
    async def scenario(s: BlobStorage) -> None:
        await (await s.create_upload(UPLOAD, "r")).release()
        await append(s, UPLOAD, os.urandom(9 * MiB))  # a multipart upload on S3
        handle = await s.open_upload(UPLOAD)
        try:
            await handle.delete()
            await handle.delete()
            with pytest.raises(BlobUploadUnknown):
                await handle.append(None)
            with pytest.raises(BlobUploadUnknown):
                await handle.commit(sha256(b""))
        finally:
            await handle.release()
        with pytest.raises(BlobUploadUnknown):
            await s.open_upload(UPLOAD)
        assert await s.upload_repo(UPLOAD) is None

    run(make, scenario)
    store = make()
    assert session_objects(seaweed, store) == []
    if isinstance(store, S3Storage):  # the multipart upload was aborted
        assert _multipart_uploads(seaweed, store) == []


def test_a_digest_mismatch_leaves_nothing_visible(make: Make, seaweed: SeaweedFS) -> None:
    body = os.urandom(10 * MiB)

    async def scenario(s: BlobStorage) -> None:
        uploads = Uploads(s, MemoryMetaStore())

        async def chunks() -> Any:
            for i in range(0, len(body), MiB):
                yield body[i : i + MiB]

        with pytest.raises(DigestInvalid):
            await uploads.monolithic("lib/x", sha256(b"other"), chunks(), len(body))
        assert await s.stat(sha256(body)) is None
        assert await everything(s) == []

    run(make, scenario)
    store = make()
    assert session_objects(seaweed, store) == []
    if isinstance(store, S3Storage):
        assert _multipart_uploads(seaweed, store) == []


def test_purge_removes_idle_sessions_never_a_held_one(make: Make, seaweed: SeaweedFS) -> None:
    async def scenario(s: BlobStorage) -> None:
        for upload_id in (UPLOAD, OTHER):
            await (await s.create_upload(upload_id, "r")).release()
            await append(s, upload_id, os.urandom(9 * MiB))
        assert await s.purge_stale(upload_age=3600, tmp_age=3600) == 0  # both fresh
        held = await s.open_upload(OTHER)
        try:
            assert await s.purge_stale(upload_age=0, tmp_age=3600) >= 1
        finally:
            await held.release()
        assert await s.upload_size(UPLOAD) is None
        assert await s.upload_size(OTHER) == 9 * MiB
        with pytest.raises(BlobUploadUnknown):
            await s.open_upload(UPLOAD)

    run(make, scenario)
    store = make()
    if isinstance(store, S3Storage):
        assert all(f"/{OTHER}/" in key for key in session_objects(seaweed, store))
        assert [k for k, _ in _multipart_uploads(seaweed, store)] == [store.layout.data(OTHER)]


def test_purge_aborts_orphaned_multipart_uploads(s3_url: str, seaweed: SeaweedFS) -> None:
    store = S3Storage(s3_url)
    client = seaweed.client()
    orphan = client.create_multipart_upload(
        Bucket=store.layout.bucket, Key=store.layout.data(UPLOAD)
    )
    # Left by a writer that died before its session recorded it, or after the session went.
    client.upload_part(
        Bucket=store.layout.bucket,
        Key=store.layout.data(UPLOAD),
        UploadId=orphan["UploadId"],
        PartNumber=1,
        Body=b"x" * 1024,
    )

    async def scenario() -> tuple[int, int]:
        try:
            kept = await store.purge_stale(upload_age=3600, tmp_age=3600)
            return kept, await store.purge_stale(upload_age=3600, tmp_age=0)
        finally:
            await store.close()

    assert asyncio.run(scenario()) == (0, 1)
    assert _multipart_uploads(seaweed, store) == []


def test_a_crashed_holders_lock_is_taken_over_once_expired(s3_url: str, seaweed: SeaweedFS) -> None:
    store = S3Storage(s3_url)

    async def scenario() -> None:
        try:
            await (await store.create_upload(UPLOAD)).release()
            await store.open_upload(UPLOAD)  # never released: its request died
            with pytest.raises(UploadBusy):
                await store.open_upload(UPLOAD)
        finally:
            await store.close()

    asyncio.run(scenario())
    # The lock says when it expires; an expired one (rewritten here) is taken over.
    client = seaweed.client()
    client.put_object(
        Bucket=store.layout.bucket,
        Key=store.layout.lock(UPLOAD),
        Body=f'{{"token": "dead", "expires": {time.time() - 1}}}'.encode(),
    )

    async def again() -> int:
        s = S3Storage(s3_url)
        try:
            return await append(s, UPLOAD, b"resumed")
        finally:
            await s.close()

    assert asyncio.run(again()) == 7


def test_a_holder_whose_lock_was_taken_over_cannot_change_the_session(
    s3_url: str, seaweed: SeaweedFS
) -> None:
    """The state is replaced only by compare-and-swap: a request that lost its (expired)
    lock to another request stores nothing, and the session is what the other one left."""

    async def scenario() -> None:
        a, b = S3Storage(s3_url), S3Storage(s3_url)
        try:
            await start_upload(a, UPLOAD)
            slow = await a.open_upload(UPLOAD)
            writer = await slow.append(None)
            await writer.write(b"late")
            await writer.close()
            # Its lock expires (the holder stalled); another request takes the session over.
            seaweed.client().put_object(
                Bucket=a.layout.bucket,
                Key=a.layout.lock(UPLOAD),
                Body=f'{{"token": "stalled", "expires": {time.time() - 1}}}'.encode(),
            )
            assert await append(b, UPLOAD, b"first") == 5
            with pytest.raises(UploadBusy):
                await slow.release()  # its flush is refused: the state changed
            assert await b.upload_size(UPLOAD) == 5
            handle = await b.open_upload(UPLOAD)
            try:
                assert "sha256:" + await handle.hash("sha256") == sha256(b"first")
            finally:
                await handle.release()
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())


def test_an_upload_hashed_and_not_finished_takes_no_more_bytes(s3_url: str) -> None:
    async def scenario() -> None:
        s = S3Storage(s3_url)
        try:
            await (await s.create_upload(UPLOAD)).release()
            await append(s, UPLOAD, os.urandom(9 * MiB))
            handle = await s.open_upload(UPLOAD)
            try:
                await handle.hash("sha256")
                with pytest.raises(BlobUploadInvalid):
                    await handle.append(None)
            finally:
                await handle.release()
        finally:
            await s.close()

    asyncio.run(scenario())


# -- health ---------------------------------------------------------------------------
def test_probe_passes(make: Make) -> None:
    async def scenario(s: BlobStorage) -> None:
        await s.probe()

    run(make, scenario)


def test_a_store_that_is_down_is_unavailable(s3_url: str) -> None:
    loc = parse(s3_url)
    down = S3Storage(loc.url().replace(loc.endpoint or "", f"http://127.0.0.1:{free_port()}"))
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: down.stat(sha256(b"x")),
        lambda: start_upload(down, UPLOAD),
        down.probe,  # one attempt: it must answer within the health loop's time
    ]

    async def refused() -> list[str]:
        out = []
        try:
            for call in calls:
                with pytest.raises(StorageUnavailable) as exc:
                    await call()
                out.append(exc.value.message)
        finally:
            await down.close()
        return out

    messages = asyncio.run(refused())
    assert all("S3 blob storage unreachable" in m for m in messages), messages


def _multipart_uploads(seaweed: SeaweedFS, store: S3Storage) -> list[tuple[str, str]]:
    resp = seaweed.client().list_multipart_uploads(
        Bucket=store.layout.bucket, Prefix=store.layout.uploads
    )
    return [(u["Key"], u["UploadId"]) for u in resp.get("Uploads", [])]


def test_blobs_over_the_copy_limit_are_copied_and_refreshed_in_parts(
    s3_url: str, seaweed: SeaweedFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CopyObject stops at 5 GiB: above the limit (lowered here to 1 MiB) a commit copies the
    upload in UploadPartCopy ranges, and storing the blob again refreshes its time the same
    way (a multipart copy onto itself), bytes unchanged."""
    monkeypatch.setenv("MOORAGE_S3_COPY_LIMIT", str(MiB))
    data = os.urandom(6 * MiB + 3)  # parts of 5 MiB: two
    digest = sha256(data)

    async def scenario(s: BlobStorage) -> tuple[float, float, float]:
        assert isinstance(s, S3Storage)
        await start_upload(s, UPLOAD)
        assert await append(s, UPLOAD, data) == len(data)
        handle = await s.open_upload(UPLOAD)
        try:
            await handle.commit(digest)
        finally:
            await handle.release()
        assert await read_all(s, digest) == data
        first = await s.modified(digest)
        await asyncio.sleep(1.1)  # S3 keeps modification times to the second
        await s.put_bytes(digest, data)  # stored again: a refresh
        second = await s.modified(digest)
        await asyncio.sleep(1.1)
        await start_upload(s, OTHER)  # the same bytes committed by another upload
        await append(s, OTHER, data)
        handle = await s.open_upload(OTHER)
        try:
            await handle.commit(digest)
        finally:
            await handle.release()
        third = await s.modified(digest)
        assert await read_all(s, digest) == data
        assert await s.stat(digest) == len(data)
        assert first is not None
        assert second is not None
        assert third is not None
        return first, second, third

    async def main() -> tuple[float, float, float]:
        s = open_blob_storage(s3_url)
        try:
            return await scenario(s)
        finally:
            await s.close()

    first, second, third = asyncio.run(main())
    assert first < second < third
    etag = seaweed.client().head_object(
        Bucket=parse(s3_url).bucket,
        Key=parse(s3_url).key(f"blobs/sha256/{digest[7:9]}/{digest[7:]}"),
    )["ETag"]
    assert etag.strip('"').endswith("-2"), etag  # made of two parts
