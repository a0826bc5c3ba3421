"""The writer that appends one request's bytes to an S3 upload session (held through
`moorage.storage.s3upload.S3UploadHandle`): the session's tail is read back into its buffer,
every `PART_BYTES` go out as a part of the session's multipart upload (`PARTS_IN_FLIGHT` at
once), and what remains becomes the new tail (in the state up to `INLINE_TAIL` bytes)."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from moorage.oci.digest import Hasher
from moorage.storage.base import AppendWriter
from moorage.storage.s3io import translated
from moorage.storage.s3sessions import INLINE_TAIL

if TYPE_CHECKING:
    from moorage.storage.s3upload import S3UploadHandle

#: Every part but the last: S3's minimum is 5 MiB.
PART_BYTES = 8 * 1024 * 1024
#: Parts uploaded at once by one request (each holds PART_BYTES of memory).
PARTS_IN_FLIGHT = 2
# Chunks up to this size are hashed on the event loop; larger ones in a thread.
INLINE_HASH = 256 * 1024


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class S3AppendWriter(AppendWriter):
    """Buffers one request's bytes after the session's tail; every `PART_BYTES` of them go
    out as a part (`PARTS_IN_FLIGHT` uploading while the next fills). `close` leaves the
    rest as the new tail, in the handle's state, for `S3UploadHandle.flush`."""

    def __init__(self, handle: S3UploadHandle, hasher: Hasher | None, tail: bytes) -> None:
        self._handle = handle
        self._hasher = hasher
        state = handle.state
        self._parts = list(state.parts)
        self._parts_size = sum(size for _, _, size in state.parts)
        self._mpu = state.mpu
        self._buf = bytearray(tail)
        self._pending: list[asyncio.Task[None]] = []  # parts in flight
        self._done = False

    @property
    def size(self) -> int:
        return self._parts_size + len(self._buf)

    async def write(self, chunk: bytes) -> None:
        if self._hasher is not None:
            if len(chunk) > INLINE_HASH:
                await asyncio.to_thread(self._hasher.update, chunk)
            else:
                self._hasher.update(chunk)
        self._buf += chunk
        while len(self._buf) >= PART_BYTES:
            part = bytes(self._buf[:PART_BYTES])
            del self._buf[:PART_BYTES]
            await self._send(part)

    async def _send(self, part: bytes) -> None:
        while len(self._pending) >= PARTS_IN_FLIGHT:
            await self._pending.pop(0)
        handle = self._handle
        await handle.keep()
        if self._mpu is None:
            await self._start_mpu()
        number = len(self._parts) + 1
        self._parts.append((number, "", len(part)))
        self._parts_size += len(part)
        self._pending.append(asyncio.ensure_future(self._upload(number, part)))

    async def _start_mpu(self) -> None:
        handle = self._handle
        async with translated("start a multipart upload"):
            s3 = await handle._client()
            resp = await s3.create_multipart_upload(
                Bucket=handle.layout.bucket, Key=handle.layout.data(handle.upload_id)
            )
        self._mpu = resp["UploadId"]
        # Recorded at once, so that purging never takes it for an orphan; the bytes of the
        # session are unchanged (no part is listed yet).
        await handle.flush()
        await handle.save(replace(handle.state, mpu=self._mpu))

    async def _upload(self, number: int, part: bytes) -> None:
        handle = self._handle
        async with translated("upload a part"):
            s3 = await handle._client()
            assert self._mpu is not None
            resp = await s3.upload_part(
                Bucket=handle.layout.bucket,
                Key=handle.layout.data(handle.upload_id),
                UploadId=self._mpu,
                PartNumber=number,
                Body=part,
            )
        self._parts[number - 1] = (number, resp["ETag"], len(part))

    async def close(self) -> int:
        handle = self._handle
        while self._pending:
            await self._pending.pop(0)
        old = handle.state
        tail = bytes(self._buf)
        inline = len(tail) <= INLINE_TAIL
        name = old.tail
        if not inline and (
            not name or tail != handle._tail_bytes or len(self._parts) != len(old.parts)
        ):
            # A new name: a request that lost the session (its lock expired) and writes its
            # tail anyway never overwrites the one the session's state names.
            name = secrets.token_hex(8)
        state = replace(
            old,
            size=self.size,
            mpu=self._mpu,
            parts=list(self._parts),
            tail="" if inline else name,
            tail_size=len(tail),
            inline=tail if inline and tail else None,
        )
        # Stored by the handle's flush (at release), unless the upload ends first.
        handle.state = state
        handle._tail_bytes = tail
        handle._dirty = handle._dirty or state != old
        self._done = True
        return state.size

    async def abort(self) -> None:
        # The state was not swapped: the session is as this request found it. Parts sent
        # meanwhile are not listed in it (replaced by the next writer, or dropped when the
        # multipart upload completes); a tail written is collected with the session.
        if self._done:
            return
        self._done = True
        for task in self._pending:
            task.cancel()
            task.add_done_callback(_consume)
        self._pending = []
        self._buf = bytearray()
