"""Upload sessions of the S3 driver: their state and their lock, shared by every replica.

A session is a state object (`uploads/<id>/state`, JSON) that only a compare-and-swap
replaces (PUT If-Match its ETag), a lock object (`uploads/<id>/lock`) and its bytes: the
parts of one S3 multipart upload at `uploads/<id>/data`, each exactly `PART_BYTES` (S3
wants at least 5 MiB but the last), then a tail object of fewer bytes. A request that
appends reads the tail back into its buffer, cuts parts as the buffer fills, and at the end
writes the new tail under a new random name and swaps the state: until that swap the
session is as it was (parts uploaded meanwhile are not in the state's part list, so they
are replaced by the next writer or dropped on completion), which is `AppendWriter.abort`.

One request at a time holds a session, on every replica: the lock object is created with
If-None-Match: * and deleted on release; a holder refreshes it (If-Match) as it works, and a
lock whose holder crashed is taken over (If-Match its ETag) once it has expired. The
handle a request holds, and its writer, are in `moorage.storage.s3upload`.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class SessionState:
    repo: str | None = None
    size: int = 0
    mpu: str | None = None  # the multipart upload at uploads/<id>/data
    parts: list[tuple[int, str, int]] = field(default_factory=list)  # number, ETag, size
    tail: str = ""  # the tail object's name (random: two writers never share one); "": none
    tail_size: int = 0
    sealed: bool = False  # uploads/<id>/data is complete (the upload was hashed)

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

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

    async def unlock(self, upload_id: str, token: str) -> None:
        """Delete the lock if this request still holds it."""
        key = self.layout.lock(upload_id)
        async with translated("unlock an upload session"):
            s3 = await self.conn.client()
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

    async def drop_objects(
        self, upload_id: str, keep_lock: bool, state: SessionState | None = None
    ) -> int:
        """Delete the session's objects (the state first: from then on it is unknown), and
        abort its multipart upload (that of `state` when the caller holds it, else of the
        stored state); how many objects went."""
        layout = self.layout
        prefix = layout.session(upload_id)
        removed = 0
        async with translated("delete an upload session"):
            s3 = await self.conn.client()
            if state is None:
                found = await self.load(upload_id)
                state = found[0] if found is not None else None
            with contextlib.suppress(ClientError):
                await s3.delete_object(Bucket=layout.bucket, Key=layout.state(upload_id))
            if state is not None:
                removed += 1
                if state.mpu is not None:
                    await self.abort_mpu(s3, layout.data(upload_id), state.mpu)
            token: str | None = None
            while True:
                page = await list_page(s3, layout.bucket, prefix, token)
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

    async def abort_mpu(self, s3: S3Client, key: str, mpu: str) -> None:
        try:
            await s3.abort_multipart_upload(Bucket=self.layout.bucket, Key=key, UploadId=mpu)
        except ClientError as exc:
            if not missing(exc):
                raise
