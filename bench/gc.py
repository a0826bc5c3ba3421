"""`python -m bench.gc`: garbage collection at size, and what it costs the pushes beside it.

One replica (one API worker, authenticated, plain HTTP on loopback) is filled without the
API, to save the hours pushing would take: the metadata with the store's own code
(`link_blob`, `put_manifest` over the replica's etcd, mutual TLS as a worker), the bytes
as files written straight into its blob directory (with `--s3`, as objects PUT straight
into its bucket: a SeaweedFS of the benchmark's own, harness/seaweed.py). The fill:

- `--blobs`/2 garbage blobs: linked in a repository, referenced by nothing (written
  first, so a grace period can separate them from everything after);
- `--manifests` manifests, each referencing its repository's config and one layer of its
  own (`--blobs`/2 layers in all: referenced); half of the manifests tagged, half untagged.

Then, each timed, with the peak RSS of the replica's processes sampled every 50 ms:

1. pushes alone (`--push-seconds`): images (config, 4 KiB layer, manifest) per second at
   concurrency 8, with the benchmark's client (bench.workloads);
2. a dry run, then a dry run with `untagged`, then a real run, all idle;
3. the garbage written again, then a real run while the same pushes go on: the push rate
   during the collection.

Every real run must free exactly the garbage (the script fails otherwise): nothing pushed
meanwhile, nothing referenced. Writes bench/results/gc.md (and gc.json with --output).

Usage: python -m bench.gc [--blobs 100000] [--manifests 50000] [--repos 500] [--s3]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import uvloop
from harness.process import REPO_ROOT
from harness.seaweed import SeaweedFS

from bench import servers, workloads
from bench._http import Connection
from bench.report import machine_info
from bench.servers import Server
from bench.workloads import ImageParts, Target
from moorage.cluster.tls import client_tls
from moorage.config import DataDir
from moorage.errors import StorageUnavailable, StoreUnavailable
from moorage.meta.etcd import EtcdMetaStore
from moorage.meta.records import ManifestRecord
from moorage.storage import open_blob_storage
from moorage.storage.paths import StorageLayout
from moorage.storage.s3 import S3Storage
from moorage.storage.s3io import translated
from moorage.storage.s3location import is_s3

RESULTS = REPO_ROOT / "bench" / "results"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
FILL_CONCURRENCY = 32
FILL_ATTEMPTS = 5
PUSH_CONCURRENCY = 8
MiB = 1 << 20
T = TypeVar("T")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def garbage_blob(round_: int, i: int) -> bytes:
    return f"gcbench garbage {round_}/{i}\n".encode() * 16


def layer_blob(i: int) -> bytes:
    return f"gcbench layer {i}\n".encode() * 16


def config_blob(repo: str) -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux", "repo": repo}).encode()


def manifest_body(config: bytes, layer: bytes) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": _digest(config), "size": len(config)},
        "layers": [{"mediaType": LAYER, "digest": _digest(layer), "size": len(layer)}],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


async def _each(items: Iterable[T], work: Callable[[T], Awaitable[None]]) -> None:
    """`work` of each item, FILL_CONCURRENCY at a time; an item whose store (etcd or S3)
    timed out is done again (each step is idempotent), a few times, as a loaded machine
    needs; progress on stderr every 5,000 items."""
    todo = iter(items)
    done = [0]
    start = time.perf_counter()

    async def worker() -> None:
        for item in todo:
            for attempt in range(FILL_ATTEMPTS):
                try:
                    await work(item)
                    break
                except (StoreUnavailable, StorageUnavailable):
                    if attempt == FILL_ATTEMPTS - 1:
                        raise
                    await asyncio.sleep(1.0 + attempt)
            done[0] += 1
            if done[0] % 5000 == 0:
                _log(f"  {done[0]:,} filled, {done[0] / (time.perf_counter() - start):.0f}/s")

    await asyncio.gather(*(worker() for _ in range(FILL_CONCURRENCY)))


class Filler:
    """Writes records with the replica's own store code, and blobs as files into its blob
    directory or as objects PUT under its S3 prefix."""

    def __init__(self, data_dir: Path, repos: int) -> None:
        config = DataDir(data_dir).load()
        self.store = EtcdMetaStore(config.store_endpoints, tls=client_tls(config))
        self.s3: S3Storage | None = None
        if is_s3(config.storage):
            storage = open_blob_storage(config.storage)
            assert isinstance(storage, S3Storage)
            self.s3 = storage
        else:
            self.layout = StorageLayout(Path(config.storage).resolve())
        self.repos = [f"gcbench/r{r:04d}" for r in range(repos)]

    def _write(self, data: bytes) -> str:
        digest = _digest(data)
        path = self.layout.blob(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return digest

    async def _file(self, data: bytes) -> str:
        if self.s3 is None:
            return await asyncio.to_thread(self._write, data)
        digest = _digest(data)
        async with translated("store a blob"):
            s3 = await self.s3.conn.client()
            await s3.put_object(
                Bucket=self.s3.layout.bucket, Key=self.s3.layout.blob(digest), Body=data
            )
        return digest

    async def close(self) -> None:
        await self.store.close()
        if self.s3 is not None:
            await self.s3.close()

    async def garbage(self, round_: int, count: int) -> None:
        async def one(i: int) -> None:
            data = garbage_blob(round_, i)
            digest = await self._file(data)
            assert await self.store.link_blob(self.repos[i % len(self.repos)], digest, len(data))

        await _each(range(count), one)

    async def images(self, manifests: int) -> None:
        async def config(repo: str) -> None:
            data = config_blob(repo)
            digest = await self._file(data)
            assert await self.store.link_blob(repo, digest, len(data))

        await _each(self.repos, config)

        async def one(i: int) -> None:
            repo = self.repos[i % len(self.repos)]
            layer = layer_blob(i)
            body = manifest_body(config_blob(repo), layer)
            digest = await self._file(layer)
            assert await self.store.link_blob(repo, digest, len(layer))
            await self._file(body)
            record = ManifestRecord(_digest(body), MANIFEST, len(body))
            tags = [f"t{i}"] if i % 2 == 0 else []  # half untagged
            refs = [_digest(config_blob(repo)), digest]
            missing = await self.store.put_manifest(repo, record, tags=tags, blobs=refs)
            assert not missing, missing

        await _each(range(manifests), one)

    async def files(self) -> int:
        """Blob files in storage (on S3: blob objects, listed through the driver)."""
        if self.s3 is None:
            return await asyncio.to_thread(
                lambda: sum(len(files) for _, _, files in os.walk(self.layout.blobs))
            )
        return sum([len(page) async for page in self.s3.blobs()])


@dataclass
class Peaks:
    """Peak RSS per process of a server's tree, sampled while a phase runs."""

    server: Server
    interval: float = 0.05
    peak: dict[int, int] = field(default_factory=dict)
    kinds: dict[int, bool] = field(default_factory=dict)  # pid: is etcd
    total: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Peaks:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def sample(self) -> None:
        total = 0
        for pid in self.server.tree():
            rss = servers._rss_bytes(pid)
            total += rss
            self.peak[pid] = max(self.peak.get(pid, 0), rss)
            if pid not in self.kinds:
                self.kinds[pid] = _is_etcd(pid)
        self.total = max(self.total, total)

    def etcd(self) -> int:
        return sum(v for pid, v in self.peak.items() if self.kinds[pid])

    def worker(self) -> int:
        """The largest Moorage process: the API worker that runs the collection."""
        return max((v for pid, v in self.peak.items() if not self.kinds[pid]), default=0)


def _is_etcd(pid: int) -> bool:
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return False
    return argv0.endswith(b"etcd")


class Pusher:
    """Pushes small images (config, 4 KiB layer, manifest) until told to stop."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.images = 0
        self.stopping = False

    async def run(self, seconds: float | None = None) -> float:
        """Images per second; for `seconds`, or until `stopping` is set."""
        deadline = time.perf_counter() + seconds if seconds is not None else None

        async def loop(conn: Connection, worker: int) -> None:
            n = 0
            while not self.stopping and (deadline is None or time.perf_counter() < deadline):
                parts = ImageParts.new()
                repo = f"gcbench/push{worker}"
                await workloads.push_parts(conn, repo, parts, None)
                await workloads.put_manifest(conn, repo, f"p{n}", parts.manifest(str(n)))
                self.images += 1
                n += 1

        self.images = 0
        elapsed = await workloads.run_concurrent(
            self.target, PUSH_CONCURRENCY, range(PUSH_CONCURRENCY), loop
        )
        return self.images / elapsed


async def collect(target: Target, body: dict[str, Any]) -> dict[str, Any]:
    conn = target.connect()
    try:
        reply = await conn.request(
            "POST", "/api/v0/gc", {"Content-Type": "application/json"}, json.dumps(body).encode()
        )
    finally:
        conn.close()
    reply.expect(200)
    result: dict[str, Any] = json.loads(reply.body)
    return result


@dataclass
class Row:
    what: str
    seconds: float
    blobs: int
    manifests: int
    worker_rss: int
    etcd_rss: int
    total_rss: int
    pushes: float | None = None


class Bench:
    def __init__(self, args: argparse.Namespace, server: Server) -> None:
        self.args = args
        self.server = server
        self.target = Target(server.name, server.url, server.authorization)
        self.filler = Filler(Path(server.argv[server.argv.index("--data-dir") + 1]), args.repos)
        self.rows: list[Row] = []
        self.idle: Peaks | None = None
        self.fill_seconds: dict[str, float] = {}
        self.filled_at = 0.0
        self.files_left = 0
        self.files_before = 0
        self.list_seconds = 0.0

    async def fill_garbage(self, round_: int) -> None:
        start = time.perf_counter()
        await self.filler.garbage(round_, self.args.blobs // 2)
        self.filled_at = time.time()
        self.fill_seconds[f"garbage {round_}"] = time.perf_counter() - start

    async def grace(self) -> float:
        """Seconds that put everything filled before the cutoff, every push after it."""
        await asyncio.sleep(max(0.0, self.filled_at + 1.5 - time.time()))
        return time.time() - self.filled_at - 0.5

    async def gc(self, what: str, body: dict[str, Any], push: bool = False) -> dict[str, Any]:
        pusher = Pusher(self.target)
        grace = await self.grace()
        with Peaks(self.server) as peaks:
            pushing = asyncio.create_task(pusher.run()) if push else None
            start = time.perf_counter()
            result = await collect(self.target, {**body, "grace": grace})
            seconds = time.perf_counter() - start
            rate = None
            if pushing is not None:
                pusher.stopping = True
                rate = await pushing
        _log(f"{what}: {seconds:.1f} s, {result['blobs']} blobs, {result['manifests']} manifests")
        self.rows.append(
            Row(
                what, seconds, result["blobs"], result["manifests"], peaks.worker(),
                peaks.etcd(), peaks.total, rate,
            )
        )  # fmt: skip
        return result

    async def run(self) -> None:
        await self.filler.store.connect()
        try:
            start = time.perf_counter()
            await self.fill_garbage(0)
            await self.filler.images(self.args.manifests)
            self.filled_at = time.time()
            self.fill_seconds["images"] = (
                time.perf_counter() - start - self.fill_seconds["garbage 0"]
            )
            _log(f"filled: {self.fill_seconds}")
            self.idle = Peaks(self.server)
            self.idle.sample()
            with Peaks(self.server) as peaks:
                rate = await Pusher(self.target).run(self.args.push_seconds)
            _log(f"pushes alone: {rate:.1f} images/s")
            self.rows.append(
                Row("pushes alone", self.args.push_seconds, 0, 0, peaks.worker(), peaks.etcd(),
                    peaks.total, rate)
            )  # fmt: skip
            garbage = self.args.blobs // 2
            start = time.perf_counter()
            self.files_before = await self.filler.files()
            self.list_seconds = time.perf_counter() - start
            _log(f"{self.files_before} blobs in storage, listed in {self.list_seconds:.1f} s")
            dry = await self.gc("dry run", {"dry_run": True})
            untagged = await self.gc("dry run, untagged", {"dry_run": True, "untagged": True})
            if untagged["manifests"] != self.args.manifests // 2:
                raise SystemExit(f"{untagged['manifests']} manifests untagged, not half")
            real = await self.gc("real run", {})
            await self.fill_garbage(1)
            during = await self.gc("real run while pushing", {}, push=True)
            for result in (dry, real, during):
                if result["blobs"] != garbage:
                    raise SystemExit(f"collected {result['blobs']} blobs, not {garbage}")
            expected = self.args.manifests * 2 + len(self.filler.repos)
            self.files_left = await self.filler.files()
            if self.files_left < expected:
                raise SystemExit(f"{self.files_left} files left, fewer than the {expected} in use")
        finally:
            await self.filler.close()

    def markdown(self) -> str:
        a = self.args
        idle = self.idle
        lines = [
            f"# Garbage collection at size ({time.strftime('%Y-%m-%d %H:%M')})",
            "",
            *(line for line in machine_info(REPO_ROOT) if "Distribution" not in line),
            "- blob storage: "
            + (
                "S3, a SeaweedFS `weed server` (S3 gateway) on loopback, one bucket, one prefix"
                if a.s3
                else "the filesystem"
            ),
            f"- load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}",
            f"- fill: {a.blobs // 2:,} garbage blobs (linked, unreferenced), "
            f"{a.manifests:,} manifests in {a.repos:,} repositories, each referencing its "
            f"repository's config and a layer of its own ({a.manifests:,} layers), half of "
            f"them tagged; written straight into etcd and the blob directory in "
            + ", ".join(f"{k} {v:.0f} s" for k, v in self.fill_seconds.items()),
            f"- pushes: images of a config, a 4 KiB layer and a manifest at concurrency "
            f"{PUSH_CONCURRENCY}, the benchmark's client",
            f"- replica at rest after the fill: API worker "
            f"{(idle.worker() if idle else 0) / MiB:.0f} MiB, etcd "
            f"{(idle.etcd() if idle else 0) / MiB:.0f} MiB, all processes "
            f"{(idle.total if idle else 0) / MiB:.0f} MiB",
            f"- blobs in storage before the first run (what each run lists): "
            f"{self.files_before:,}, listed through the driver by the benchmark in "
            f"{self.list_seconds:.1f} s",
            f"- files left in blob storage after the last run: {self.files_left:,}",
            "",
            "| run | seconds | blobs | manifests | peak RSS API worker | peak RSS etcd "
            "| peak RSS all | pushes, images/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            push = f"{r.pushes:.1f}" if r.pushes is not None else "—"
            lines.append(
                f"| {r.what} | {r.seconds:.1f} | {r.blobs:,} | {r.manifests:,} | "
                f"{r.worker_rss / MiB:.0f} MiB | {r.etcd_rss / MiB:.0f} MiB | "
                f"{r.total_rss / MiB:.0f} MiB | {push} |"
            )
        return "\n".join(lines) + "\n"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gc", description=__doc__.split("\n")[0])
    p.add_argument("--blobs", type=int, default=100_000, help="half of them garbage")
    p.add_argument("--manifests", type=int, default=50_000, help="half of them untagged")
    p.add_argument("--repos", type=int, default=500)
    p.add_argument("--push-seconds", type=float, default=20.0)
    p.add_argument(
        "--s3", action="store_true", help="blob storage on S3: a SeaweedFS of its own, on loopback"
    )
    p.add_argument("--output", type=Path, help="default: bench/results/gc.md (gc-s3.md with --s3)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Bench:
    args = _parse(argv)
    if args.output is None:
        args.output = RESULTS / ("gc-s3.md" if args.s3 else "gc.md")
    tmp = Path(tempfile.mkdtemp(prefix="moorage-gcbench-"))
    server = servers.moorage(tmp, 1)
    store = SeaweedFS(tmp / "seaweed") if args.s3 else None
    try:
        if store is not None:
            store.start()
            os.environ.update(store.env())  # the filler's own S3 client reads them
            server.argv += ["--storage", store.storage_url("gcbench")]
            server.env.update(store.env())
        server.start()
        server.wait_ready()
        bench = Bench(args, server)
        uvloop.run(bench.run())
    except BaseException:
        _log(server.log_tail())
        raise
    finally:
        server.stop()
        if store is not None:
            store.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    text = bench.markdown()
    args.output.write_text(text)
    print(text)
    return bench


if __name__ == "__main__":
    main()
