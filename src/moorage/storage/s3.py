"""Blob storage in an S3-compatible object store: the driver.

Committed blobs, housekeeping and the health probe live here; the upload sessions (on
multipart uploads, locked across replicas by conditional writes) in
`moorage.storage.s3sessions`, the key layout in `moorage.storage.s3layout`. Blobs are
streamed (ranged GETs read in 1 MiB pieces), never held whole, but for `read_bytes`
(manifests).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from botocore.exceptions import ClientError

from moorage.errors import (
    BlobUnknown,
    BlobUploadUnknown,
    DigestInvalid,
    StorageUnavailable,
    UploadBusy,
)
from moorage.oci.digest import parse_digest
from moorage.storage.base import BlobStorage, UploadHandle
from moorage.storage.s3io import S3Connection, error_code, list_page, missing, translated
from moorage.storage.s3layout import S3Layout
from moorage.storage.s3location import REDIRECT_SECONDS, S3Location, parse
from moorage.storage.s3sessions import S3Sessions, SessionState
from moorage.storage.s3upload import READ_BYTES, S3UploadHandle, hold, put_new

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import GetObjectOutputTypeDef, ObjectIdentifierTypeDef

PROBE_SECONDS = 2.5
#: Requests in flight per `read_many`, `modified_many` or `delete_blobs` call (garbage
#: collection runs a few calls at once; the client's pool holds 64 connections).
READ_MANY_CONCURRENCY = 16
#: Keys per DeleteObjects request (S3 takes up to 1,000).
DELETE_BATCH = 1000
#: A presigned URL of a redirected pull is handed out again for this long (seconds).
REDIRECT_REUSE = REDIRECT_SECONDS / 4
#: Presigned URLs kept for reuse.
SIGNED_KEPT = 4096

T = TypeVar("T")


async def _bounded(call: Callable[[str], Awaitable[T]], digests: list[str]) -> list[T]:
    """`call` of each digest, in order, `READ_MANY_CONCURRENCY` at a time."""
    slots = asyncio.Semaphore(READ_MANY_CONCURRENCY)

    async def one(digest: str) -> T:
        async with slots:
            return await call(digest)

    return list(await asyncio.gather(*map(one, digests)))


def _digest_of(layout: S3Layout, key: str) -> str | None:
    """The digest a key under blobs/ names (`<alg>/<2 hex>/<hex>`); None for a stray key."""
    parts = key[len(layout.blobs) :].split("/")
    if len(parts) != 3 or parts[1] != parts[2][:2]:
        return None
    digest = f"{parts[0]}:{parts[2]}"
    try:
        return digest if str(parse_digest(digest)) == digest else None
    except DigestInvalid:
        return None


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield  # an async generator that yields nothing


async def _body(resp: GetObjectOutputTypeDef) -> AsyncIterator[bytes]:
    async with translated("read a blob"), resp["Body"] as body:
        async for chunk in body.iter_chunks(READ_BYTES):
            yield chunk


class S3Storage(BlobStorage):
    def __init__(self, location: S3Location | str) -> None:
        self.location = parse(location) if isinstance(location, str) else location
        self.layout = S3Layout(self.location)
        self.conn = S3Connection(self.location)
        self.sessions = S3Sessions(self.conn, self.layout)
        # The health probe tries once and gives up early: it must say why within the
        # health loop's time (a request's retries take ~4 s against a dead endpoint).
        self.probe_conn = S3Connection(self.location, attempts=1, read_timeout=PROBE_SECONDS)
        # (digest, operation) -> (presigned URL, when it was signed), newest last
        self._signed: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()

    async def close(self) -> None:
        await self.conn.close()
        await self.probe_conn.close()

    # -- committed blobs --------------------------------------------------------------
    async def _head(self, digest: str) -> tuple[int, float] | None:
        async with translated("look up a blob"):
            s3 = await self.conn.client()
            try:
                head = await s3.head_object(Bucket=self.layout.bucket, Key=self.layout.blob(digest))
            except ClientError as exc:
                if missing(exc):
                    return None
                raise
        return head["ContentLength"], head["LastModified"].timestamp()

    async def stat(self, digest: str) -> int | None:
        found = await self._head(digest)
        return found[0] if found is not None else None

    def local_path(self, digest: str) -> Path | None:
        return None

    async def read(
        self, digest: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        if length == 0:
            return
        stream = await self.opened(digest, offset, length)
        if stream is None:
            raise BlobUnknown(f"blob {digest} is not in storage")
        async for chunk in stream:
            yield chunk

    async def opened(
        self, digest: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes] | None:
        """One GET: its answer says whether the blob is there, its body is the stream (no
        HEAD first). The body holds a pooled connection until the stream is read or closed."""
        if length == 0:  # no bytes to GET: a HEAD says whether the blob is there
            return _nothing() if await self.stat(digest) is not None else None
        key = self.layout.blob(digest)
        wanted = f"bytes={offset}-{offset + length - 1 if length is not None else ''}"
        async with translated("read a blob"):
            s3 = await self.conn.client()
            try:
                if offset or length is not None:
                    resp = await s3.get_object(Bucket=self.layout.bucket, Key=key, Range=wanted)
                else:
                    resp = await s3.get_object(Bucket=self.layout.bucket, Key=key)
            except ClientError as exc:
                if missing(exc):
                    return None
                if error_code(exc) == "InvalidRange":  # at or past the end: no bytes
                    return _nothing()
                raise
        return _body(resp)

    async def read_bytes(self, digest: str) -> bytes | None:
        async with translated("read a blob"):
            s3 = await self.conn.client()
            try:
                resp = await s3.get_object(Bucket=self.layout.bucket, Key=self.layout.blob(digest))
            except ClientError as exc:
                if missing(exc):
                    return None
                raise
            async with resp["Body"] as body:
                return await body.read()

    @property
    def redirects(self) -> bool:  # type: ignore[override]
        return self.location.redirect

    async def redirect_url(self, digest: str, method: str) -> str:
        """Signed locally (s3v4, query parameters): no request to the store. But botocore
        takes milliseconds of CPU to sign one (more than the rest of a redirected pull), so
        a URL is handed out again for `REDIRECT_REUSE` seconds: every client still gets one
        valid for at least three quarters of `REDIRECT_SECONDS`."""
        operation = "head_object" if method == "HEAD" else "get_object"
        now = time.monotonic()
        cached = self._signed.get((digest, operation))
        if cached is not None and now - cached[1] < REDIRECT_REUSE:
            return cached[0]
        async with translated("sign a blob's URL"):
            s3 = await self.conn.client()
            url = await s3.generate_presigned_url(
                operation,
                Params={"Bucket": self.layout.bucket, "Key": self.layout.blob(digest)},
                ExpiresIn=REDIRECT_SECONDS,
            )
        self._signed[(digest, operation)] = (url, now)
        self._signed.move_to_end((digest, operation))
        while len(self._signed) > SIGNED_KEPT:
            self._signed.popitem(last=False)
        return url

    async def read_many(self, digests: list[str]) -> list[bytes | None]:
        # Concurrent GETs, a bounded number at a time: one after another, each batch of
        # garbage collection's mark would pay a round trip per manifest.
        return await _bounded(self.read_bytes, digests)

    async def put_bytes(self, digest: str, data: bytes) -> None:
        async with translated("store a blob"):
            s3 = await self.conn.client()
            await put_new(s3, self.layout.bucket, self.layout.blob(digest), data)

    async def modified(self, digest: str) -> float | None:
        found = await self._head(digest)
        return found[1] if found is not None else None

    async def blobs(self) -> AsyncIterator[list[tuple[str, int, float]]]:
        token: str | None = None
        while True:
            async with translated("list blobs"):
                s3 = await self.conn.client()
                page = await list_page(s3, self.layout.bucket, self.layout.blobs, token)
            batch = []
            for obj in page.get("Contents", []):
                digest = _digest_of(self.layout, obj["Key"])
                if digest is not None:
                    batch.append((digest, obj["Size"], obj["LastModified"].timestamp()))
            if batch:
                yield batch
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    async def delete_blob(self, digest: str) -> int | None:
        size = await self.stat(digest)
        if size is None:
            return None
        async with translated("delete a blob"):
            s3 = await self.conn.client()
            await s3.delete_object(Bucket=self.layout.bucket, Key=self.layout.blob(digest))
        return size

    async def modified_many(self, digests: list[str]) -> list[float | None]:
        return await _bounded(self.modified, digests)

    async def delete_blobs(
        self, digests: list[str], listed: Mapping[str, int] | None = None
    ) -> list[int | None]:
        """One DeleteObjects request per `DELETE_BATCH` keys that are there (a HEAD and a
        DELETE per blob made the sweep of tens of thousands of blobs take minutes). Sizes
        come from `listed` (garbage collection's own listing) or concurrent HEADs."""
        known = listed or {}
        unknown = [d for d in digests if d not in known]
        looked = dict(zip(unknown, await _bounded(self.stat, unknown), strict=True))
        sizes = [known[d] if d in known else looked[d] for d in digests]
        found = [d for d, size in zip(digests, sizes, strict=True) if size is not None]
        for i in range(0, len(found), DELETE_BATCH):
            keys: list[ObjectIdentifierTypeDef] = [
                {"Key": self.layout.blob(d)} for d in found[i : i + DELETE_BATCH]
            ]
            async with translated("delete blobs"):
                s3 = await self.conn.client()
                resp = await s3.delete_objects(
                    Bucket=self.layout.bucket, Delete={"Objects": keys, "Quiet": True}
                )
            errors = resp.get("Errors", [])
            if errors:
                first = errors[0]
                raise StorageUnavailable(
                    f"S3 blob storage refused to delete {len(errors)} blob(s), the first "
                    f"{first.get('Key')}: {first.get('Code')} ({first.get('Message')})"
                )
        return sizes

    # -- uploads ----------------------------------------------------------------------
    async def create_upload(self, upload_id: str, repo: str | None = None) -> UploadHandle:
        # Stored when the handle is released (or when a part goes out): nobody else knows
        # the id before, and a monolithic push that commits at once never stores it.
        return S3UploadHandle(self.sessions, upload_id, SessionState(repo=repo), None, None)

    async def open_upload(self, upload_id: str) -> UploadHandle:
        return await hold(self.sessions, upload_id)

    async def upload_repo(self, upload_id: str) -> str | None:
        found = await self.sessions.load(upload_id)
        return found[0].repo if found is not None else None

    async def upload_size(self, upload_id: str) -> int | None:
        found = await self.sessions.load(upload_id)
        return found[0].size if found is not None else None

    async def purge_stale(self, upload_age: float, tmp_age: float) -> int:
        """Sessions whose state was not written for `upload_age` seconds go (under their
        lock); objects of ended sessions (no state) and multipart uploads no session lists
        go after `tmp_age`."""
        now = time.time()
        layout = self.layout
        # upload id -> (state's last write or None, newest object's, its keys); one page of
        # sessions at a time, so memory stays bounded whatever the number of uploads.
        removed = 0
        token: str | None = None
        while True:
            async with translated("list uploads"):
                s3 = await self.conn.client()
                page = await list_page(s3, layout.bucket, layout.uploads, token)
            sessions: dict[str, tuple[float | None, float]] = {}
            for obj in page.get("Contents", []):
                upload_id = layout.upload_id_of(obj["Key"])
                if upload_id is None:
                    continue
                mtime = obj["LastModified"].timestamp()
                state_at, newest = sessions.get(upload_id, (None, 0.0))
                if obj["Key"] == layout.state(upload_id):
                    state_at = mtime
                sessions[upload_id] = (state_at, max(newest, mtime))
            for upload_id, (state_at, newest) in sessions.items():
                removed += await self._purge_session(
                    upload_id, state_at, newest, now, upload_age, tmp_age
                )
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                break
        return removed + await self._purge_orphan_uploads(now, tmp_age)

    async def _purge_session(
        self,
        upload_id: str,
        state_at: float | None,
        newest: float,
        now: float,
        upload_age: float,
        tmp_age: float,
    ) -> int:
        if state_at is None:
            # Leftovers of an ended session (or a page boundary split it: then its state
            # is on the next page and it is not stale by `newest` anyway).
            if now - newest <= tmp_age or await self.sessions.load(upload_id) is not None:
                return 0
            return await self.sessions.drop_objects(upload_id, keep_lock=False)
        if now - state_at <= upload_age:
            return 0
        try:
            handle = await hold(self.sessions, upload_id)
        except (UploadBusy, BlobUploadUnknown):
            return 0
        try:
            found = await self.sessions.load(upload_id)
            if found is None or now - found[2] <= upload_age:
                return 0  # written to since it was listed
            removed = await self.sessions.drop_objects(upload_id, keep_lock=True)
            handle._ended = True
            return removed
        finally:
            await handle.release()

    async def _purge_orphan_uploads(self, now: float, tmp_age: float) -> int:
        """Abort multipart uploads under uploads/ that no session's state names."""
        layout = self.layout
        removed = 0
        markers: tuple[str, str] | None = None
        while True:
            async with translated("list multipart uploads"):
                s3 = await self.conn.client()
                if markers is None:
                    page = await s3.list_multipart_uploads(
                        Bucket=layout.bucket, Prefix=layout.uploads, MaxUploads=1000
                    )
                else:
                    page = await s3.list_multipart_uploads(
                        Bucket=layout.bucket,
                        Prefix=layout.uploads,
                        MaxUploads=1000,
                        KeyMarker=markers[0],
                        UploadIdMarker=markers[1],
                    )
                for mpu in page.get("Uploads", []):
                    upload_id = layout.upload_id_of(mpu["Key"])
                    if upload_id is None or now - mpu["Initiated"].timestamp() <= tmp_age:
                        continue
                    found = await self.sessions.load(upload_id)
                    if found is not None and found[0].mpu == mpu["UploadId"]:
                        continue
                    await self.sessions.abort_mpu(s3, mpu["Key"], mpu["UploadId"])
                    removed += 1
            if not page.get("IsTruncated"):
                return removed
            markers = (page.get("NextKeyMarker", ""), page.get("NextUploadIdMarker", ""))

    # -- health -----------------------------------------------------------------------
    async def probe(self) -> None:
        key = self.layout.probe(f"{secrets.token_hex(8)}")
        payload = secrets.token_bytes(32)
        try:
            async with asyncio.timeout(PROBE_SECONDS), translated("pass a write/read probe"):
                s3 = await self.probe_conn.client()
                await s3.put_object(Bucket=self.layout.bucket, Key=key, Body=payload)
                resp = await s3.get_object(Bucket=self.layout.bucket, Key=key)
                async with resp["Body"] as body:
                    got = await body.read()
                await s3.delete_object(Bucket=self.layout.bucket, Key=key)
        except TimeoutError:
            raise StorageUnavailable(
                f"S3 blob storage at {self.location.endpoint or 'AWS'} did not pass a "
                f"write/read probe within {PROBE_SECONDS:g} s"
            ) from None
        if got != payload:
            raise StorageUnavailable(
                f"S3 blob storage at {self.location} read back different bytes in a probe"
            )

    async def put_marker(self, name: str, data: bytes) -> None:
        async with translated("write a marker"):
            s3 = await self.probe_conn.client()
            await s3.put_object(Bucket=self.layout.bucket, Key=self.layout.probe(name), Body=data)

    async def remove_marker(self, name: str) -> None:
        async with asyncio.timeout(PROBE_SECONDS), translated("remove a marker"):
            s3 = await self.probe_conn.client()
            await s3.delete_object(Bucket=self.layout.bucket, Key=self.layout.probe(name))

    async def markers(self, prefix: str) -> list[tuple[str, float]]:
        start = self.layout.probe(prefix)
        async with translated("list markers"):
            s3 = await self.probe_conn.client()
            page = await list_page(s3, self.layout.bucket, start, None)
        cut = len(self.layout.probe(""))
        return [(o["Key"][cut:], o["LastModified"].timestamp()) for o in page.get("Contents", [])]

    def free_bytes(self) -> int | None:
        return None  # an object store has no free-space figure
