"""Blob uploads: monolithic, POST-with-digest, chunked; resumable on any replica.

The bytes go to blob storage as they arrive and are hashed on the way. A replica keeps the
running hash in memory for the uploads it serves; when a chunk lands on another replica
(or after a restart) the digest is computed by reading the upload back, so any replica can
finish any upload.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from moorage.errors import (
    BlobCollecting,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    RangeInvalid,
    SizeInvalid,
)
from moorage.meta.base import MetaStore
from moorage.meta.link_hints import collection_quiet
from moorage.meta.records import UploadRecord
from moorage.meta.usage import GUESS, LinkRead, read_link
from moorage.oci.digest import Digest, Hasher, parse_digest
from moorage.storage.base import BlobStorage, UploadHandle

_UPLOAD_ID = re.compile(r"[a-f0-9]{32}")  # fullmatch: `$` would accept a trailing newline
_MAX_CACHED_HASHERS = 4096


@dataclass(frozen=True, slots=True)
class ChunkRange:
    """A Content-Range `start-end` (inclusive), as a chunk's position in the upload."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def new_upload_id(repo: str) -> str:
    """32 hex digits: 16 random, then 16 of a hash of the repository and those 16. Any
    replica can tell which repository an upload belongs to from the id alone, so starting
    one creates a single file, and an id is never accepted under another repository."""
    nonce = secrets.token_hex(8)
    return nonce + _binding(repo, nonce)


def upload_of(repo: str, upload_id: str) -> bool:
    return secrets.compare_digest(upload_id[16:], _binding(repo, upload_id[:16]))


def _binding(repo: str, nonce: str) -> str:
    return hashlib.sha256(f"moorage-upload\0{repo}\0{nonce}".encode()).hexdigest()[:16]


class Uploads:
    def __init__(self, storage: BlobStorage, meta: MetaStore) -> None:
        self.storage = storage
        self.meta = meta
        # upload id -> (bytes hashed, sha256 of those bytes)
        self._hashers: OrderedDict[str, tuple[int, Hasher]] = OrderedDict()
        # upload id -> session record, for the uploads this process started
        self._sessions: OrderedDict[str, UploadRecord] = OrderedDict()

    async def start(self, repo: str) -> str:
        upload_id = new_upload_id(repo)
        # The session is its data file in blob storage, which every replica sees; the id
        # itself names the repository (see `new_upload_id`), so nothing else is written.
        await (await self.storage.create_upload(upload_id)).release()
        record = UploadRecord(upload_id, repo, time.time())
        self._remember(upload_id, 0, hashlib.sha256())
        self._sessions[upload_id] = record
        while len(self._sessions) > _MAX_CACHED_HASHERS:
            self._sessions.popitem(last=False)
        return upload_id

    async def size(self, repo: str, upload_id: str) -> int:
        await self._session(repo, upload_id)
        size = await self.storage.upload_size(upload_id)
        if size is None:
            raise BlobUploadUnknown("upload unknown: its data is gone")
        return size

    async def append(
        self,
        repo: str,
        upload_id: str,
        body: AsyncIterator[bytes],
        chunk: ChunkRange | None,
        content_length: int | None,
    ) -> int:
        """Append one PATCH body; returns the upload's new size.

        The request holds the session (`BlobStorage.open_upload`) while it writes: another
        PATCH, a PUT or a DELETE of the same session meanwhile, on any replica, is refused
        with UploadBusy (416 with the upload's Range)."""
        await self._session(repo, upload_id)
        _check_lengths(chunk, content_length)
        async with self._held(upload_id) as handle:
            _check_offset(handle, chunk)
            hasher = self._cached_hasher(upload_id, handle.size)
            size = await self._write(handle, body, chunk, content_length, hasher)
            if hasher is not None:
                self._remember(upload_id, size, hasher)
            return size

    async def finish(
        self,
        repo: str,
        upload_id: str,
        digest: str,
        body: AsyncIterator[bytes] | None,
        chunk: ChunkRange | None,
        content_length: int | None,
    ) -> tuple[Digest, int]:
        """Close the upload with an optional last chunk, verify its digest, make it a blob.

        The last chunk, the hash and the commit happen while holding the session, so no
        byte can be added between the verification and the commit, and two finishes (or a
        finish and a cancel) of one session never both succeed: the other one is refused
        with UploadBusy while this one runs, BlobUploadUnknown after."""
        parsed = parse_digest(digest)
        await self._session(repo, upload_id)
        if body is not None:
            _check_lengths(chunk, content_length)
        async with self._held(upload_id) as handle:
            if body is not None:
                _check_offset(handle, chunk)
            hasher = self._cached_hasher(upload_id, handle.size)
            if body is not None:
                size = await self._write(handle, body, chunk, content_length, hasher)
            else:
                size = handle.size
            self._sessions.pop(upload_id, None)
            read = await self._verify_and_commit(handle, repo, parsed, hasher)
        await link_stored(self.meta, repo, parsed, size, read)
        await self._still_stored(repo, parsed)
        return parsed, size

    async def monolithic(
        self, repo: str, digest: str, body: AsyncIterator[bytes], content_length: int | None
    ) -> tuple[Digest, int]:
        """POST with `?digest=`: the whole blob in one request, no session record needed.

        Its upload is never shared (no other request can name it), so it is streamed,
        verified and committed through the handle that created it, without a lock."""
        parsed = parse_digest(digest)
        handle = await self.storage.create_upload(uuid.uuid4().hex)
        try:
            hasher = parsed.hasher()
            size = await self._write(handle, body, None, content_length, hasher)
            read = await self._verify_and_commit(handle, repo, parsed, hasher)
        except BaseException:
            await handle.delete()
            raise
        finally:
            await handle.release()
        await link_stored(self.meta, repo, parsed, size, read)
        await self._still_stored(repo, parsed)
        return parsed, size

    async def cancel(self, repo: str, upload_id: str) -> None:
        """DELETE: refused with UploadBusy while another request holds the session."""
        await self._session(repo, upload_id)
        async with self._held(upload_id) as handle:
            await handle.delete()
        self._hashers.pop(upload_id, None)
        self._sessions.pop(upload_id, None)

    # -- internals --------------------------------------------------------------------
    async def _still_stored(self, repo: str, digest: Digest) -> None:
        """After the link, on local files (a stat costs a system call): a collection that
        tombstoned this digest before the commit can have deleted the bytes after it and
        cleared its tombstone before the link, which then names nothing: the link goes and
        the client is told to upload again. Once the bytes are seen after the link, no
        collection takes them (the link is within the grace period, and a running one
        rescues links written after its mark). On S3, where a stat is a request, the read
        before the commit is the guard, as it always was."""
        if self.storage.local_path(str(digest)) is None:
            return
        if await self.storage.stat(str(digest)) is not None:
            return
        await self.meta.unlink_blob(repo, str(digest))
        raise BlobCollecting(
            f"garbage collection deleted blob {digest} while it was stored; upload it again"
        )

    async def _session(self, repo: str, upload_id: str) -> UploadRecord:
        if not _UPLOAD_ID.fullmatch(upload_id):
            raise BlobUploadUnknown(f"upload {upload_id[:64]!r} is unknown")
        local = self._sessions.get(upload_id)
        if local is not None and local.repo == repo:
            # Started by this process: no store round trip. If another replica finished or
            # cancelled it meanwhile, its data file is gone and the next step says so.
            return local
        if upload_of(repo, upload_id):
            owner: str | None = (
                repo if await self.storage.upload_size(upload_id) is not None else None
            )
        else:  # an upload started before ids named their repository: its `.repo` file
            owner = await self.storage.upload_repo(upload_id)
        record = UploadRecord(upload_id, owner, 0.0) if owner is not None else None
        if record is None or record.repo != repo:
            raise BlobUploadUnknown(
                f"upload {upload_id} is unknown in {repo}: it was finished, cancelled or never "
                "started; start a new one with POST /v2/<name>/blobs/uploads/"
            )
        return record

    @asynccontextmanager
    async def _held(self, upload_id: str) -> AsyncIterator[UploadHandle]:
        handle = await self.storage.open_upload(upload_id)
        try:
            yield handle
        finally:
            await handle.release()

    def _cached_hasher(self, upload_id: str, size: int) -> Hasher | None:
        """The running sha256 of the upload's first `size` bytes, if this process has it
        (an upload only grows, so the bytes below its size never change)."""
        cached = self._hashers.pop(upload_id, None)
        if cached is not None and cached[0] == size:
            return cached[1]
        return hashlib.sha256() if size == 0 else None

    def _remember(self, upload_id: str, size: int, hasher: Hasher) -> None:
        self._hashers[upload_id] = (size, hasher)
        self._hashers.move_to_end(upload_id)
        while len(self._hashers) > _MAX_CACHED_HASHERS:
            self._hashers.popitem(last=False)

    async def _write(
        self,
        handle: UploadHandle,
        body: AsyncIterator[bytes],
        chunk: ChunkRange | None,
        content_length: int | None,
        hasher: Hasher | None,
    ) -> int:
        """Stream one request body to the end of the held upload; returns its new size."""
        offset = handle.size
        writer = await handle.append(hasher)
        expected = chunk.length if chunk is not None else content_length
        try:
            async for data in body:
                await writer.write(data)
            received = writer.size - offset
            if expected is not None and received != expected:
                raise BlobUploadInvalid(
                    f"expected {expected} bytes in this request, got {received}"
                )
            return await writer.close()
        except BaseException:
            # Roll the upload back to where this request found it: the client's view.
            await writer.abort()
            raise

    async def _verify_and_commit(
        self, handle: UploadHandle, repo: str, digest: Digest, hasher: Hasher | None
    ) -> LinkRead | None:
        """Verify the bytes and make them the blob; returns the store's read that tells no
        collection is deleting the digest, which the link that follows starts from (None
        after a wait for a collection: the link reads afresh; GUESS while none runs)."""
        if hasher is not None and getattr(hasher, "name", digest.algorithm) == digest.algorithm:
            actual = hasher.hexdigest()
        else:
            actual = await handle.hash(digest.algorithm)
        if actual != digest.encoded:
            # A mismatch leaves no trace: the bytes are dropped, the session ends.
            await handle.delete()
            raise DigestInvalid(
                f"the uploaded bytes have digest {digest.algorithm}:{actual}, not {digest}; "
                "the upload was discarded"
            )
        # Garbage collection deleting this very digest removes the bytes last: commit only
        # once it is done, so the blob ends up present. One read tells that and gives the
        # link what it starts from. While no collection runs, on local files, no read: the
        # link guesses, and `_still_stored` checks the bytes after it.
        if self.storage.local_path(str(digest)) is not None and await collection_quiet(self.meta):
            await handle.commit(str(digest))
            return GUESS
        read: LinkRead | None = await read_link(self.meta, repo, str(digest))
        if read is not None and read.collecting:
            await settle(self.meta, str(digest))
            read = None
        await handle.commit(str(digest))
        return read


#: How long a blob upload waits for garbage collection to finish deleting the same digest.
SETTLE_SECONDS = 30.0


async def settle(meta: MetaStore, digest: str, patience: float = SETTLE_SECONDS) -> None:
    """Return once garbage collection is not deleting `digest` (its bytes can be stored
    again); BlobCollecting after `patience` seconds."""
    deadline = time.monotonic() + patience
    while await meta.blob_collecting(digest):
        if time.monotonic() > deadline:
            raise BlobCollecting(
                f"garbage collection is deleting blob {digest}; upload it again in a minute"
            )
        await asyncio.sleep(0.2)


async def link_stored(
    meta: MetaStore, repo: str, digest: Digest, size: int, read: LinkRead | None = None
) -> None:
    """Link a blob just stored (from `read`, taken before its commit, when given). Garbage
    collection may have begun deleting the digest between `settle` and the commit (its
    bytes go): the client is told to upload again."""
    if not await meta.link_blob(repo, str(digest), size, enforce_quota=True, read=read):
        raise BlobCollecting(
            f"garbage collection began deleting blob {digest} while it was stored; upload it again"
        )


def _check_lengths(chunk: ChunkRange | None, content_length: int | None) -> None:
    if chunk is not None and content_length is not None and chunk.length != content_length:
        raise SizeInvalid(
            f"Content-Range covers {chunk.length} bytes but Content-Length is {content_length}"
        )


def _check_offset(handle: UploadHandle, chunk: ChunkRange | None) -> None:
    if chunk is not None and chunk.start != handle.size:
        raise RangeInvalid(
            f"upload is at offset {handle.size}, chunk starts at {chunk.start}", handle.size
        )
