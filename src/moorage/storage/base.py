"""The blob storage interface every driver implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from pathlib import Path

from moorage.oci.digest import Hasher


class AppendWriter(ABC):
    """Appends one request's bytes to an upload.

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


class BlobStorage(ABC):
    """Blob bytes by digest, plus upload staging.

    Blobs are immutable and complete once visible: `commit_upload` and `put_bytes` make a
    blob visible only after its bytes are durable. No method deletes a committed blob.
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

    @abstractmethod
    async def read_bytes(self, digest: str) -> bytes | None:
        """A small blob whole (manifests), or None when it is not there."""

    @abstractmethod
    async def put_bytes(self, digest: str, data: bytes) -> None:
        """Store small verified bytes under their digest, durably."""

    # -- uploads ----------------------------------------------------------------------
    @abstractmethod
    async def create_upload(self, upload_id: str, repo: str | None = None) -> None:
        """A new, empty upload; `repo` is recorded with it (any replica can continue it)."""

    @abstractmethod
    async def purge_stale(self, upload_age: float, tmp_age: float) -> int:
        """Delete uploads untouched for `upload_age` seconds and staging files older than
        `tmp_age`; return how many files went. Never touches committed blobs."""

    @abstractmethod
    async def upload_repo(self, upload_id: str) -> str | None:
        """The repository an upload belongs to; None if there is no such upload."""

    @abstractmethod
    async def upload_size(self, upload_id: str) -> int | None:
        """Bytes received so far, or None when the upload does not exist."""

    @abstractmethod
    async def append(self, upload_id: str, offset: int, hasher: Hasher | None) -> AppendWriter:
        """Open the upload for appending at `offset`; raises RangeInvalid if it ends elsewhere."""

    @abstractmethod
    async def hash_upload(self, upload_id: str, algorithm: str) -> str:
        """Digest of the upload's bytes so far, read back from storage."""

    @abstractmethod
    async def commit_upload(self, upload_id: str, digest: str) -> None:
        """Make the upload's bytes (already verified) the blob `digest`, durably."""

    @abstractmethod
    async def delete_upload(self, upload_id: str) -> None: ...

    # -- health -----------------------------------------------------------------------
    @abstractmethod
    async def probe(self) -> None:
        """Write, read back and delete a small file; raises StorageUnavailable on failure."""

    @abstractmethod
    def free_bytes(self) -> int | None: ...
