"""Memory of one replica, per process, idle and under two loads that must not grow it:
`python -m bench.memory [--blob-gib 4] [--pullers 200] [--distribution]`.

1. idle, after start;
2. one blob of `--blob-gib` GiB pushed in 64 MiB PATCH chunks (streamed from a 64 MiB
   buffer: the client holds 64 MiB, whatever the blob size);
3. `--pullers` concurrent clients, each pulling an image (manifest by tag, then its 16 MiB
   layer) `--rounds` times.

The RSS of every process is sampled every 50 ms; each phase reports the peak per kind of
process (main: the replica process, which serves the API itself with one worker, or runs
granian's main loop with `--workers N`; API workers, when forked; etcd), of their sum, and of
their summed PSS (shared pages counted once: the workers fork from main).
"Flat" means the push and pull peaks stay near the idle figure whatever the blob size and
the number of clients.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

from bench import servers
from bench._http import Connection
from bench.workloads import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Blob, Target, put_manifest

MiB = 1 << 20
CHUNK = 64 * MiB


class PhaseSampler(threading.Thread):
    """Peak RSS per kind of process of `server` while a phase runs."""

    def __init__(self, server: servers.Server, interval: float = 0.05) -> None:
        super().__init__(name="memory-sampler", daemon=True)
        self.server, self.interval = server, interval
        self.peak: dict[str, int] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        by_role = self.server.rss_by_role()
        by_role["all"] = sum(by_role.values())
        # PSS: shared pages (the worker is forked from the supervisor) counted once
        by_role["all, PSS"] = sum(_pss_bytes(pid) for pid in self.server.tree())
        for role, value in by_role.items():
            self.peak[role] = max(self.peak.get(role, 0), value)

    def stop(self) -> dict[str, float]:
        self.stopping.set()
        self.join()
        self.sample()
        return {role: value / MiB for role, value in sorted(self.peak.items())}


def _pss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


async def _phase(server: servers.Server, work: object) -> dict[str, float]:
    sampler = PhaseSampler(server)
    sampler.start()
    try:
        if work is not None:
            await work  # type: ignore[misc]
        else:
            await asyncio.sleep(2)
    finally:
        peaks = sampler.stop()
    return peaks


async def push_big(target: Target, repo: str, size: int) -> None:
    """One blob of `size` bytes (a multiple of CHUNK), PATCHed chunk by chunk."""
    chunk = os.urandom(CHUNK)
    digest = hashlib.sha256()
    conn = target.connect()
    try:
        started = await conn.request("POST", f"/v2/{repo}/blobs/uploads/")
        location = started.expect(202).headers["location"]
        for offset in range(0, size, CHUNK):
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + CHUNK - 1}",
            }
            reply = (await conn.request("PATCH", location, headers, chunk)).expect(202)
            location = reply.headers["location"]
            digest.update(chunk)
        sep = "&" if "?" in location else "?"
        done = await conn.request("PUT", f"{location}{sep}digest=sha256:{digest.hexdigest()}")
        done.expect(201)
    finally:
        conn.close()


async def push_image(target: Target, repo: str) -> Blob:
    layer = Blob.of(os.urandom(16 * MiB))
    config = Blob.of(json.dumps({"architecture": "amd64", "os": "linux"}).encode())
    conn = target.connect()
    try:
        for blob in (config, layer):
            started = await conn.request("POST", f"/v2/{repo}/blobs/uploads/")
            location = started.expect(202).headers["location"]
            sep = "&" if "?" in location else "?"
            put = await conn.request("PUT", f"{location}{sep}digest={blob.digest}", {}, blob.data)
            put.expect(201)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config.descriptor(OCI_CONFIG),
                "layers": [layer.descriptor(OCI_LAYER)],
            }
        ).encode()
        (await put_manifest(conn, repo, "latest", manifest)).expect(201)
    finally:
        conn.close()
    return layer


async def pulls(target: Target, repo: str, layer: Blob, clients: int, rounds: int) -> None:
    async def one(conn: Connection) -> None:
        for _ in range(rounds):
            accept = {"Accept": OCI_MANIFEST}
            (await conn.request("GET", f"/v2/{repo}/manifests/latest", accept)).expect(200)
            reply = await conn.request("GET", f"/v2/{repo}/blobs/{layer.digest}", keep_body=False)
            reply.expect(200)
            if reply.size != len(layer.data):
                raise RuntimeError(f"pulled {reply.size} bytes of {len(layer.data)}")

    conns = [target.connect() for _ in range(clients)]
    try:
        await asyncio.gather(*(one(c) for c in conns))
    finally:
        for c in conns:
            c.close()


async def measure(server: servers.Server, blob_gib: float, clients: int, rounds: int) -> str:
    target = Target(server.name, server.url, server.authorization)
    size = max(CHUNK, int(blob_gib * (1 << 30)) // CHUNK * CHUNK)
    phases = {"idle": await _phase(server, None)}
    phases[f"push {size / (1 << 30):g} GiB blob"] = await _phase(
        server, push_big(target, "memory/big", size)
    )
    layer = await push_image(target, "memory/image")
    phases[f"{clients} concurrent pulls x {rounds}"] = await _phase(
        server, pulls(target, "memory/image", layer, clients, rounds)
    )
    roles = sorted({r for peaks in phases.values() for r in peaks})
    lines = [
        f"{server.name}: peak RSS per phase, MiB",
        "",
        "| phase | " + " | ".join(roles) + " |",
        "|---|" + "---:|" * len(roles),
    ]
    for name, peaks in phases.items():
        cells = " | ".join(f"{peaks.get(r, 0):,.0f}" for r in roles)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--blob-gib", type=float, default=4.0)
    parser.add_argument("--pullers", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="Moorage API workers")
    parser.add_argument("--distribution", action="store_true", help="Distribution as well")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="moorage-memory-") as tmp:
        under_test = [servers.moorage(Path(tmp), args.workers)]
        if args.distribution:
            under_test.append(servers.distribution(Path(tmp)))
        for server in under_test:
            server.start()
        try:
            for server in under_test:
                server.wait_ready()
                table = asyncio.run(measure(server, args.blob_gib, args.pullers, args.rounds))
                print(table + "\n", flush=True)
        except Exception:
            for server in under_test:
                print(f"--- {server.name} log ---\n{server.log_tail()}", file=sys.stderr)
            raise
        finally:
            for server in under_test:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
