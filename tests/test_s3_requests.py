"""The S3 requests each registry operation costs, counted on the driver's client
(`S3Connection.calls`) against a real SeaweedFS, so that a change that adds requests shows
here. README "S3 storage" says what each remaining request is for; change both together.

The operations run in process (a Registry over S3Storage and the in-memory metadata store,
one replica): blob GET and HEAD as the API serves them (`Blobs.linked` then `Blobs.opened`,
`Blobs.stat`), uploads as their endpoints call `Uploads`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from harness.seaweed import SeaweedFS

from moorage.meta.memory import MemoryMetaStore
from moorage.registry import Registry
from moorage.registry.uploads import ChunkRange
from moorage.storage.s3 import S3Storage

T = TypeVar("T")
REPO = "count/app"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"

#: operation -> the S3 requests it costs (see README "S3 storage" for what each is for)
EXPECTED: dict[str, dict[str, int]] = {
    "monolithic POST ?digest= (2 KB)": {"PutObject": 1},
    "POST, then PUT ?digest= with the body (2 KB)": {
        "PutObject": 3,
        "GetObject": 1,
        "DeleteObject": 2,
    },
    "chunked: POST, 3 PATCH, PUT ?digest= (2 KB)": {
        "PutObject": 9,
        "GetObject": 4,
        "DeleteObject": 5,
    },
    # a HEAD per referenced blob, and one of its own bytes after the commit (a collection
    # may have deleted them between their store and the record: registry/manifests.py)
    "manifest PUT (config + 2 layers)": {"PutObject": 1, "HeadObject": 4},
    "blob GET": {"GetObject": 1},
    "blob HEAD": {"HeadObject": 1},
    "tag GET (manifest not cached)": {"GetObject": 1},
    "tag GET (manifest cached)": {},
}


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def _body(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def _operations(storage: S3Storage) -> dict[str, dict[str, int]]:
    registry = Registry(storage, MemoryMetaStore())
    uploads = registry.uploads
    counted: dict[str, dict[str, int]] = {}

    async def count(name: str, step: Awaitable[T]) -> T:
        before = Counter(storage.conn.calls)
        result = await step
        counted[name] = dict(storage.conn.calls - before)
        return result

    # Found out once per process (a probe object), before anything is counted.
    assert await storage.sessions.conditional_delete(await storage.conn.client())

    a, b, c = os.urandom(2048), os.urandom(2048), os.urandom(2048)
    await count(
        "monolithic POST ?digest= (2 KB)", uploads.monolithic(REPO, _digest(a), _body(a), len(a))
    )

    async def post_then_put() -> None:
        upload_id = await uploads.start(REPO)
        await uploads.finish(REPO, upload_id, _digest(b), _body(b), None, len(b))

    await count("POST, then PUT ?digest= with the body (2 KB)", post_then_put())

    async def chunked() -> None:
        upload_id = await uploads.start(REPO)
        for start in (0, 700, 1400):
            piece = c[start : start + 700] if start < 1400 else c[start:]
            chunk = ChunkRange(start, start + len(piece) - 1)
            await uploads.append(REPO, upload_id, _body(piece), chunk, len(piece))
        await uploads.finish(REPO, upload_id, _digest(c), None, None, None)

    await count("chunked: POST, 3 PATCH, PUT ?digest= (2 KB)", chunked())

    config = b'{"architecture":"amd64","os":"linux"}'
    await uploads.monolithic(REPO, _digest(config), _body(config), len(config))
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _digest(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": "application/octet-stream", "digest": _digest(x), "size": len(x)}
                for x in (a, b)
            ],
        }
    ).encode()
    pushed = registry.manifests.put(REPO, "v1", manifest, MT_MANIFEST)
    await count("manifest PUT (config + 2 layers)", pushed)

    async def blob_get(data: bytes) -> bytes:
        digest, size = await registry.blobs.linked(REPO, _digest(data))
        stream = await registry.blobs.opened(digest, size)
        return b"".join([piece async for piece in stream])

    for data in (a, b, c):  # every upload stored its blob whole
        assert await count("blob GET", blob_get(data)) == data
    assert (await count("blob HEAD", registry.blobs.stat(REPO, _digest(a))))[1] == len(a)

    cold = Registry(storage, registry.meta)  # a replica that has not read the manifest yet
    got = await count("tag GET (manifest not cached)", cold.manifests.get(REPO, "v1"))
    assert got.body == manifest
    await count("tag GET (manifest cached)", cold.manifests.get(REPO, "v1"))
    return counted


def test_s3_requests_per_operation(seaweed: SeaweedFS, s3_url: str) -> None:
    async def run() -> dict[str, dict[str, int]]:
        storage = S3Storage(s3_url)
        try:
            return await _operations(storage)
        finally:
            await storage.close()

    counted = asyncio.run(run())
    for name, calls in counted.items():  # shown with -s, and in a failure's report
        print(f"{sum(calls.values()):3}  {name}: {calls}")
    assert counted == EXPECTED
    # Every session ended: nothing is left under uploads/ (no lock, state or tail).
    storage = S3Storage(s3_url)
    assert seaweed.keys(storage.layout.uploads) == []
