"""The S3 driver's connection and its error translation.

Every call to the store runs inside `translated`: what the store or the network did wrong
(connection refused, a timeout, a 5xx, throttling, refused credentials) becomes
StorageUnavailable, which the API answers with a clear 503. A caller that expects a missing
key or a failed precondition catches the ClientError inside the block (`missing`,
`precondition_failed`) before it is translated.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

from moorage.errors import StorageUnavailable
from moorage.storage.s3location import S3Location, open_client

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import ListObjectsV2OutputTypeDef

_MISSING = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchUpload"})
_PRECONDITION = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def missing(exc: ClientError) -> bool:
    return error_code(exc) in _MISSING


def precondition_failed(exc: ClientError) -> bool:
    return error_code(exc) in _PRECONDITION


@contextlib.asynccontextmanager
async def translated(what: str) -> AsyncIterator[None]:
    try:
        yield
    except ClientError as exc:
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        raise StorageUnavailable(
            f"S3 blob storage refused to {what}: {err.get('Code', status)} "
            f"({err.get('Message') or f'HTTP {status}'})"
        ) from exc
    except (TimeoutError, BotoCoreError, aiohttp.ClientError, OSError) as exc:
        raise StorageUnavailable(f"S3 blob storage unreachable ({what}): {exc}") from exc


class S3Connection:
    """One aiobotocore client, opened on first use in the running event loop.

    `calls` counts the operations sent (HeadObject, PutObject...): the benchmark and the
    tests read it."""

    def __init__(self, location: S3Location, attempts: int = 3, read_timeout: float = 30.0) -> None:
        self.location = location
        self.attempts = attempts
        self.read_timeout = read_timeout
        self.calls: Counter[str] = Counter()
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: S3Client | None = None
        self._opening: asyncio.Lock | None = None

    async def client(self) -> S3Client:
        if self._client is not None:
            return self._client
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._client is None:
                stack = contextlib.AsyncExitStack()
                async with translated("connect"):
                    client = await stack.enter_async_context(
                        open_client(
                            self.location, attempts=self.attempts, read_timeout=self.read_timeout
                        )
                    )
                client.meta.events.register("before-call.s3", self._count)
                self._stack, self._client = stack, client
        return self._client

    def _count(self, model: Any, **_: Any) -> None:
        self.calls[model.name] += 1

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()


async def list_page(
    s3: S3Client, bucket: str, prefix: str, token: str | None
) -> ListObjectsV2OutputTypeDef:
    """One page (up to 1000 keys) of a listing; `token` continues a previous one."""
    if token:
        return await s3.list_objects_v2(
            Bucket=bucket, Prefix=prefix, MaxKeys=1000, ContinuationToken=token
        )
    return await s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1000)
