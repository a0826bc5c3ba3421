"""The blob storage interface every driver implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from moorage.oci.digest import Hasher


class AppendWriter(ABC):
    """Appends one request's bytes to an upload it holds (see `UploadHandle`).

    `close` makes the bytes part of the upload and returns its new size; `abort` truncates
    the upload back to where this writer started, so a failed request leaves no bytes.
    """

    @property
    @abstractmethod
    def size(self) -> int:
        """The upload's size including bytes written (or buffered) so far."""

    @abstractmethod
    async def write(self, chunk: bytes) -> None: ...

    @abstractmethod
    async def close(self) -> int: ...

    @abstractmethod
    async def abort(self) -> None: ...


class UploadHandle(ABC):
    """One upload session, held by one request until `release`.

    `BlobStorage.open_upload` gives a handle only to one request at a time across every
    replica sharing the storage, so appending, finishing and cancelling one session exclude
    each other; a handle is only given while the session still exists (not finished,
    cancelled or purged). Every write to the session's bytes goes through its handle, so
    nothing can change the bytes between `hash` and `commit`, nor after `commit`.
    """

    @property
    @abstractmethod
    def size(self) -> int:
        """The upload's size: as found when it was opened, then as the last writer left it."""

    @abstractmethod
    async def append(self, hasher: Hasher | None) -> AppendWriter:
        """A writer at the upload's end (`size`); one at a time."""

    @abstractmethod
    async def hash(self, algorithm: str) -> str:
        """Digest of the upload's bytes, read back from storage."""

    @abstractmethod
    async def commit(self, digest: str) -> None:
        """Make the upload's bytes (already verified) the blob `digest`, durably, and end
        the session. The blob's bytes never change afterwards."""

    @abstractmethod
    async def delete(self) -> None:
        """End the session and drop its bytes; nothing when it has already ended."""

    @abstractmethod
    async def release(self) -> None:
        """Let the next request at the session; idempotent. Always call it."""


class BlobStorage(ABC):
    """Blob bytes by digest, plus upload staging.

    Blobs are immutable and complete once visible: `UploadHandle.commit` and `put_bytes`
    make a blob visible only after its bytes are durable. Only `delete_blob` deletes a
    committed blob, and only garbage collection calls it (moorage.registry.gc), once the
    metadata says the blob is gone. Storing a blob that is already there refreshes its
    modification time: the grace period of a blob no repository links runs from it.
    """

    # -- committed blobs --------------------------------------------------------------
    @abstractmethod
    async def stat(self, digest: str) -> int | None:
        """Size of a committed blob, or None when it is not there."""

    @abstractmethod
    def local_path(self, digest: str) -> Path | None:
        """A local file holding the blob, for sendfile; None when the driver has none."""

    @abstractmethod
    def read(self, digest: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream a committed blob's bytes."""

    async def opened(
        self, digest: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes] | None:
        """`read`, once the store has answered: None when the blob is not there. A pull
        learns that before it answers 200; a driver whose read is one request (S3) needs no
        `stat` before it."""
        if await self.stat(digest) is None:
            return None
        return self.read(digest, offset, length)

    @abstractmethod
    async def read_bytes(self, digest: str) -> bytes | None:
        """A small blob whole (manifests), or None when it is not there."""

    #: Whether `redirect_url` gives URLs (S3 with `redirect=on`).
    redirects = False

    async def redirect_url(self, digest: str, method: str) -> str:
        """A short-lived URL the client can `method` (GET or HEAD) the blob at instead of
        the replica; only when `redirects`."""
        raise NotImplementedError(f"{type(self).__name__} does not redirect pulls")

    async def read_many(self, digests: list[str]) -> list[bytes | None]:
        """`read_bytes` of each digest, in order (garbage collection's mark reads thousands
        of manifests: a driver reads a batch off the event loop, in one go)."""
        return [await self.read_bytes(digest) for digest in digests]

    @abstractmethod
    async def put_bytes(self, digest: str, data: bytes) -> None:
        """Store small verified bytes under their digest, durably."""

    @abstractmethod
    async def modified(self, digest: str) -> float | None:
        """When a committed blob was last stored (Unix time), or None when it is not there."""

    async def modified_many(self, digests: list[str]) -> list[float | None]:
        """`modified` of each digest, in order (garbage collection's `--untagged` asks it of
        every unreachable manifest: a driver with a round trip per blob overlaps them)."""
        return [await self.modified(digest) for digest in digests]

    @abstractmethod
    def blobs(self) -> AsyncIterator[list[tuple[str, int, float]]]:
        """Every committed blob as (digest, size, modification time), in bounded batches."""

    @abstractmethod
    async def delete_blob(self, digest: str) -> int | None:
        """Delete a committed blob's bytes (garbage collection only); its size, or None
        when it was not there."""

    async def delete_blobs(
        self, digests: list[str], listed: Mapping[str, int] | None = None
    ) -> list[int | None]:
        """`delete_blob` of each digest, in order (garbage collection's sweep: a driver with
        a round trip per blob batches them). `listed`: sizes `blobs()` gave for some of them
        (a digest's size never changes), which a driver may trust instead of looking."""
        return [await self.delete_blob(digest) for digest in digests]

    # -- uploads ----------------------------------------------------------------------
    @abstractmethod
    async def create_upload(self, upload_id: str, repo: str | None = None) -> UploadHandle:
        """A new, empty upload; `repo` is recorded with it (any replica can continue it).

        The returned handle needs no lock (nobody else knows the id yet): a POST with the
        digest streams through it, a plain POST releases it at once."""

    @abstractmethod
    async def open_upload(self, upload_id: str) -> UploadHandle:
        """Hold an existing upload. Raises UploadBusy while another request holds it and
        BlobUploadUnknown when it was finished, cancelled or purged (also when that happened
        while this request waited for it)."""

    @abstractmethod
    async def purge_stale(self, upload_age: float, tmp_age: float) -> int:
        """Delete uploads untouched for `upload_age` seconds (never one a request holds)
        and staging files older than `tmp_age`; return how many files went. Never touches
        committed blobs."""

    @abstractmethod
    async def upload_repo(self, upload_id: str) -> str | None:
        """The repository an upload belongs to; None if there is no such upload."""

    @abstractmethod
    async def upload_size(self, upload_id: str) -> int | None:
        """Bytes received so far, or None when the upload does not exist."""

    # -- health -----------------------------------------------------------------------
    @abstractmethod
    async def probe(self) -> None:
        """Write, read back and delete a small file; raises StorageUnavailable on failure."""

    @abstractmethod
    async def put_marker(self, name: str, data: bytes) -> None:
        """Write (or overwrite) the small file `probe/<name>`: not fsynced, a hint that
        says who uses the storage (moorage.storage.presence)."""

    @abstractmethod
    async def remove_marker(self, name: str) -> None:
        """Remove `probe/<name>` (absent: nothing to do)."""

    @abstractmethod
    async def markers(self, prefix: str) -> list[tuple[str, float]]:
        """(name, modification time) of the files `probe/<prefix>*`, at most 1,000."""

    @abstractmethod
    def free_bytes(self) -> int | None: ...

    async def close(self) -> None:  # noqa: B027  (a hook: most drivers keep nothing open)
        """Let go of connections (a driver that keeps none has nothing to do)."""
