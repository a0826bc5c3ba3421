"""Upload sessions of the filesystem driver: one request at a time holds a session.

A session is a data file `uploads/<id>` (and `uploads/<id>.repo`, the repository it was
started in). `hold` gives a request the session under an exclusive POSIX lock on the data
file, shared by every replica on the storage; every write, hash, commit, cancel and purge
of the session runs through the `FileUploadHandle` it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import threading
from pathlib import Path

from moorage.errors import BlobUploadUnknown, StorageUnavailable, UploadBusy
from moorage.oci.digest import Hasher
from moorage.storage import syncer
from moorage.storage.base import AppendWriter, UploadHandle
from moorage.storage.fileio import (
    ENDED_MODE,
    FLUSH_BYTES,
    INLINE_BYTES,
    pwritev_all,
    rename_into_place,
    start_writeback,
)
from moorage.storage.paths import StorageLayout

# An upload is locked with a POSIX record lock (fcntl F_SETLK, exclusive, whole file) on its
# data file. Such a lock belongs to the process, not to the file descriptor: a second request
# of this process would get it too, and closing any descriptor of the file drops it. So this
# process also remembers the uploads it holds, and no request opens an upload's data file
# while another request of the process holds it.
_held: set[str] = set()
_held_guard = threading.Lock()


class FileUploadHandle(UploadHandle):
    """An upload's data file, open and (unless just created) locked by this request.

    Every operation that uses the descriptor runs under `_io`, so `release` (closing the
    descriptor, which drops the lock) waits for a write or hash still running in a worker
    thread when its request was cancelled: the lock is never let go while this request can
    still touch the bytes.
    """

    def __init__(
        self, layout: StorageLayout, upload_id: str, fd: int, size: int, key: str | None
    ) -> None:
        self._layout = layout
        self._upload_id = upload_id
        self._fd = fd
        self._size = size
        self._key = key  # in `_held` while this handle holds the lock
        self._ended = False
        self._closing = False  # `release` waits: a long hash in a thread stops early
        self._io = threading.Lock()

    @property
    def size(self) -> int:
        return self._size

    def _live_fd(self) -> int:
        if self._fd < 0 or self._ended:
            raise BlobUploadUnknown("upload unknown: it was finished or cancelled")
        return self._fd

    async def append(self, hasher: Hasher | None) -> AppendWriter:
        self._live_fd()
        return _FileAppendWriter(self, self._size, hasher)

    async def hash(self, algorithm: str) -> str:
        def run() -> str:
            h = hashlib.new(algorithm)
            with self._io:
                fd = self._live_fd()
                offset = 0
                while chunk := os.pread(fd, FLUSH_BYTES, offset):
                    if self._closing:  # its request was cancelled
                        raise BlobUploadUnknown("upload released while it was being hashed")
                    h.update(chunk)
                    offset += len(chunk)
            return h.hexdigest()

        try:
            return await asyncio.to_thread(run)
        except OSError as exc:
            raise StorageUnavailable(f"blob storage read failed: {exc.strerror}") from exc

    async def commit(self, digest: str) -> None:
        layout = self._layout
        source = layout.upload(self._upload_id)
        target = layout.blob(digest)

        def run() -> syncer.Staged | None:
            # Holds `_io` from here until the batch's cleanup (see storage.syncer).
            self._io.acquire()
            try:
                fd = self._live_fd()
                if target.exists():  # the same bytes were committed by another upload
                    # Stored again: garbage collection's grace period starts over.
                    with contextlib.suppress(OSError):
                        os.utime(target)
                    self._end_sync(fd)
                    self._io.release()
                    return None
                # Read-only before it becomes a blob, in the same fsync: the mark that the
                # session ended (a request that opened this file before the rename sees it
                # once it has the lock) and a guard against any later open for writing.
                os.fchmod(fd, ENDED_MODE)
            except BaseException:
                self._io.release()
                raise
            return syncer.Staged(fd, install, cleanup)

        def install() -> Path:
            # After the fsync of the data; the batch fsyncs the directory (shared with the
            # other installs of the batch) before this request goes on.
            rename_into_place(source, target)
            self._ended = True
            layout.upload_info(self._upload_id).unlink(missing_ok=True)
            return target.parent

        def cleanup(renamed: bool) -> None:
            try:
                if not renamed:  # still the upload: writable again
                    with contextlib.suppress(OSError):
                        os.fchmod(self._fd, 0o644)
            finally:
                self._io.release()

        try:
            if self._size > FLUSH_BYTES:
                # A large blob's data goes to disk in a thread of its own first, so that a
                # batch of small commits never waits for it (its fsync in `run` is then short).
                await asyncio.to_thread(self._sync_data)
            await syncer.shared().run(run)
        except FileNotFoundError:
            raise BlobUploadUnknown("upload unknown: it was finished or cancelled") from None
        except OSError as exc:
            raise StorageUnavailable(f"blob storage write failed: {exc.strerror}") from exc

    def _sync_data(self) -> None:
        with self._io:
            os.fdatasync(self._live_fd())

    def _end_sync(self, fd: int) -> None:
        """Mark the data file ended and unlink it (with its `.repo`); under `_io`."""
        layout = self._layout
        # On NFS the unlinked file can live on (silly-renamed) while this host has it
        # open: the mode says it ended to a request that opened it earlier.
        os.fchmod(fd, ENDED_MODE)
        self._ended = True
        layout.upload(self._upload_id).unlink(missing_ok=True)
        layout.upload_info(self._upload_id).unlink(missing_ok=True)

    async def delete(self) -> None:
        def run() -> None:
            with self._io:
                if self._fd >= 0 and not self._ended:
                    self._end_sync(self._fd)

        try:
            await asyncio.to_thread(run)
        except OSError as exc:
            raise StorageUnavailable(f"cannot delete upload: {exc.strerror}") from exc

    async def release(self) -> None:
        self.release_sync()

    def release_sync(self) -> None:
        # Blocks only if a worker thread still uses the descriptor (its request was
        # cancelled mid-write): the lock must outlive that write.
        self._closing = True
        with self._io:
            fd, self._fd = self._fd, -1
        if fd < 0:
            return
        try:
            os.close(fd)  # drops the POSIX lock
        finally:
            if self._key is not None:
                with _held_guard:
                    _held.discard(self._key)


def _hash_all(hasher: Hasher, chunks: list[bytes]) -> None:
    for chunk in chunks:
        hasher.update(chunk)


def _consume(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


class _FileAppendWriter(AppendWriter):
    """The request's chunks are gathered as they came (no copy into one buffer), then
    written with one `pwritev` and hashed chunk by chunk in worker threads."""

    def __init__(self, handle: FileUploadHandle, size: int, hasher: Hasher | None) -> None:
        self._handle = handle
        self._start = size
        self._size = size
        self._size_written = size
        self._hasher = hasher
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._pending: asyncio.Future[None] | None = None
        self._done = False

    def _write_sync(self, chunks: list[bytes], length: int) -> None:
        handle = self._handle
        with handle._io:
            if self._done:  # aborted (its request was cancelled) before this write ran
                return
            fd = handle._live_fd()
            pwritev_all(fd, chunks, self._size_written)
            # Start writing back now, so that the fsync at commit has little left to do.
            start_writeback(fd, self._size_written, length)
            self._size_written += length

    async def _hash_and_write(self, chunks: list[bytes], length: int) -> None:
        # Two threads: hashing and writing run in parallel (both release the GIL).
        if self._hasher is None:
            await asyncio.to_thread(self._write_sync, chunks, length)
            return
        await asyncio.gather(
            asyncio.to_thread(_hash_all, self._hasher, chunks),
            asyncio.to_thread(self._write_sync, chunks, length),
        )

    def _take(self) -> tuple[list[bytes], int]:
        chunks, length = self._chunks, self._buffered
        self._chunks, self._buffered = [], 0
        self._size += length
        return chunks, length

    async def _flush(self) -> None:
        if self._pending is not None:
            await self._pending
        chunks, length = self._take()
        self._pending = asyncio.ensure_future(self._hash_and_write(chunks, length))

    @property
    def size(self) -> int:
        return self._size + self._buffered

    async def write(self, chunk: bytes) -> None:
        # kept until written: a caller's reusable buffer (not bytes) is copied once
        self._chunks.append(chunk if type(chunk) is bytes else bytes(chunk))
        self._buffered += len(chunk)
        if self._buffered >= FLUSH_BYTES:
            await self._flush()

    async def close(self) -> int:
        try:
            if self._chunks and self._pending is None and self._buffered <= INLINE_BYTES:
                # A small body (a config, a small layer): hashing and writing it here costs
                # less than the two thread hand-offs would.
                chunks, length = self._take()
                if self._hasher is not None:
                    _hash_all(self._hasher, chunks)
                self._write_sync(chunks, length)
            elif self._chunks:
                await self._flush()
            if self._pending is not None:
                await self._pending
        except OSError as exc:
            raise StorageUnavailable(f"blob storage write failed: {exc.strerror}") from exc
        self._done = True
        self._handle._size = self._size
        return self._size

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        if self._pending is not None:
            # Not awaited (this may run in a cancelled request); its outcome is dropped.
            self._pending.add_done_callback(_consume)
        handle = self._handle
        with handle._io:  # after a write still running in a thread, before any later one
            if handle._fd >= 0:
                os.ftruncate(handle._fd, self._start)
        handle._size = self._start


def _gone() -> BlobUploadUnknown:
    return BlobUploadUnknown("upload unknown: it was finished, cancelled or expired")


def hold(layout: StorageLayout, upload_id: str) -> FileUploadHandle:
    """Lock an upload's data file and check that it is still the upload.

    The lock is a POSIX record lock (fcntl F_SETLK via `fcntl.lockf`, exclusive, whole
    file, never waiting): processes on one host exclude each other through the kernel,
    and on NFS the Linux client forwards it to the server's lock manager (NLM for
    NFSv3, part of the protocol in NFSv4), so replicas on other hosts are excluded too.
    NFS also revalidates a file's cached attributes when a lock is taken and writes
    dirty data back before it is released, so the next holder, on any host, sees the
    size and mode the previous holder left. Whether the file still is the upload is
    decided from the locked file itself (mode and link count, read with fstat after
    locking), not only from the path: an NFS client may resolve a path another host
    has just renamed from its cached directory entries. Without a lock manager (NFS
    mounted `nolock` without `local_lock`) the lock fails with ENOLCK and the request
    answers 503 rather than going on unprotected.
    """
    path = layout.upload(upload_id)
    key = str(path)
    with _held_guard:
        if key in _held:
            raise _busy(path, None)
        _held.add(key)
    fd = -1
    try:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise _gone() from None
        except PermissionError:  # a read-only (committed) file under a stale name
            raise _gone() from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise _busy(path, fd) from None
            if exc.errno == errno.ESTALE:  # deleted by another NFS client
                raise _gone() from None
            if exc.errno == errno.ENOLCK:
                raise StorageUnavailable(
                    "blob storage refuses POSIX locks (ENOLCK): an NFS mount needs its "
                    "lock manager (NFSv4, or NFSv3 with rpc.statd/lockd running; not "
                    "mounted with nolock)"
                ) from exc
            raise StorageUnavailable(f"cannot lock upload: {exc.strerror}") from exc
        st = os.fstat(fd)
        if st.st_nlink == 0 or not st.st_mode & 0o200:
            raise _gone()  # finished, cancelled or purged while this request waited
        try:
            current = os.stat(path)
        except FileNotFoundError:
            raise _gone() from None
        if (current.st_ino, current.st_dev) != (st.st_ino, st.st_dev):
            raise _gone()
    except BaseException as exc:
        if fd >= 0:
            os.close(fd)
        with _held_guard:
            _held.discard(key)
        if isinstance(exc, OSError):
            if exc.errno == errno.ESTALE:
                raise _gone() from None
            raise StorageUnavailable(f"cannot open upload: {exc.strerror}") from exc
        raise
    return FileUploadHandle(layout, upload_id, fd, st.st_size, key)


def _busy(path: Path, fd: int | None) -> UploadBusy:
    try:
        size = os.fstat(fd).st_size if fd is not None else path.stat().st_size
    except OSError:
        size = 0
    return UploadBusy(
        "another request is appending to, finishing or cancelling this upload; retry "
        "once it has ended (GET the upload for its size)",
        size,
    )


def purge_session(layout: StorageLayout, upload_id: str, now: float, upload_age: float) -> int:
    """Purge one upload session idle for over `upload_age` seconds, under its lock; the
    number of files removed (its data, and its `.repo` if it had one)."""
    try:
        handle = hold(layout, upload_id)
    except UploadBusy:
        return 0  # a request holds it
    except BlobUploadUnknown:
        return _purge_ended(layout, upload_id)
    try:
        if now - os.fstat(handle._fd).st_mtime <= upload_age:
            return 0  # written to since it was listed
        had_info = layout.upload_info(upload_id).exists()
        with handle._io:
            handle._end_sync(handle._fd)
        return 2 if had_info else 1
    finally:
        handle.release_sync()


def _purge_ended(layout: StorageLayout, upload_id: str) -> int:
    """A data file marked ended but still there: its commit or cancel was cut
    short (a crash between the mark and the rename or unlink). Nobody writes to it
    again, and its bytes were never acknowledged as a blob."""
    path = layout.upload(upload_id)
    try:
        if os.stat(path).st_mode & 0o200:
            return 0
        os.unlink(path)
    except FileNotFoundError:
        return 0
    info = layout.upload_info(upload_id)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(info)
        return 2
    return 1
