"""The S3 driver's hold on one upload session, and the writer that appends to it.

A request that appends reads the session's tail back into its buffer and sends every
`PART_BYTES` as a part of the session's multipart upload (`PARTS_IN_FLIGHT` at once);
what remains becomes the new tail. The handle stores the tail and the state naming it when
it is released (`S3UploadHandle.flush`), unless the upload ended first: then the bytes
either became the blob (`commit`) or were dropped. The commit of an upload whose bytes are
all in memory (a small one: no part) is one PUT If-None-Match: * of the blob; a larger one
completes the multipart upload and copies it server-side to the blob's key (in parts above
5 GiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from moorage.errors import BlobUploadInvalid, BlobUploadUnknown, StorageUnavailable, UploadBusy
from moorage.oci.digest import Hasher
from moorage.storage.base import AppendWriter, UploadHandle
from moorage.storage.s3io import missing, precondition_failed, translated
from moorage.storage.s3sessions import LOCK_SECONDS, S3Sessions, SessionState, gone
from moorage.storage.s3writer import INLINE_HASH, S3AppendWriter

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef, CopySourceTypeDef

#: Above this, a committed object is copied in parts (CopyObject's limit is 5 GiB).
COPY_LIMIT = 5 * 1024**3
COPY_PART_BYTES = 512 * 1024 * 1024
MIN_PART_BYTES = 5 * 1024 * 1024  # S3's smallest part but the last


def copy_limit() -> int:
    """COPY_LIMIT, unless `MOORAGE_S3_COPY_LIMIT` (bytes; for tests) lowers it, so that the
    copy in parts runs on small blobs."""
    raw = os.environ.get("MOORAGE_S3_COPY_LIMIT", "")
    return int(raw) if raw.isdigit() and 0 < int(raw) < COPY_LIMIT else COPY_LIMIT


def _part_bytes(limit: int) -> int:
    return max(MIN_PART_BYTES, min(COPY_PART_BYTES, limit))


READ_BYTES = 1024 * 1024


async def hold(sessions: S3Sessions, upload_id: str) -> S3UploadHandle:
    """Take the session's lock and its state; UploadBusy or BlobUploadUnknown."""
    token, lock_etag = await sessions.lock(upload_id)
    try:
        found = await sessions.load(upload_id)
        if found is None:
            raise gone()  # finished, cancelled or purged (maybe while this one waited)
    except BaseException:
        with contextlib.suppress(Exception):
            await sessions.unlock(upload_id, token, lock_etag)
        raise
    state, etag, _ = found
    return S3UploadHandle(sessions, upload_id, state, etag, (token, lock_etag))


class S3UploadHandle(UploadHandle):
    """One session, held (or just created) by this request.

    What a writer leaves (the new tail and the state naming it) is stored by `flush`, which
    `release` runs: a request that then finishes the upload (`commit`) or drops it never
    stores them, so a small monolithic push costs a HEAD and a PUT of the blob. A created
    session is stored first by that flush too (nobody else knows its id before).
    """

    def __init__(
        self,
        sessions: S3Sessions,
        upload_id: str,
        state: SessionState,
        etag: str | None,
        lock: tuple[str, str] | None,
    ) -> None:
        self.sessions = sessions
        self.layout = sessions.layout
        self.upload_id = upload_id
        self.state = state
        self.etag = etag  # of the stored state; None: not stored yet (just created)
        self._stored_tail = state.tail  # the tail the stored state names
        self._dirty = False  # `state` differs from the stored one
        self._lock = lock  # (token, ETag) while this request holds the lock object
        self._locked_at = time.monotonic()
        self._ended = False
        self._tail_bytes: bytes | None = None  # the tail's bytes, when this request has them

    async def save(self, state: SessionState) -> None:
        """Store `state` (create it, or compare-and-swap the stored one)."""
        if self.etag is None:
            self.etag = await self.sessions.create(self.upload_id, state)
        else:
            self.etag = await self.sessions.swap(self.upload_id, state, self.etag)
        self.state = state

    async def flush(self) -> None:
        """Store what writers left: the tail object under its new name, then the
        state naming it; then the old tail goes."""
        if self._ended or (self.etag is not None and not self._dirty):
            return
        state = self.state
        layout = self.layout
        written = state.tail if state.tail and state.tail != self._stored_tail else ""
        if written:
            assert self._tail_bytes is not None  # set with the state by the writer
            async with translated("write an upload's tail"):
                s3 = await self._client()
                await s3.put_object(
                    Bucket=layout.bucket,
                    Key=layout.tail(self.upload_id, written),
                    Body=self._tail_bytes,
                )
        try:
            await self.save(state)
        except UploadBusy:
            if written:  # not named by any state: nobody reads it
                with contextlib.suppress(Exception):
                    s3 = await self._client()
                    await s3.delete_object(
                        Bucket=layout.bucket, Key=layout.tail(self.upload_id, written)
                    )
            raise
        self._dirty = False
        old, self._stored_tail = self._stored_tail, state.tail
        if old and old != state.tail:
            async with translated("delete an old tail"):
                s3 = await self._client()
                with contextlib.suppress(ClientError):
                    await s3.delete_object(
                        Bucket=layout.bucket, Key=layout.tail(self.upload_id, old)
                    )

    @property
    def size(self) -> int:
        return self.state.size

    def _live(self) -> None:
        if self._ended:
            raise BlobUploadUnknown("upload unknown: it was finished or cancelled")

    async def keep(self) -> None:
        """Refresh the lock when a third of its time has passed (long requests)."""
        if self._lock is None or time.monotonic() - self._locked_at < LOCK_SECONDS / 3:
            return
        token, lock_etag = self._lock
        self._lock = (token, await self.sessions.refresh(self.upload_id, lock_etag, token))
        self._locked_at = time.monotonic()

    async def _client(self) -> S3Client:
        return await self.sessions.conn.client()

    async def append(self, hasher: Hasher | None) -> AppendWriter:
        self._live()
        if self.state.sealed:
            raise BlobUploadInvalid(
                "this upload was already read back to check its digest and takes no more "
                "bytes; finish it with PUT, or start a new upload"
            )
        tail = await self.tail_bytes()
        return S3AppendWriter(self, hasher, tail)

    async def tail_bytes(self) -> bytes:
        state = self.state
        if state.tail_size == 0:
            return b""
        if state.inline is not None:
            return state.inline
        if self._tail_bytes is not None and len(self._tail_bytes) == state.tail_size:
            return self._tail_bytes
        async with translated("read an upload's tail"):
            s3 = await self._client()
            try:
                resp = await s3.get_object(
                    Bucket=self.layout.bucket, Key=self.layout.tail(self.upload_id, state.tail)
                )
            except ClientError as exc:
                if missing(exc):
                    raise StorageUnavailable(
                        f"upload {self.upload_id} lost its tail object in S3"
                    ) from None
                raise
            async with resp["Body"] as body:
                data = await body.read()
        if len(data) != state.tail_size:
            raise StorageUnavailable(f"upload {self.upload_id}: its tail object has the wrong size")
        self._tail_bytes = data
        return data

    async def hash(self, algorithm: str) -> str:
        self._live()
        h = hashlib.new(algorithm)
        if self.state.mpu is None and not self.state.sealed:
            h.update(await self.tail_bytes())
            return h.hexdigest()
        await self.seal()
        async with translated("read an upload back"):
            s3 = await self._client()
            data_key = self.layout.data(self.upload_id)
            resp = await s3.get_object(Bucket=self.layout.bucket, Key=data_key)
            async with resp["Body"] as body:
                async for chunk in body.iter_chunks(READ_BYTES):
                    if len(chunk) > INLINE_HASH:
                        await asyncio.to_thread(h.update, chunk)
                    else:
                        h.update(chunk)
                    await self.keep()
        return h.hexdigest()

    async def seal(self) -> None:
        """Complete the multipart upload (the tail as its last part) at uploads/<id>/data."""
        if self.state.sealed:
            return
        await self.flush()  # the tail object is copied into the last part
        state = self.state
        layout = self.layout
        data_key = layout.data(self.upload_id)
        assert state.mpu is not None
        parts = list(state.parts)
        async with translated("complete an upload"):
            s3 = await self._client()
            if state.inline:
                sent = await s3.upload_part(
                    Bucket=layout.bucket,
                    Key=data_key,
                    UploadId=state.mpu,
                    PartNumber=len(parts) + 1,
                    Body=state.inline,
                )
                parts.append((len(parts) + 1, sent["ETag"], state.tail_size))
            elif state.tail_size:
                copied = await s3.upload_part_copy(
                    Bucket=layout.bucket,
                    Key=data_key,
                    UploadId=state.mpu,
                    PartNumber=len(parts) + 1,
                    CopySource={
                        "Bucket": layout.bucket,
                        "Key": layout.tail(self.upload_id, state.tail),
                    },
                )
                parts.append((len(parts) + 1, copied["CopyPartResult"]["ETag"], state.tail_size))
            try:
                await s3.complete_multipart_upload(
                    Bucket=layout.bucket,
                    Key=data_key,
                    UploadId=state.mpu,
                    MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e, _ in parts]},
                )
            except ClientError as exc:
                # Completed before, by a request that died before it swapped the state.
                if not missing(exc) or await self._object_size(s3, data_key) != state.size:
                    raise
            sealed = replace(
                state, mpu=None, parts=[], tail="", tail_size=0, inline=None, sealed=True
            )
            await self.save(sealed)
            self._stored_tail = ""
            if state.tail:
                with contextlib.suppress(ClientError):
                    await s3.delete_object(
                        Bucket=layout.bucket, Key=layout.tail(self.upload_id, state.tail)
                    )

    async def _object_size(self, s3: S3Client, key: str) -> int | None:
        try:
            head = await s3.head_object(Bucket=self.layout.bucket, Key=key)
        except ClientError as exc:
            if missing(exc):
                return None
            raise
        return head["ContentLength"]

    async def commit(self, digest: str) -> None:
        self._live()
        layout = self.layout
        target = layout.blob(digest)
        await self.keep()
        async with translated("store a blob"):
            s3 = await self._client()
            whole = self._whole()
            if whole is not None:
                await put_new(s3, layout.bucket, target, whole)
            elif (size := await self._object_size(s3, target)) is not None:
                # The same bytes were committed by another upload: stored again, so garbage
                # collection's grace period starts over.
                await touch(s3, layout.bucket, target, size, self.keep)
            else:
                await self._install(s3, target)
        await self._end()

    def _whole(self) -> bytes | None:
        """The upload's bytes, when they are all in memory (no part: the tail is all)."""
        state = self.state
        if state.sealed or state.mpu is not None:
            return None
        if state.size == 0:
            return b""
        if self._tail_bytes is not None and len(self._tail_bytes) == state.size:
            return self._tail_bytes
        if state.inline is not None and len(state.inline) == state.size:
            return state.inline
        return None

    async def _install(self, s3: S3Client, target: str) -> None:
        layout = self.layout
        state = self.state
        if not state.sealed and state.mpu is None:
            # The tail object is the whole upload: a server-side copy of it.
            source = layout.tail(self.upload_id, state.tail)
        else:
            await self.seal()
            source = layout.data(self.upload_id)
        await copy_object(s3, layout.bucket, source, target, self.state.size, self.keep)
        size = await self._object_size(s3, target)
        if size != self.state.size:
            raise StorageUnavailable(
                f"S3 stored {size} bytes for a blob of {self.state.size}: not committed"
            )

    async def _end(self) -> None:
        if self.etag is not None:  # else nothing of it was ever stored
            await self.sessions.drop_objects(
                self.upload_id, keep_lock=self._lock is not None, held=(self.state, self.etag)
            )
        self._ended = True

    async def delete(self) -> None:
        if self._ended:
            return
        await self._end()

    async def release(self) -> None:
        try:
            await self.flush()
        finally:
            lock, self._lock = self._lock, None
            if lock is not None:
                await self.sessions.unlock(self.upload_id, *lock)


async def put_new(s3: S3Client, bucket: str, key: str, data: bytes) -> None:
    """Store verified bytes under their content key in one request: a PUT If-None-Match: *
    (atomic: the key appears with all its bytes or not at all). When the key is there
    already, the same bytes are: their time is refreshed instead (`touch`), for garbage
    collection's grace period."""
    try:
        await s3.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        return
    except ClientError as exc:
        if not precondition_failed(exc):
            raise
    try:
        await touch(s3, bucket, key, len(data))
    except ClientError as exc:
        # 409 ConditionalRequestConflict: a concurrent PUT of the key had not completed.
        if not missing(exc):
            raise
        await s3.put_object(Bucket=bucket, Key=key, Body=data)


async def touch(s3: S3Client, bucket: str, key: str, size: int, keep: Any = None) -> None:
    """Refresh an object's modification time: a copy onto itself with its metadata
    replaced (S3 refuses a self-copy that changes nothing); in parts above the copy limit."""
    metadata = {"stored": str(int(time.time()))}
    if size <= copy_limit():
        await s3.copy_object(
            Bucket=bucket,
            Key=key,
            CopySource={"Bucket": bucket, "Key": key},
            MetadataDirective="REPLACE",
            Metadata=metadata,
        )
        return
    # Readers see the old object until the upload completes, then the same bytes.
    await _copy_parts(s3, bucket, key, key, size, keep, metadata)


async def copy_object(
    s3: S3Client, bucket: str, source: str, target: str, size: int, keep: Any
) -> None:
    """A server-side copy; in parts (UploadPartCopy) above CopyObject's 5 GiB limit."""
    if size <= copy_limit():
        source_ref: CopySourceTypeDef = {"Bucket": bucket, "Key": source}
        await s3.copy_object(Bucket=bucket, Key=target, CopySource=source_ref)
        return
    await _copy_parts(s3, bucket, source, target, size, keep, {})


async def _copy_parts(
    s3: S3Client,
    bucket: str,
    source: str,
    target: str,
    size: int,
    keep: Any,
    metadata: dict[str, str],
) -> None:
    """A multipart upload of `target` made of UploadPartCopy ranges of `source` (which may
    be `target` itself); aborted on any failure."""
    step = _part_bytes(copy_limit())
    mpu = (await s3.create_multipart_upload(Bucket=bucket, Key=target, Metadata=metadata))[
        "UploadId"
    ]
    try:
        parts: list[CompletedPartTypeDef] = []
        for number, start in enumerate(range(0, size, step), start=1):
            end = min(start + step, size) - 1
            copied = await s3.upload_part_copy(
                Bucket=bucket,
                Key=target,
                UploadId=mpu,
                PartNumber=number,
                CopySource={"Bucket": bucket, "Key": source},
                CopySourceRange=f"bytes={start}-{end}",
            )
            parts.append({"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]})
            if keep is not None:
                await keep()
        await s3.complete_multipart_upload(
            Bucket=bucket, Key=target, UploadId=mpu, MultipartUpload={"Parts": parts}
        )
    except BaseException:
        with contextlib.suppress(Exception):
            await s3.abort_multipart_upload(Bucket=bucket, Key=target, UploadId=mpu)
        raise
