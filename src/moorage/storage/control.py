"""Control objects: the small files Moorage keeps in blob storage beside the blobs (the journal
on S3, the fence marker on S3, join and backup probes), on a directory or an S3 location.

    get(name)            the bytes and an ETag, or None
    put(name, data)      create or replace, atomically (readers see the old or the new bytes)
    create(name, data)   create only if absent: False when `name` exists (S3: If-None-Match)
    names(prefix)        every name under `prefix`, in pages, sorted
    delete(name)         gone (absent is fine)

S3 only: `replace(name, data, etag)` replaces only the version read (If-Match), what the
fence marker needs so that two emergency repairs cannot both win. Names are relative to the
storage root (the S3 prefix); `/` separates levels on both.

The filesystem's journal and fence marker keep their own code (`storage.journal`,
`cluster.fence`): this layer is what the S3 versions of them and the probes stand on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from moorage.errors import StorageUnavailable
from moorage.storage.s3location import S3Location, is_s3, open_client, parse

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

T = TypeVar("T")
PAGE = 1000  # names per listing request (S3's own maximum)


@dataclass(frozen=True)
class Stored:
    data: bytes
    etag: str


class ControlStore(ABC):
    where: str  # for messages: the directory or the s3:// URL

    @abstractmethod
    async def get(self, name: str, limit: int = 16 * 1024 * 1024) -> Stored | None:
        """The object's bytes (StorageUnavailable when over `limit`) and ETag, or None."""

    @abstractmethod
    async def put(self, name: str, data: bytes) -> None: ...

    @abstractmethod
    async def create(self, name: str, data: bytes) -> bool:
        """Store `data` only if `name` does not exist: True if this call created it."""

    @abstractmethod
    def names(self, prefix: str, page: int = PAGE) -> AsyncIterator[list[str]]:
        """Every name starting with `prefix`, sorted, `page` at a time (never one unbounded
        read)."""

    @abstractmethod
    async def delete(self, name: str) -> None: ...

    async def aclose(self) -> None:
        return None


def open_control(spec: str | Path) -> ControlStore:
    """The control store of `--storage` `spec`: an s3:// location or a directory."""
    if isinstance(spec, str) and is_s3(spec):
        return S3Control(parse(spec))
    return FilesystemControl(Path(spec))


class FilesystemControl(ControlStore):
    """Files under the storage directory; writes go through a temporary file and a rename
    (create through a hard link, which fails if the name exists)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)

    def _path(self, name: str) -> Path:
        return self.root / name

    def _stage(self, path: Path, data: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp

    async def get(self, name: str, limit: int = 16 * 1024 * 1024) -> Stored | None:
        def read() -> Stored | None:
            try:
                with open(self._path(name), "rb") as fh:
                    st = os.fstat(fh.fileno())
                    data = fh.read(limit + 1)
            except FileNotFoundError:
                return None
            if len(data) > limit:
                raise StorageUnavailable(f"{self._path(name)} is larger than {limit} bytes")
            return Stored(data, f"{st.st_mtime_ns:x}-{st.st_ino:x}-{st.st_size:x}")

        return await self._io(read)

    async def put(self, name: str, data: bytes) -> None:
        def write() -> None:
            path = self._path(name)
            self._stage(path, data).replace(path)

        await self._io(write)

    async def create(self, name: str, data: bytes) -> bool:
        def write() -> bool:
            path = self._path(name)
            tmp = self._stage(path, data)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            finally:
                tmp.unlink(missing_ok=True)
            return True

        return await self._io(write)

    async def names(self, prefix: str, page: int = PAGE) -> AsyncIterator[list[str]]:
        head = prefix.rpartition("/")[0]
        base = self.root / head if head else self.root

        def scan() -> list[str]:
            found: list[str] = []
            try:
                for dirpath, _dirs, files in os.walk(base):
                    rel = Path(dirpath).relative_to(self.root).as_posix()
                    for f in files:
                        name = f if rel == "." else f"{rel}/{f}"
                        if name.startswith(prefix) and not f.startswith("."):
                            found.append(name)
            except FileNotFoundError:
                return []
            return sorted(found)

        found: list[str] = await self._io(scan)
        for i in range(0, len(found), page):
            yield found[i : i + page]

    async def delete(self, name: str) -> None:
        await self._io(lambda: self._path(name).unlink(missing_ok=True))

    async def _io(self, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(fn)
        except OSError as exc:
            raise StorageUnavailable(
                f"blob storage at {self.root}: {exc.strerror or exc}; make it readable and "
                "writable by this user"
            ) from exc


class S3Control(ControlStore):
    """Objects under the location's prefix, through one client opened on first use (call
    `aclose` at the end). Every S3 failure raises StorageUnavailable saying which request
    failed and why."""

    def __init__(self, location: S3Location, attempts: int = 3, read_timeout: float = 30.0) -> None:
        """`attempts` and `read_timeout` per request as `open_client` takes them (the fence
        watch tries once, briefly: its own loop is the retry)."""
        self.location = location
        self.where = location.url()
        self.attempts = attempts
        self.read_timeout = read_timeout
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: S3Client | None = None

    async def client(self) -> S3Client:
        if self._client is None:
            stack = contextlib.AsyncExitStack()
            self._client = await stack.enter_async_context(
                open_client(self.location, attempts=self.attempts, read_timeout=self.read_timeout)
            )
            self._stack = stack
        return self._client

    async def aclose(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    def _key(self, name: str) -> str:
        return self.location.key(name)

    def _failed(self, what: str, name: str, exc: Exception) -> StorageUnavailable:
        return StorageUnavailable(
            f"S3 {what} of {self._key(name)} in bucket {self.location.bucket} failed: "
            f"{_reason(exc)}; check the endpoint, the credentials and the bucket's permissions"
        )

    async def get(self, name: str, limit: int = 16 * 1024 * 1024) -> Stored | None:
        s3 = await self.client()
        try:
            resp = await s3.get_object(Bucket=self.location.bucket, Key=self._key(name))
            if resp["ContentLength"] > limit:
                resp["Body"].close()
                raise StorageUnavailable(f"{self._key(name)} is larger than {limit} bytes")
            async with resp["Body"] as body:
                data = await body.read()
        except StorageUnavailable:
            raise
        except Exception as exc:
            if error_code(exc) in ("NoSuchKey", "404"):
                return None
            raise self._failed("GET", name, exc) from exc
        return Stored(data, resp["ETag"])

    async def put(self, name: str, data: bytes) -> None:
        await self._put("PUT", name, data, {})

    async def create(self, name: str, data: bytes) -> bool:
        return await self._put("conditional PUT", name, data, {"IfNoneMatch": "*"})

    async def replace(self, name: str, data: bytes, etag: str) -> bool:
        """Replace `name` only if it is still the version whose ETag is `etag`."""
        return await self._put("conditional PUT", name, data, {"IfMatch": etag})

    async def _put(self, what: str, name: str, data: bytes, condition: dict[str, Any]) -> bool:
        s3 = await self.client()
        try:
            await s3.put_object(
                Bucket=self.location.bucket, Key=self._key(name), Body=data, **condition
            )
        except Exception as exc:
            # 409 ConditionalRequestConflict: a concurrent conditional write on the same key
            if condition and error_code(exc) in ("PreconditionFailed", "412", "409"):
                return False
            if condition and error_code(exc) == "ConditionalRequestConflict":
                return False
            raise self._failed(what, name, exc) from exc
        return True

    async def names(self, prefix: str, page: int = PAGE) -> AsyncIterator[list[str]]:
        s3 = await self.client()
        root = self._key("")
        args: dict[str, Any] = {
            "Bucket": self.location.bucket,
            "Prefix": self._key(prefix),
            "MaxKeys": page,
        }
        while True:
            try:
                resp = await s3.list_objects_v2(**args)
            except Exception as exc:
                raise self._failed("LIST", prefix, exc) from exc
            found = [o["Key"][len(root) :] for o in resp.get("Contents", [])]
            if found:
                yield found
            token = resp.get("NextContinuationToken")
            if not resp.get("IsTruncated") or not token:
                return
            args["ContinuationToken"] = token

    async def delete(self, name: str) -> None:
        s3 = await self.client()
        try:
            await s3.delete_object(Bucket=self.location.bucket, Key=self._key(name))
        except Exception as exc:
            if error_code(exc) not in ("NoSuchKey", "404"):
                raise self._failed("DELETE", name, exc) from exc


def error_code(exc: Exception) -> str:
    """The S3 error code of a botocore ClientError ('' for any other exception)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _reason(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        err = response.get("Error", {})
        return f"{err.get('Code', '?')}: {err.get('Message', '') or exc}"
    return str(exc) or type(exc).__name__


async def conditional_writes_work(control: S3Control) -> bool:
    """Whether the store honours If-None-Match on PUT: a second create of one probe object
    must be refused. Stores that ignore the header replace the object and answer 200."""
    name = f"probe/conditional-{secrets.token_hex(8)}"
    try:
        if not await control.create(name, b"1"):
            return False
        return not await control.create(name, b"2")
    except StorageUnavailable as exc:
        if "NotImplemented" in str(exc) or "501" in str(exc):
            return False
        raise
    finally:
        with contextlib.suppress(StorageUnavailable):
            await control.delete(name)


PROBE_DIR = "probe"  # as storage.paths.StorageLayout.probe
_PROBE_NAME = re.compile(r"^probe/join-[0-9a-f]{16}$")


PROBE_TTL = 3600.0  # seconds: a probe older than this was left by a refused join or backup


async def leave_probe(control: ControlStore, now: float | None = None) -> tuple[str, str]:
    """Write a probe object another host must find (join, backup): its name and content.

    The name begins with the time it was written (8 hex digits of Unix seconds, then 8
    random), so names sort oldest first: a host that looked in other storage (a refused join
    or backup) deletes only where it looked and leaves the probe here, and each new probe
    first deletes those older than PROBE_TTL from the first page of names (bounded work)."""
    now = time.time() if now is None else now
    with contextlib.suppress(StorageUnavailable):  # a purge that fails never blocks a probe
        async for page in control.names(f"{PROBE_DIR}/join-"):
            stale = [n for n in page if _PROBE_NAME.match(n) and _written(n) < now - PROBE_TTL]
            for old in stale:
                await control.delete(old)
            break
    name = f"{PROBE_DIR}/join-{int(now) & 0xFFFFFFFF:08x}{secrets.token_hex(4)}"
    content = secrets.token_hex(16)
    await control.create(name, content.encode())
    return name, content


def _written(name: str) -> int:
    """The Unix time at the start of a probe's name (as `leave_probe` names them)."""
    return int(name[len(PROBE_DIR) + len("/join-") :][:8], 16)


async def find_probe(control: ControlStore, name: str, content: str) -> bool:
    """Whether the probe `name` (as `leave_probe` named it) holds `content`; then it is
    deleted (a probe holding something else is left)."""
    if not _PROBE_NAME.match(name):
        return False
    try:
        stored = await control.get(name, limit=1024)
    except StorageUnavailable:
        return False
    if stored is None or stored.data != content.encode():
        return False  # not the probe asked about: left alone
    with contextlib.suppress(StorageUnavailable):
        await control.delete(name)
    return True


def local_probe_seen(root: Path, name: str, content: str) -> bool:
    """`find_probe` in a local storage directory `root`: `name` must be a probe's (as
    `leave_probe` names them, under probe/), at most 1 KiB is read, and the file is deleted
    only when it holds `content`: a name or directory an answer chose never costs a file."""
    if not _PROBE_NAME.match(name):
        return False
    path = root / name
    try:
        with open(path, "rb") as fh:
            data = fh.read(1024)
    except OSError:
        return False
    if data != content.encode():
        return False
    with contextlib.suppress(OSError):
        path.unlink()
    return True


def probe_seen(spec: str, name: str, content: str) -> bool:
    """`find_probe` in storage `spec`, from synchronous code (no running event loop)."""

    async def run() -> bool:
        control = open_control(spec)
        try:
            return await find_probe(control, name, content)
        finally:
            await control.aclose()

    return asyncio.run(run())
