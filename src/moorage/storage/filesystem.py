"""Blob storage on a local or shared (NFS) directory."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from moorage.errors import BlobUploadUnknown, RangeInvalid, StorageUnavailable
from moorage.oci.digest import Hasher
from moorage.storage.base import AppendWriter, BlobStorage
from moorage.storage.paths import StorageLayout

# Bytes gathered before one write+hash runs in a worker thread; two such buffers at most
# are alive per upload, which keeps memory flat whatever the blob size.
FLUSH_BYTES = 4 * 1024 * 1024
READ_BYTES = 1024 * 1024
# Bodies up to this size are hashed and written without leaving the event loop.
INLINE_BYTES = 64 * 1024


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_sync_file_range() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):  # not Linux: the final fsync does all the work
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return fn


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(fd: int, offset: int, length: int) -> None:
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _FileAppendWriter(AppendWriter):
    def __init__(self, fd: int, size: int, hasher: Hasher | None) -> None:
        self._fd = fd
        self._start = size
        self._size = size
        self._size_written = size
        self._hasher = hasher
        self._buf = bytearray()
        self._pending: asyncio.Future[None] | None = None
        self._closed = False

    def _write_sync(self, data: bytearray) -> None:
        _write_all(self._fd, data)
        # Start writing back now, so that the fsync at commit has little left to do.
        _start_writeback(self._fd, self._size_written, len(data))
        self._size_written += len(data)

    async def _hash_and_write(self, data: bytearray) -> None:
        # Two threads: hashing and writing run in parallel (both release the GIL).
        if self._hasher is None:
            await asyncio.to_thread(self._write_sync, data)
            return
        hasher = self._hasher
        await asyncio.gather(
            asyncio.to_thread(hasher.update, data), asyncio.to_thread(self._write_sync, data)
        )

    async def _flush(self) -> None:
        data, self._buf = self._buf, bytearray()
        if self._pending is not None:
            await self._pending
        self._size += len(data)
        self._pending = asyncio.ensure_future(self._hash_and_write(data))

    @property
    def size(self) -> int:
        return self._size + len(self._buf)

    async def write(self, chunk: bytes) -> None:
        self._buf += chunk
        if len(self._buf) >= FLUSH_BYTES:
            await self._flush()

    async def close(self) -> int:
        try:
            if self._buf and self._pending is None and len(self._buf) <= INLINE_BYTES:
                # A small body (a config, a small layer): hashing and writing it here costs
                # less than the two thread hand-offs would.
                data, self._buf = self._buf, bytearray()
                self._size += len(data)
                if self._hasher is not None:
                    self._hasher.update(data)
                self._write_sync(data)
            elif self._buf:
                await self._flush()
            if self._pending is not None:
                await self._pending
        except OSError as exc:
            raise StorageUnavailable(f"blob storage write failed: {exc.strerror}") from exc
        finally:
            self._release()
        return self._size

    async def abort(self) -> None:
        if self._pending is not None:
            with contextlib.suppress(OSError):
                await self._pending
        if not self._closed:
            try:
                os.ftruncate(self._fd, self._start)
            finally:
                self._release()

    def _release(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._fd)  # also drops the flock


class FilesystemStorage(BlobStorage):
    def __init__(self, root: str | Path) -> None:
        self.layout = StorageLayout(Path(root).resolve())
        for d in self.layout.dirs():
            d.mkdir(parents=True, exist_ok=True)

    @property
    def root(self) -> Path:
        return self.layout.root

    # -- committed blobs --------------------------------------------------------------
    async def stat(self, digest: str) -> int | None:
        try:
            return self.layout.blob(digest).stat().st_size
        except FileNotFoundError:
            return None

    def local_path(self, digest: str) -> Path | None:
        return self.layout.blob(digest)

    async def read(
        self, digest: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        path = self.layout.blob(digest)
        remaining = length
        with open(path, "rb") as fh:
            fh.seek(offset)
            while remaining is None or remaining > 0:
                want = READ_BYTES if remaining is None else min(READ_BYTES, remaining)
                chunk = await asyncio.to_thread(fh.read, want)
                if not chunk:
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    async def read_bytes(self, digest: str) -> bytes | None:
        try:
            return self.layout.blob(digest).read_bytes()
        except FileNotFoundError:
            return None

    async def put_bytes(self, digest: str, data: bytes) -> None:
        target = self.layout.blob(digest)
        if target.exists():
            return
        tmp = self.layout.tmp / secrets.token_hex(16)
        try:
            await asyncio.to_thread(self._put_sync, tmp, target, data)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageUnavailable(f"blob storage write failed: {exc.strerror}") from exc

    def _put_sync(self, tmp: Path, target: Path, data: bytes) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._install(tmp, target)

    def _install(self, source: Path, target: Path) -> None:
        """Atomically rename a durable file into place and make the rename durable."""
        parent = target.parent
        if not parent.exists():
            parent.mkdir(parents=True, exist_ok=True)
            _fsync_dir(parent.parent)
        os.rename(source, target)
        _fsync_dir(parent)

    # -- uploads ----------------------------------------------------------------------
    async def create_upload(self, upload_id: str, repo: str | None = None) -> None:
        # Not fsynced: a session lost in a crash is restarted by its client; only a
        # finished blob is promised to be durable. In a thread: creating a file can wait
        # on the filesystem journal, which must not stall every other request.
        def run() -> None:
            if repo is not None:
                self.layout.upload_info(upload_id).write_text(repo)
            fd = os.open(self.layout.upload(upload_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.close(fd)

        try:
            await asyncio.to_thread(run)
        except OSError as exc:
            raise StorageUnavailable(f"cannot create upload: {exc.strerror}") from exc

    async def purge_stale(self, upload_age: float, tmp_age: float) -> int:
        def run() -> int:
            now = time.time()
            removed = 0
            for folder, age in ((self.layout.uploads, upload_age), (self.layout.tmp, tmp_age)):
                try:
                    entries = list(os.scandir(folder))
                except FileNotFoundError:
                    continue
                for entry in entries:
                    try:
                        if entry.is_file(follow_symlinks=False) and (
                            now - entry.stat(follow_symlinks=False).st_mtime > age
                        ):
                            os.unlink(entry.path)
                            removed += 1
                    except FileNotFoundError:  # finished or purged by another replica
                        continue
            return removed

        try:
            return await asyncio.to_thread(run)
        except OSError as exc:
            raise StorageUnavailable(f"cannot purge stale uploads: {exc.strerror}") from exc

    async def upload_repo(self, upload_id: str) -> str | None:
        if not self.layout.upload(upload_id).exists():
            return None
        try:
            return self.layout.upload_info(upload_id).read_text()
        except FileNotFoundError:
            return None

    async def upload_size(self, upload_id: str) -> int | None:
        try:
            return self.layout.upload(upload_id).stat().st_size
        except FileNotFoundError:
            return None

    async def append(self, upload_id: str, offset: int, hasher: Hasher | None) -> AppendWriter:
        try:
            fd = os.open(self.layout.upload(upload_id), os.O_WRONLY)
        except FileNotFoundError:
            raise BlobUploadUnknown(
                "upload unknown: it was finished, cancelled or expired"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                size = await self.upload_size(upload_id) or 0
                raise RangeInvalid("another request is writing to this upload", size) from None
            raise StorageUnavailable(f"cannot lock upload: {exc.strerror}") from exc
        size = os.fstat(fd).st_size
        if size != offset:
            os.close(fd)
            raise RangeInvalid(f"upload is at offset {size}, chunk starts at {offset}", size)
        os.lseek(fd, size, os.SEEK_SET)
        return _FileAppendWriter(fd, size, hasher)

    async def hash_upload(self, upload_id: str, algorithm: str) -> str:
        def run() -> str:
            h = hashlib.new(algorithm)
            with open(self.layout.upload(upload_id), "rb") as fh:
                while chunk := fh.read(FLUSH_BYTES):
                    h.update(chunk)
            return h.hexdigest()

        try:
            return await asyncio.to_thread(run)
        except FileNotFoundError:
            raise BlobUploadUnknown("upload unknown") from None

    async def commit_upload(self, upload_id: str, digest: str) -> None:
        source = self.layout.upload(upload_id)
        target = self.layout.blob(digest)

        def run() -> None:
            info = self.layout.upload_info(upload_id)
            if target.exists():
                source.unlink(missing_ok=True)
                info.unlink(missing_ok=True)
                return
            fd = os.open(source, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._install(source, target)
            info.unlink(missing_ok=True)

        try:
            await asyncio.to_thread(run)
        except FileNotFoundError:
            raise BlobUploadUnknown("upload unknown: it was finished or cancelled") from None
        except OSError as exc:
            raise StorageUnavailable(f"blob storage write failed: {exc.strerror}") from exc

    async def delete_upload(self, upload_id: str) -> None:
        self.layout.upload(upload_id).unlink(missing_ok=True)
        self.layout.upload_info(upload_id).unlink(missing_ok=True)

    # -- health -----------------------------------------------------------------------
    async def probe(self) -> None:
        path = self.layout.probe / f"{os.getpid()}-{secrets.token_hex(4)}"
        payload = secrets.token_bytes(32)

        def run() -> None:
            path.write_bytes(payload)
            if path.read_bytes() != payload:
                raise OSError(errno.EIO, "read back different bytes")
            path.unlink()

        try:
            await asyncio.to_thread(run)
        except OSError as exc:
            raise StorageUnavailable(
                f"blob storage at {self.root} failed a write/read probe: {exc.strerror or exc}"
            ) from exc

    def free_bytes(self) -> int | None:
        try:
            st = os.statvfs(self.root)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize
