"""storage/: the filesystem driver (upload sessions, commits, reads, purging, layout)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from moorage.errors import BlobUploadUnknown, DigestInvalid, UploadBusy
from moorage.storage.filesystem import FLUSH_BYTES, FilesystemStorage
from moorage.storage.paths import StorageLayout

T = TypeVar("T")
UPLOAD = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def append(fs: FilesystemStorage, upload_id: str, *chunks: bytes) -> int:
    handle = await fs.open_upload(upload_id)
    try:
        writer = await handle.append(None)
        for chunk in chunks:
            await writer.write(chunk)
        return await writer.close()
    finally:
        await handle.release()


async def read_all(
    fs: FilesystemStorage, digest: str, offset: int = 0, length: int | None = None
) -> bytes:
    return b"".join([c async for c in fs.read(digest, offset, length)])


def test_layout_builds_paths_only_from_valid_digests(tmp_path: Path) -> None:
    layout = StorageLayout(tmp_path)
    digest = sha256(b"x")
    hexpart = digest.split(":")[1]
    assert layout.blob(digest) == tmp_path / "blobs" / "sha256" / hexpart[:2] / hexpart
    for forged in ("sha256:../../../etc/passwd", "sha256:" + "A" * 64, "../x", "", "sha256:"):
        with pytest.raises(DigestInvalid):
            layout.blob(forged)
    assert layout.upload_info(UPLOAD) == tmp_path / "uploads" / f"{UPLOAD}.repo"
    assert set(layout.dirs()) == {tmp_path / d for d in ("blobs", "uploads", "tmp", "probe")}


def test_driver_creates_its_directories_and_refuses_forged_digests(tmp_path: Path) -> None:
    fs = FilesystemStorage(tmp_path / "store")
    assert all(d.is_dir() for d in fs.layout.dirs())
    assert fs.root == (tmp_path / "store").resolve()
    with pytest.raises(DigestInvalid):
        run(fs.stat("sha256:../../x"))
    with pytest.raises(DigestInvalid):
        run(fs.read_bytes("sha256:" + "z" * 64))
    assert run(fs.stat(sha256(b"absent"))) is None
    assert run(fs.read_bytes(sha256(b"absent"))) is None


def test_upload_append_hash_commit_read(tmp_path: Path) -> None:
    fs = FilesystemStorage(tmp_path)
    data = b"hello " * 1000

    async def scenario() -> None:
        handle = await fs.create_upload(UPLOAD, "library/x")
        await handle.release()
        assert await fs.upload_repo(UPLOAD) == "library/x"
        assert await append(fs, UPLOAD, data[:10], data[10:3000]) == 3000
        assert await append(fs, UPLOAD, data[3000:]) == len(data)
        assert await fs.upload_size(UPLOAD) == len(data)
        handle = await fs.open_upload(UPLOAD)
        try:
            assert handle.size == len(data)
            assert await handle.hash("sha256") == hashlib.sha256(data).hexdigest()
            assert await handle.hash("sha512") == hashlib.sha512(data).hexdigest()
            await handle.commit(sha256(data))
        finally:
            await handle.release()
        digest = sha256(data)
        assert await fs.stat(digest) == len(data)
        assert await fs.read_bytes(digest) == data
        assert await read_all(fs, digest) == data
        assert await read_all(fs, digest, 6, 5) == data[6:11]
        assert await read_all(fs, digest, len(data) - 3) == data[-3:]
        assert await read_all(fs, digest, 0, 0) == b""
        # The session is over: its files are gone, and so is the session.
        assert await fs.upload_repo(UPLOAD) is None
        assert await fs.upload_size(UPLOAD) is None
        with pytest.raises(BlobUploadUnknown):
            await fs.open_upload(UPLOAD)

    run(scenario())
    blob = fs.layout.blob(sha256(data))
    assert stat.S_IMODE(blob.stat().st_mode) == 0o444  # committed blobs are read-only
    assert os.listdir(fs.layout.uploads) == []


def test_hashing_while_writing_a_large_upload(tmp_path: Path) -> None:
    """Past FLUSH_BYTES the writer hashes and writes in threads."""
    fs = FilesystemStorage(tmp_path)
    chunk = os.urandom(256 * 1024)
    count = FLUSH_BYTES // len(chunk) + 3

    async def scenario() -> str:
        await (await fs.create_upload(UPLOAD)).release()
        handle = await fs.open_upload(UPLOAD)
        hasher = hashlib.sha256()
        try:
            writer = await handle.append(hasher)
            for _ in range(count):
                await writer.write(chunk)
            assert writer.size == count * len(chunk)
            assert await writer.close() == count * len(chunk)
            assert await handle.hash("sha256") == hasher.hexdigest()
        finally:
            await handle.release()
        return hasher.hexdigest()

    assert run(scenario()) == hashlib.sha256(chunk * count).hexdigest()


def test_many_small_chunks_are_written_in_order_without_joining(tmp_path: Path) -> None:
    """Chunks are kept as they came and written with pwritev, more of them in one flush
    than one call takes (IOV_MAX), plus a reusable buffer the caller changes afterwards."""
    fs = FilesystemStorage(tmp_path)
    chunks = [os.urandom(1 + i % 7) for i in range(3000)]
    chunks.append(os.urandom(FLUSH_BYTES))  # the flush past FLUSH_BYTES holds 3001 chunks
    reused = bytearray(b"r" * 100)
    whole = b"".join(chunks) + bytes(reused)

    async def scenario() -> str:
        await (await fs.create_upload(UPLOAD)).release()
        handle = await fs.open_upload(UPLOAD)
        hasher = hashlib.sha256()
        try:
            writer = await handle.append(hasher)
            for chunk in chunks:
                await writer.write(chunk)
            await writer.write(reused)  # type: ignore[arg-type]
            reused[:] = b"x" * 100
            assert await writer.close() == len(whole)
        finally:
            await handle.release()
        return hasher.hexdigest()

    assert run(scenario()) == hashlib.sha256(whole).hexdigest()
    assert (fs.layout.upload(UPLOAD)).read_bytes() == whole


def test_committing_bytes_that_are_already_a_blob(tmp_path: Path) -> None:
    fs = FilesystemStorage(tmp_path)
    data = b"same bytes"

    async def scenario() -> None:
        await fs.put_bytes(sha256(data), data)
        await (await fs.create_upload(UPLOAD, "r")).release()
        await append(fs, UPLOAD, data)
        handle = await fs.open_upload(UPLOAD)
        try:
            await handle.commit(sha256(data))
        finally:
            await handle.release()
        assert await fs.read_bytes(sha256(data)) == data
        with pytest.raises(BlobUploadUnknown):
            await fs.open_upload(UPLOAD)

    run(scenario())
    assert os.listdir(fs.layout.uploads) == []


def test_put_bytes_is_atomic_read_only_and_idempotent(tmp_path: Path) -> None:
    fs = FilesystemStorage(tmp_path)
    data = b'{"manifest": true}'
    run(fs.put_bytes(sha256(data), data))
    run(fs.put_bytes(sha256(data), data))
    path = fs.local_path(sha256(data))
    assert path is not None
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert os.listdir(fs.layout.tmp) == []


def test_one_request_at_a_time_holds_a_session(tmp_path: Path) -> None:
    fs = FilesystemStorage(tmp_path)

    async def scenario() -> None:
        await (await fs.create_upload(UPLOAD)).release()
        await append(fs, UPLOAD, b"abc")
        held = await fs.open_upload(UPLOAD)
        try:
            with pytest.raises(UploadBusy) as busy:
                await fs.open_upload(UPLOAD)
            assert busy.value.current_size == 3
            # Another session is not affected.
            await (await fs.create_upload(OTHER)).release()
            await (await fs.open_upload(OTHER)).release()
        finally:
            await held.release()
        await held.release()  # twice is harmless
        assert await append(fs, UPLOAD, b"d") == 4

    run(scenario())


def test_an_aborted_writer_leaves_no_bytes(tmp_path: Path) -> None:
    fs = FilesystemStorage(tmp_path)

    async def scenario() -> None:
        await (await fs.create_upload(UPLOAD)).release()
        await append(fs, UPLOAD, b"kept")
        handle = await fs.open_upload(UPLOAD)
        try:
            writer = await handle.append(None)
            await writer.write(b"x" * (FLUSH_BYTES + 10))
            await writer.abort()
            await writer.abort()
            assert handle.size == 4
        finally:
            await handle.release()
        assert await fs.upload_size(UPLOAD) == 4

    run(scenario())


def test_cancelled_session_is_gone(tmp_path: Path) -> None:
    fs = FilesystemStorage(tmp_path)

    async def scenario() -> None:
        await (await fs.create_upload(UPLOAD, "r")).release()
        handle = await fs.open_upload(UPLOAD)
        try:
            await handle.delete()
            with pytest.raises(BlobUploadUnknown):
                await handle.append(None)
            with pytest.raises(BlobUploadUnknown):
                await handle.commit(sha256(b""))
        finally:
            await handle.release()
        with pytest.raises(BlobUploadUnknown):
            await fs.open_upload(UPLOAD)
        assert await fs.upload_repo(UPLOAD) is None

    run(scenario())
    assert os.listdir(fs.layout.uploads) == []


def test_unknown_sessions(tmp_path: Path) -> None:
    fs = FilesystemStorage(tmp_path)
    with pytest.raises(BlobUploadUnknown):
        run(fs.open_upload(UPLOAD))
    assert run(fs.upload_size(UPLOAD)) is None
    assert run(fs.upload_repo(UPLOAD)) is None
    # A read-only file under an upload's name is an ended session, not one to write to.
    fs.layout.upload(UPLOAD).write_bytes(b"ended")
    fs.layout.upload(UPLOAD).chmod(0o444)
    with pytest.raises(BlobUploadUnknown):
        run(fs.open_upload(UPLOAD))


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_purge_stale_uploads_and_staging_files(tmp_path: Path) -> None:
    fs = FilesystemStorage(tmp_path)
    layout = fs.layout

    async def scenario() -> None:
        for upload_id in (UPLOAD, OTHER):
            await (await fs.create_upload(upload_id, "r")).release()
        await append(fs, OTHER, b"fresh")

    run(scenario())
    _age(layout.upload(UPLOAD), 1000)
    _age(layout.upload_info(UPLOAD), 1000)
    _age(layout.upload_info(OTHER), 1000)  # its data is fresh: the .repo goes with it
    ended = "1" * 32
    layout.upload(ended).write_bytes(b"cut short")
    layout.upload(ended).chmod(0o444)
    _age(layout.upload(ended), 1000)
    orphan = layout.uploads / ("2" * 32 + ".repo")
    orphan.write_text("r")
    _age(orphan, 1000)
    (layout.tmp / "old").write_bytes(b"x")
    _age(layout.tmp / "old", 100)
    (layout.tmp / "new").write_bytes(b"x")

    removed = run(fs.purge_stale(upload_age=500, tmp_age=50))
    # UPLOAD and its .repo, the ended data file, the orphan .repo, the old staging file
    assert removed == 5
    assert sorted(os.listdir(layout.uploads)) == sorted([OTHER, f"{OTHER}.repo"])
    assert os.listdir(layout.tmp) == ["new"]
    assert run(fs.purge_stale(upload_age=500, tmp_age=50)) == 0


def test_a_held_session_is_not_purged(tmp_path: Path) -> None:
    fs = FilesystemStorage(tmp_path)

    async def scenario() -> int:
        await (await fs.create_upload(UPLOAD)).release()
        _age(fs.layout.upload(UPLOAD), 1000)
        handle = await fs.open_upload(UPLOAD)
        try:
            return await fs.purge_stale(upload_age=500, tmp_age=500)
        finally:
            await handle.release()

    assert run(scenario()) == 0
    assert fs.layout.upload(UPLOAD).exists()


def test_probe_and_free_bytes(tmp_path: Path) -> None:
    fs = FilesystemStorage(tmp_path)
    run(fs.probe())
    assert os.listdir(fs.layout.probe) == []
    free = fs.free_bytes()
    assert free is not None
    assert free > 0
