"""Upload sessions of the S3 driver: their state and their lock, shared by every replica.

A session is a state object (`uploads/<id>/state`, JSON) that only a compare-and-swap
replaces (PUT If-Match its ETag), a lock object (`uploads/<id>/lock`) and its bytes: the
parts of one S3 multipart upload at `uploads/<id>/data`, each exactly `PART_BYTES` (S3
wants at least 5 MiB but the last), then a tail of fewer bytes: inside the state itself up
to `INLINE_TAIL` bytes (no object of its own to write, read and delete), else a tail object.
A request that appends reads the tail back into its buffer, cuts parts as the buffer fills,
and at the end writes the new tail (a tail object under a new random name) and swaps the
state: until that swap the
session is as it was (parts uploaded meanwhile are not in the state's part list, so they
are replaced by the next writer or dropped on completion), which is `AppendWriter.abort`.

One request at a time holds a session, on every replica: the lock object is created with
If-None-Match: * and deleted on release (one DELETE If-Match its ETag where the store honours
a conditional DELETE, else a GET to check it is still this request's, then a DELETE); a
holder refreshes it (If-Match) as it works, and a lock whose holder crashed is taken over
(If-Match its ETag) once it has expired. The
handle a request holds, and its writer, are in `moorage.storage.s3upload`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from moorage.errors import BlobUploadInvalid, BlobUploadUnknown, StorageUnavailable, UploadBusy
from moorage.storage.s3io import (
    S3Connection,
    list_page,
    missing,
    precondition_failed,
    translated,
)
from moorage.storage.s3layout import S3Layout

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

#: A lock not refreshed for this long is taken over (its holder crashed).
LOCK_SECONDS = 120.0
#: A tail up to this size lives in the state object (base64 in its JSON); a longer one in an
#: object of its own. Every request on the session reads the state whole.
INLINE_TAIL = 256 * 1024


@dataclass(frozen=True)
class SessionState:
    repo: str | None = None
    size: int = 0
    mpu: str | None = None  # the multipart upload at uploads/<id>/data
    parts: list[tuple[int, str, int]] = field(default_factory=list)  # number, ETag, size
    tail: str = ""  # the tail object's name (random: two writers never share one); "": none
    tail_size: int = 0
    sealed: bool = False  # uploads/<id>/data is complete (the upload was hashed)
    inline: bytes | None = None  # the tail itself, when it is kept in the state (no object)

    def encode(self) -> bytes:
        doc = asdict(self)
        doc["inline"] = None if self.inline is None else base64.b64encode(self.inline).decode()
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> SessionState:
        try:
            doc = json.loads(raw)
            return cls(
                repo=doc["repo"],
                size=int(doc["size"]),
                mpu=doc["mpu"],
                parts=[(int(n), str(e), int(s)) for n, e, s in doc["parts"]],
                tail=str(doc["tail"]),
                tail_size=int(doc["tail_size"]),
                sealed=bool(doc["sealed"]),
                inline=None if doc.get("inline") is None else base64.b64decode(doc["inline"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageUnavailable(f"an upload session's state in S3 is damaged: {exc}") from exc


def gone() -> BlobUploadUnknown:
    return BlobUploadUnknown("upload unknown: it was finished, cancelled or expired")


class S3Sessions:
    """The session objects of one store: load, swap, lock."""

    def __init__(self, conn: S3Connection, layout: S3Layout) -> None:
        self.conn = conn
        self.layout = layout
        self._conditional_delete: bool | None = None  # found out on first need
        self._probing = asyncio.Lock()

    async def load(self, upload_id: str) -> tuple[SessionState, str, float] | None:
        """The state, its ETag and when it was last written; None when there is none."""
        async with translated("read an upload session"):
            s3 = await self.conn.client()
            try:
                resp = await s3.get_object(
                    Bucket=self.layout.bucket, Key=self.layout.state(upload_id)
                )
            except ClientError as exc:
                if missing(exc):
                    return None
                raise
            async with resp["Body"] as body:
                raw = await body.read()
        return SessionState.decode(raw), resp["ETag"], resp["LastModified"].timestamp()

    async def create(self, upload_id: str, state: SessionState) -> str:
        async with translated("create an upload session"):
            s3 = await self.conn.client()
            try:
                resp = await s3.put_object(
                    Bucket=self.layout.bucket,
                    Key=self.layout.state(upload_id),
                    Body=state.encode(),
                    IfNoneMatch="*",
                )
            except ClientError as exc:
                if precondition_failed(exc):
                    raise BlobUploadInvalid(f"upload {upload_id} already exists") from None
                raise
        return resp["ETag"]

    async def swap(self, upload_id: str, state: SessionState, etag: str) -> str:
        """Replace the state whose ETag is `etag`; UploadBusy when it changed meanwhile (this
        request's lock expired and another request took the session)."""
        async with translated("update an upload session"):
            s3 = await self.conn.client()
            try:
                resp = await s3.put_object(
                    Bucket=self.layout.bucket,
                    Key=self.layout.state(upload_id),
                    Body=state.encode(),
                    IfMatch=etag,
                )
            except ClientError as exc:
                if precondition_failed(exc) or missing(exc):
                    raise UploadBusy(
                        "the upload session changed under this request (its hold expired); "
                        "GET the upload for its size and retry",
                        state.size,
                    ) from None
                raise
        return resp["ETag"]

    # -- the lock ---------------------------------------------------------------------
    def _lock_body(self, token: str) -> bytes:
        return json.dumps({"token": token, "expires": time.time() + LOCK_SECONDS}).encode()

    async def lock(self, upload_id: str) -> tuple[str, str]:
        """Take the session's lock: (token, the lock object's ETag). UploadBusy while another
        request holds it; the lock of a crashed holder is taken over once expired."""
        token = secrets.token_hex(16)
        key = self.layout.lock(upload_id)
        async with translated("lock an upload session"):
            s3 = await self.conn.client()
            for _ in range(3):
                try:
                    resp = await s3.put_object(
                        Bucket=self.layout.bucket,
                        Key=key,
                        Body=self._lock_body(token),
                        IfNoneMatch="*",
                    )
                    return token, resp["ETag"]
                except ClientError as exc:
                    if not precondition_failed(exc):
                        raise
                try:
                    held = await s3.get_object(Bucket=self.layout.bucket, Key=key)
                except ClientError as exc:
                    if missing(exc):
                        continue  # released meanwhile: try to create it again
                    raise
                async with held["Body"] as body:
                    raw = await body.read()
                try:
                    expires = float(json.loads(raw)["expires"])
                except (ValueError, KeyError, TypeError):
                    expires = 0.0  # a damaged lock holds nothing
                if expires > time.time():
                    raise await self._busy(upload_id)
                try:
                    resp = await s3.put_object(
                        Bucket=self.layout.bucket,
                        Key=key,
                        Body=self._lock_body(token),
                        IfMatch=held["ETag"],
                    )
                    return token, resp["ETag"]
                except ClientError as exc:
                    if not (precondition_failed(exc) or missing(exc)):
                        raise
                    # another request took it over first, or it was released: once more
        raise await self._busy(upload_id)

    async def _busy(self, upload_id: str) -> Exception:
        found = await self.load(upload_id)
        if found is None:
            return gone()
        return UploadBusy(
            "another request is appending to, finishing or cancelling this upload; retry "
            "once it has ended (GET the upload for its size)",
            found[0].size,
        )

    async def refresh(self, upload_id: str, lock_etag: str, token: str) -> str:
        async with translated("refresh an upload session's lock"):
            s3 = await self.conn.client()
            try:
                resp = await s3.put_object(
                    Bucket=self.layout.bucket,
                    Key=self.layout.lock(upload_id),
                    Body=self._lock_body(token),
                    IfMatch=lock_etag,
                )
            except ClientError as exc:
                if precondition_failed(exc) or missing(exc):
                    raise UploadBusy(
                        "this request's hold on the upload expired and another request took "
                        "it; GET the upload for its size and retry",
                        0,
                    ) from None
                raise
        return resp["ETag"]

    async def unlock(self, upload_id: str, token: str, lock_etag: str) -> None:
        """Delete the lock if this request still holds it."""
        key = self.layout.lock(upload_id)
        async with translated("unlock an upload session"):
            s3 = await self.conn.client()
            if await self.conditional_delete(s3):
                # Taken over meanwhile (another ETag) or gone: not ours to delete.
                await self._delete_if(s3, key, lock_etag)
                return
            try:
                held = await s3.get_object(Bucket=self.layout.bucket, Key=key)
            except ClientError as exc:
                if missing(exc):
                    return
                raise
            async with held["Body"] as body:
                raw = await body.read()
            with contextlib.suppress(ValueError, KeyError, TypeError):
                if json.loads(raw)["token"] != token:
                    return  # expired and taken over: not ours to delete
            await s3.delete_object(Bucket=self.layout.bucket, Key=key)

    async def _delete_if(self, s3: S3Client, key: str, etag: str) -> bool:
        """DELETE `key` If-Match `etag` (the store honours it); whether it went."""
        try:
            await s3.delete_object(Bucket=self.layout.bucket, Key=key, IfMatch=etag)
        except ClientError as exc:
            if precondition_failed(exc) or missing(exc):
                return False
            raise
        return True

    async def conditional_delete(self, s3: S3Client) -> bool:
        """Whether the store honours If-Match on DELETE (SeaweedFS and AWS S3 do; a store
        that ignores it would delete a lock another request took over). Found out once, on
        a probe object: a DELETE If-Match a wrong ETag must be refused."""
        if self._conditional_delete is not None:
            return self._conditional_delete
        async with self._probing:
            if self._conditional_delete is None:
                key = self.layout.probe(f"conditional-delete-{secrets.token_hex(8)}")
                await s3.put_object(Bucket=self.layout.bucket, Key=key, Body=b"probe")
                try:
                    await s3.delete_object(
                        Bucket=self.layout.bucket, Key=key, IfMatch='"' + "0" * 32 + '"'
                    )
                    honoured = False  # deleted despite the wrong ETag
                except ClientError as exc:
                    honoured = precondition_failed(exc)
                    await s3.delete_object(Bucket=self.layout.bucket, Key=key)
                self._conditional_delete = honoured
        return self._conditional_delete

    async def drop_objects(
        self,
        upload_id: str,
        keep_lock: bool,
        held: tuple[SessionState, str] | None = None,
    ) -> int:
        """Delete the session's objects (the state first: from then on it is unknown), and
        abort its multipart upload; how many objects went.

        `held`: the state and its ETag, from a caller that holds the session. Then exactly
        the objects that state names go (the state If-Match its ETag where the store honours
        that), without a listing: a stray tail a failed request left is collected later by
        `purge_stale`, as the leftovers of an ended session. Otherwise the stored state is
        read and every object under the session's prefix listed and deleted."""
        layout = self.layout
        async with translated("delete an upload session"):
            s3 = await self.conn.client()
            if held is not None:
                return await self._drop_held(s3, upload_id, *held)
            found = await self.load(upload_id)
            state = found[0] if found is not None else None
            removed = 0
            with contextlib.suppress(ClientError):
                await s3.delete_object(Bucket=layout.bucket, Key=layout.state(upload_id))
            if state is not None:
                removed += 1
                if state.mpu is not None:
                    await self.abort_mpu(s3, layout.data(upload_id), state.mpu)
            token: str | None = None
            while True:
                page = await list_page(s3, layout.bucket, layout.session(upload_id), token)
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    lock = keep_lock and key == layout.lock(upload_id)
                    if key == layout.state(upload_id) or lock:
                        continue
                    with contextlib.suppress(ClientError):
                        await s3.delete_object(Bucket=layout.bucket, Key=key)
                        removed += 1
                if not page.get("IsTruncated"):
                    break
                token = page.get("NextContinuationToken")
        return removed

    async def _drop_held(self, s3: S3Client, upload_id: str, state: SessionState, etag: str) -> int:
        layout = self.layout
        if await self.conditional_delete(s3):
            # Refused: this request's hold expired and another request changed the
            # session, which is then theirs (what this one did is done either way).
            if not await self._delete_if(s3, layout.state(upload_id), etag):
                return 0
        else:
            with contextlib.suppress(ClientError):
                await s3.delete_object(Bucket=layout.bucket, Key=layout.state(upload_id))
        removed = 1
        if state.mpu is not None:
            await self.abort_mpu(s3, layout.data(upload_id), state.mpu)
        keys = [layout.tail(upload_id, state.tail)] if state.tail else []
        if state.sealed:
            keys.append(layout.data(upload_id))
        for key in keys:
            with contextlib.suppress(ClientError):
                await s3.delete_object(Bucket=layout.bucket, Key=key)
                removed += 1
        return removed

    async def abort_mpu(self, s3: S3Client, key: str, mpu: str) -> None:
        try:
            await s3.abort_multipart_upload(Bucket=self.layout.bucket, Key=key, UploadId=mpu)
        except ClientError as exc:
            if not missing(exc):
                raise
