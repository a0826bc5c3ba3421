"""Blob push/pull throughput of a replica on S3 (SeaweedFS on loopback) beside one on the
filesystem, and the S3 requests one manifest PUT costs (`python -m bench.s3_storage`).

Pushes are monolithic (POST ?digest=), pulls are GETs, one at a time over one keep-alive
connection; the numbers are MB/s of blob bytes. The request count is measured in process:
a Registry over S3Storage and the in-memory store, its S3 client's calls counted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from harness.replica import Replica
from harness.seaweed import SeaweedFS

from moorage.meta.memory import MemoryMetaStore
from moorage.registry import Registry
from moorage.storage.s3 import S3Storage

MiB = 1024 * 1024
CASES = [("32 MiB", 32 * MiB, 6), ("4 KiB", 4096, 300)]
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _throughput(client: httpx.Client, size: int, count: int) -> tuple[float, float]:
    blobs = [os.urandom(size) for _ in range(count)]
    digests = ["sha256:" + hashlib.sha256(b).hexdigest() for b in blobs]
    repo = f"bench/{os.urandom(4).hex()}"
    start = time.perf_counter()
    for body, digest in zip(blobs, digests, strict=True):
        r = client.post(f"/v2/{repo}/blobs/uploads/?digest={digest}", content=body)
        r.raise_for_status()
    push = time.perf_counter() - start
    start = time.perf_counter()
    for digest in digests:
        with client.stream("GET", f"/v2/{repo}/blobs/{digest}") as r:
            r.raise_for_status()
            for _ in r.iter_bytes(MiB):
                pass
    pull = time.perf_counter() - start
    total = size * count / 1e6
    return total / push, total / pull


async def _calls_per_manifest_put(url: str) -> dict[str, int]:
    storage = S3Storage(url)
    registry = Registry(storage, MemoryMetaStore())
    try:
        layers = [os.urandom(1024) for _ in range(2)]
        config = b'{"architecture":"amd64","os":"linux"}'
        descs = []
        for blob in [config, *layers]:
            digest = "sha256:" + hashlib.sha256(blob).hexdigest()

            async def body(b: bytes = blob) -> object:
                yield b

            await registry.uploads.monolithic("bench/m", digest, body(), len(blob))  # type: ignore[arg-type]
            descs.append(
                {"mediaType": "application/octet-stream", "digest": digest, "size": len(blob)}
            )
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MT_MANIFEST,
                "config": {**descs[0], "mediaType": "application/vnd.oci.image.config.v1+json"},
                "layers": descs[1:],
            }
        ).encode()
        before = Counter(storage.conn.calls)
        await registry.manifests.put("bench/m", "v1", manifest, MT_MANIFEST)
        return dict(storage.conn.calls - before)
    finally:
        await storage.close()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="moorage-s3bench-") as tmp:
        root = Path(tmp)
        store = SeaweedFS(root / "seaweed")
        store.start()
        os.environ.update(store.env())
        replicas = {
            "filesystem": Replica(root / "fs" / "data"),
            "s3": Replica(root / "s3" / "data", storage=store.storage_url("bench")),
        }
        try:
            rows = []
            for name, replica in replicas.items():
                replica.data_dir.parent.mkdir(parents=True)
                replica.start()
                with replica.client() as c:
                    for label, size, count in CASES:
                        push, pull = _throughput(c, size, count)
                        rows.append((name, label, count, push, pull))
                replica.stop()
            print(
                f"{'storage':<11} {'blob':<7} {'n':>4} {'push MB/s':>10} {'pull MB/s':>10}"
                f" {'push/s':>8} {'pull/s':>8}"
            )
            for name, label, count, push, pull in rows:
                mb = {c[0]: c[1] for c in CASES}[label] / 1e6
                print(
                    f"{name:<11} {label:<7} {count:>4} {push:>10.2f} {pull:>10.2f}"
                    f" {push / mb:>8.1f} {pull / mb:>8.1f}"
                )
            calls = asyncio.run(_calls_per_manifest_put(store.storage_url("bench-calls")))
            print(f"S3 requests of one manifest PUT (config + 2 layers): {calls}")
        finally:
            for replica in replicas.values():
                replica.stop()
            store.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
