"""Blob storage on a local or shared (NFS) directory: the driver.

Committed blobs, staged writes and the housekeeping of stale files live here; the upload
sessions and their locking in `moorage.storage.sessions`, the file primitives in
`moorage.storage.fileio`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

from moorage.errors import DigestInvalid, StorageUnavailable
from moorage.oci.digest import parse_digest
from moorage.storage import syncer
from moorage.storage.base import BlobStorage, UploadHandle
from moorage.storage.fileio import (
    ENDED_MODE,
    FLUSH_BYTES,
    READ_BYTES,
    rename_into_place,
    write_all,
)
from moorage.storage.paths import StorageLayout
from moorage.storage.sessions import FileUploadHandle, hold, purge_session


def _valid(digest: str) -> bool:
    try:
        return str(parse_digest(digest)) == digest
    except DigestInvalid:  # a stray file: never a blob, never deleted
        return False


def _touch(path: Path) -> bool:
    """Refresh a committed blob's modification time (it was stored again); False when it
    is not there."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    except PermissionError:  # read-only and owned by another user: the time stays
        return path.exists()
    return True


# FLUSH_BYTES is re-exported: tests import it from here.
__all__ = ["FLUSH_BYTES", "FilesystemStorage"]


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
            return os.stat(self.layout.blob_name(digest)).st_size
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

    async def read_many(self, digests: list[str]) -> list[bytes | None]:
        # In a worker thread: a batch of reads (NFS round trips) never blocks the loop.
        return await asyncio.to_thread(self._read_many_sync, digests)

    def _read_many_sync(self, digests: list[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for digest in digests:
            try:
                out.append(self.layout.blob(digest).read_bytes())
            except FileNotFoundError:
                out.append(None)
        return out

    async def put_bytes(self, digest: str, data: bytes) -> None:
        target = self.layout.blob(digest)
        if _touch(target):
            return
        tmp = self.layout.tmp / secrets.token_hex(16)
        try:
            # The directory's fsync is shared with concurrent installs (storage.syncer).
            await syncer.shared().run(lambda: self._put_sync(tmp, target, data))
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageUnavailable(f"blob storage write failed: {exc.strerror}") from exc

    def _put_sync(self, tmp: Path, target: Path, data: bytes) -> syncer.Staged:
        """Write `data` under `tmp`, staged to be fsynced and renamed to `target`."""
        # Read-only like every committed blob (the creating descriptor can still write).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, ENDED_MODE)
        try:
            write_all(fd, data)
        except BaseException:
            os.close(fd)
            raise

        def install() -> Path:
            rename_into_place(tmp, target)
            return target.parent

        def cleanup(renamed: bool) -> None:
            os.close(fd)
            if not renamed:
                tmp.unlink(missing_ok=True)

        return syncer.Staged(fd, install, cleanup)

    async def modified(self, digest: str) -> float | None:
        try:
            return self.layout.blob(digest).stat().st_mtime
        except FileNotFoundError:
            return None

    async def blobs(self) -> AsyncIterator[list[tuple[str, int, float]]]:
        def listing(directory: Path, algorithm: str) -> list[tuple[str, int, float]]:
            out: list[tuple[str, int, float]] = []
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                return out
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # deleted meanwhile
                    continue
                digest = f"{algorithm}:{entry.name}"
                if entry.is_file(follow_symlinks=False) and _valid(digest):
                    out.append((digest, st.st_size, st.st_mtime))
            return out

        for algorithm in ("sha256", "sha512"):
            root = self.layout.blobs / algorithm
            try:
                prefixes = sorted(os.listdir(root))
            except FileNotFoundError:
                continue
            for prefix in prefixes:
                batch = await asyncio.to_thread(listing, root / prefix, algorithm)
                if batch:
                    yield batch

    async def delete_blob(self, digest: str) -> int | None:
        path = self.layout.blob(digest)

        def run() -> int | None:
            # Not fsynced: an unlink lost in a crash leaves an unlinked file, collected by
            # the next run.
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                return None
            return size

        try:
            return await asyncio.to_thread(run)
        except OSError as exc:
            raise StorageUnavailable(f"cannot delete blob {digest}: {exc.strerror}") from exc

    # -- uploads ----------------------------------------------------------------------
    async def create_upload(self, upload_id: str, repo: str | None = None) -> UploadHandle:
        # Not fsynced: a session lost in a crash is restarted by its client; only a
        # finished blob is promised to be durable. In a thread: creating a file can wait
        # on the filesystem journal, which must not stall every other request.
        def run() -> int:
            if repo is not None:
                self.layout.upload_info(upload_id).write_text(repo)
            return os.open(self.layout.upload(upload_id), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)

        try:
            fd = await asyncio.to_thread(run)
        except OSError as exc:
            raise StorageUnavailable(f"cannot create upload: {exc.strerror}") from exc
        return FileUploadHandle(self.layout, upload_id, fd, 0, None)

    async def open_upload(self, upload_id: str) -> UploadHandle:
        # On the event loop, as the open it replaces was: a few system calls, no I/O.
        return hold(self.layout, upload_id)

    async def purge_stale(self, upload_age: float, tmp_age: float) -> int:
        def stale(entry: os.DirEntry[str], now: float, age: float) -> bool:
            try:
                return entry.is_file(follow_symlinks=False) and (
                    now - entry.stat(follow_symlinks=False).st_mtime > age
                )
            except FileNotFoundError:  # finished or purged by another replica
                return False

        def run() -> int:
            now = time.time()
            removed = 0
            try:
                uploads = list(os.scandir(self.layout.uploads))
            except FileNotFoundError:
                uploads = []
            for entry in uploads:
                if not stale(entry, now, upload_age):
                    continue
                if "." not in entry.name:  # an upload's data: only under its lock
                    removed += purge_session(self.layout, entry.name, now, upload_age)
                    continue
                if entry.name.endswith(".repo") and os.path.lexists(
                    self.layout.upload(entry.name[: -len(".repo")])
                ):
                    continue  # goes with its data
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
            try:
                staged = list(os.scandir(self.layout.tmp))
            except FileNotFoundError:
                staged = []
            for entry in staged:
                if stale(entry, now, tmp_age):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        removed += 1
            return removed

        try:
            return await asyncio.to_thread(run)
        except (OSError, StorageUnavailable) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else exc.message
            raise StorageUnavailable(f"cannot purge stale uploads: {reason}") from exc

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

    async def put_marker(self, name: str, data: bytes) -> None:
        path = self.layout.probe / name
        tmp = self.layout.probe / f".{name}.{secrets.token_hex(4)}"

        def run() -> None:  # renamed over the last one: a reader never sees half of it
            tmp.write_bytes(data)
            os.replace(tmp, path)

        try:
            await asyncio.to_thread(run)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageUnavailable(f"cannot write {path}: {exc.strerror}") from exc

    async def remove_marker(self, name: str) -> None:
        # On the loop, not in a thread: it runs at shutdown, when no other work waits, and
        # must not depend on the executor or on another turn of a loop that is stopping.
        try:
            (self.layout.probe / name).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"cannot remove {name}: {exc.strerror}") from exc

    async def markers(self, prefix: str) -> list[tuple[str, float]]:
        def run() -> list[tuple[str, float]]:
            out: list[tuple[str, float]] = []
            with os.scandir(self.layout.probe) as entries:
                for entry in entries:
                    if entry.name.startswith(prefix) and len(out) < 1000:
                        with contextlib.suppress(FileNotFoundError):
                            out.append((entry.name, entry.stat().st_mtime))
            return out

        try:
            return await asyncio.to_thread(run)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageUnavailable(f"cannot list {self.layout.probe}: {exc.strerror}") from exc

    def free_bytes(self) -> int | None:
        try:
            st = os.statvfs(self.root)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize
