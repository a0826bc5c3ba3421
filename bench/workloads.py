"""The measured operations. Each returns one number for one server; the caller repeats them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from bench._http import Connection, HttpError, Response

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MB = 1_000_000
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Blob:
    data: bytes
    digest: str

    @classmethod
    def of(cls, data: bytes) -> Blob:
        return cls(data, "sha256:" + hashlib.sha256(data).hexdigest())

    def descriptor(self, media_type: str) -> dict[str, object]:
        return {"mediaType": media_type, "digest": self.digest, "size": len(self.data)}


def unique_blob(base: bytes, tag: str) -> Blob:
    """`base` with a unique prefix: a fresh digest without generating fresh random data."""
    prefix = f"{tag}:{time.time_ns()}:".encode()
    return Blob.of(prefix + base[len(prefix) :])


class Target:
    """One registry as the workloads see it: a base URL and a way to open connections."""

    def __init__(self, name: str, url: str, authorization: str | None) -> None:
        self.name = name
        self.url = url
        self.authorization = authorization

    def connect(self) -> Connection:
        return Connection(self.url, self.authorization)


async def run_concurrent(
    target: Target,
    concurrency: int,
    jobs: Iterable[T],
    work: Callable[[Connection, T], Awaitable[None]],
) -> float:
    """Run `work` over `jobs` on `concurrency` connections; returns elapsed seconds."""
    queue = iter(jobs)
    conns = [target.connect() for _ in range(concurrency)]

    async def worker(conn: Connection) -> None:
        for job in queue:
            await work(conn, job)

    # Open the connections outside the timed part.
    await asyncio.gather(*(c.request("GET", "/v2/") for c in conns))
    start = time.perf_counter()
    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        elapsed = time.perf_counter() - start
        for conn in conns:
            conn.close()
    return elapsed


# blob uploads


def _with_digest(location: str, digest: str) -> str:
    return f"{location}{'&' if '?' in location else '?'}digest={digest}"


async def push_monolithic(conn: Connection, repo: str, blob: Blob) -> None:
    """POST to open an upload, then one PUT with the whole body and the digest."""
    started = (await conn.request("POST", f"/v2/{repo}/blobs/uploads/")).expect(202)
    location = started.headers["location"]
    (
        await conn.request(
            "PUT",
            _with_digest(location, blob.digest),
            {"Content-Type": "application/octet-stream"},
            blob.data,
        )
    ).expect(201)


async def push_chunked(conn: Connection, repo: str, blob: Blob, chunks: list[bytes]) -> None:
    """POST, one PATCH per chunk with Content-Range, then PUT ?digest= without a body."""
    location = (
        (await conn.request("POST", f"/v2/{repo}/blobs/uploads/")).expect(202).headers["location"]
    )
    offset = 0
    for chunk in chunks:
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
        }
        reply = (await conn.request("PATCH", location, headers, chunk)).expect(202)
        location = reply.headers["location"]
        offset += len(chunk)
    (await conn.request("PUT", _with_digest(location, blob.digest))).expect(201)


async def check_blob(conn: Connection, repo: str, blob: Blob) -> None:
    reply = (await conn.request("HEAD", f"/v2/{repo}/blobs/{blob.digest}")).expect(200)
    if int(reply.headers.get("content-length", "-1")) != len(blob.data):
        raise HttpError(f"{repo}@{blob.digest}: stored size differs from the pushed size")


async def timed_push(target: Target, repo: str, blob: Blob, chunk_size: int | None) -> float:
    """MB/s of one push of `blob` (chunked if `chunk_size`)."""
    conn = target.connect()
    chunks: list[bytes] = []
    if chunk_size:
        view = memoryview(blob.data)
        chunks = [bytes(view[i : i + chunk_size]) for i in range(0, len(blob.data), chunk_size)]
    try:
        await conn.request("GET", "/v2/")
        start = time.perf_counter()
        if chunk_size:
            await push_chunked(conn, repo, blob, chunks)
        else:
            await push_monolithic(conn, repo, blob)
        elapsed = time.perf_counter() - start
        await check_blob(conn, repo, blob)
    finally:
        conn.close()
    return len(blob.data) / MB / elapsed


async def timed_pull(target: Target, repo: str, blob: Blob) -> float:
    """MB/s of one GET of the blob, body streamed and discarded."""
    conn = target.connect()
    try:
        await conn.request("GET", "/v2/")
        start = time.perf_counter()
        reply = await conn.request("GET", f"/v2/{repo}/blobs/{blob.digest}", keep_body=False)
        elapsed = time.perf_counter() - start
        reply.expect(200)
        if reply.size != len(blob.data):
            raise HttpError(f"pulled {reply.size} bytes, expected {len(blob.data)}")
    finally:
        conn.close()
    return len(blob.data) / MB / elapsed


async def small_blobs(target: Target, repo: str, count: int, size: int, concurrency: int) -> float:
    """Blobs per second: `count` distinct blobs of `size` bytes, POST + PUT each."""
    blobs = [Blob.of(os.urandom(size)) for _ in range(count)]

    async def push(conn: Connection, blob: Blob) -> None:
        await push_monolithic(conn, repo, blob)

    elapsed = await run_concurrent(target, concurrency, blobs, push)
    return count / elapsed


# manifests


@dataclass(frozen=True, slots=True)
class ImageParts:
    config: Blob
    layer: Blob

    @classmethod
    def new(cls) -> ImageParts:
        config = json.dumps(
            {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
        ).encode()
        return cls(Blob.of(config), Blob.of(os.urandom(4096)))

    def manifest(self, note: str) -> bytes:
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": self.config.descriptor(OCI_CONFIG),
            "layers": [self.layer.descriptor(OCI_LAYER)],
            "annotations": {"org.example.bench": note},
        }
        return json.dumps(doc, separators=(",", ":")).encode()


async def push_parts(
    conn: Connection, repo: str, parts: ImageParts, mount_from: str | None
) -> None:
    """Put the config and layer blobs in `repo`, by cross-repository mount when possible."""
    for blob in (parts.config, parts.layer):
        if mount_from is not None:
            reply = await conn.request(
                "POST", f"/v2/{repo}/blobs/uploads/?mount={blob.digest}&from={mount_from}"
            )
            if reply.status == 201:
                continue
            reply.expect(202)  # not mounted: an upload was opened instead; finish it
            (
                await conn.request(
                    "PUT", _with_digest(reply.headers["location"], blob.digest), body=blob.data
                )
            ).expect(201)
            continue
        await push_monolithic(conn, repo, blob)


async def put_manifest(conn: Connection, repo: str, tag: str, body: bytes) -> Response:
    return (
        await conn.request(
            "PUT", f"/v2/{repo}/manifests/{tag}", {"Content-Type": OCI_MANIFEST}, body
        )
    ).expect(201)


async def manifests(
    target: Target, repo: str, parts: ImageParts, count: int, concurrency: int, round_: int
) -> float:
    """Manifests per second: `count` distinct manifests, each under its own tag."""
    jobs = [(f"r{round_}-m{i}", parts.manifest(f"{round_}-{i}")) for i in range(count)]

    async def put(conn: Connection, job: tuple[str, bytes]) -> None:
        await put_manifest(conn, repo, *job)

    return count / await run_concurrent(target, concurrency, jobs, put)


async def manifest_reads(
    target: Target, repo: str, tag: str, method: str, seconds: float, concurrency: int
) -> float:
    """Requests per second of GET or HEAD of a manifest by tag, for `seconds`."""
    deadline = 0.0
    done = 0
    headers = {"Accept": OCI_MANIFEST}

    async def hammer(conn: Connection, _job: int) -> None:
        nonlocal done, deadline
        if not deadline:  # the first worker to start begins the clock
            deadline = time.perf_counter() + seconds
        path = f"/v2/{repo}/manifests/{tag}"
        while time.perf_counter() < deadline:
            (await conn.request(method, path, headers)).expect(200)
            done += 1

    elapsed = await run_concurrent(target, concurrency, range(concurrency), hammer)
    return done / elapsed


async def fill_catalog(
    target: Target, prefix: str, parts: ImageParts, source: str, count: int
) -> None:
    """Create `count` repositories, each holding one manifest (not timed)."""
    body = parts.manifest("catalog")

    async def create(conn: Connection, i: int) -> None:
        repo = f"{prefix}/r{i:05d}"
        await push_parts(conn, repo, parts, mount_from=source)
        await put_manifest(conn, repo, "v1", body)

    await run_concurrent(target, 16, range(count), create)


async def catalog_ms(target: Target, n: int, at_least: int, requests: int) -> float:
    """Median milliseconds of GET /v2/_catalog?n=`n`, one request at a time."""
    conn = target.connect()
    times: list[float] = []
    try:
        reply = (await conn.request("GET", f"/v2/_catalog?n={n}")).expect(200)
        got = len(json.loads(reply.body)["repositories"])
        if got < min(n, at_least):
            raise HttpError(f"catalog returned {got} repositories, expected {min(n, at_least)}")
        for _ in range(requests):
            start = time.perf_counter()
            (await conn.request("GET", f"/v2/_catalog?n={n}")).expect(200)
            times.append(time.perf_counter() - start)
    finally:
        conn.close()
    times.sort()
    return times[len(times) // 2] * 1000
