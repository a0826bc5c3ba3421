"""Blob storage from the synchronous recovery commands (backup, verify, restore): a
`BlobStorage` driven by an event loop of its own, for storage the filesystem code paths do not
reach (an s3:// location)."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Callable, Coroutine, Generator
from typing import Any, TypeVar

from moorage.oci.digest import parse_digest
from moorage.storage import BlobStorage, open_blob_storage

T = TypeVar("T")


class SyncBlobs:
    """The driver's coroutines run on an event loop in a thread of its own, so any thread
    may call (a backup reads small blobs from a pool of threads, concurrently)."""

    def __init__(self, spec: str) -> None:
        self.where = spec
        self.storage: BlobStorage = open_blob_storage(spec)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="moorage-blobs", daemon=True
        )
        self._thread.start()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    def size(self, digest: str) -> int | None:
        return self._run(self.storage.stat(digest))

    def read_small(self, digest: str, limit: int) -> bytes | None:
        """The blob whole if it is at most `limit` bytes; ValueError when larger."""
        size = self.size(digest)
        if size is None:
            return None
        if size > limit:
            raise ValueError(f"{size} bytes, over {limit}")
        return self._run(self.storage.read_bytes(digest))

    def chunks(self, digest: str) -> Generator[bytes, None, None]:
        stream = self.storage.read(digest).__aiter__()

        async def step() -> bytes:
            return await anext(stream, b"")

        try:
            while chunk := self._run(step()):
                yield chunk
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                self._run(close())

    def store(self, digest: str, fill: Callable[[Callable[[bytes], None]], bool]) -> bool:
        """Store the blob `digest` from `fill(write)` (False: it had no bytes) through an
        upload, committed only when the bytes hash to `digest`; whether it was stored."""
        expected = parse_digest(digest)
        hasher = expected.hasher()

        async def start() -> Any:
            # an id like the API's (32 hex digits): what every driver accepts
            handle = await self.storage.create_upload(secrets.token_hex(16))
            return handle, await handle.append(hasher)

        handle, writer = self._run(start())
        try:
            found = fill(lambda chunk: self._run(writer.write(chunk)))
            self._run(writer.close())
            if not found or hasher.hexdigest() != expected.encoded:
                self._run(handle.delete())
                return False
            self._run(handle.commit(digest))
            return True
        except BaseException:
            self._run(handle.delete())
            raise
        finally:
            self._run(handle.release())
