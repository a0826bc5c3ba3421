"""`python -m bench.s3`: Moorage and Distribution side by side on the same S3 store.

SeaweedFS (harness/seaweed.py, its S3 gateway on loopback) holds the blobs of four servers,
each under a prefix of its own in one bucket:

- Moorage (`--storage s3://...`, one replica, its own etcd) and Distribution (its `s3`
  driver, `redirect: disable: true`): both stream pulls through the registry;
- the same two with pulls by redirect: Moorage `&redirect=on`, Distribution's default
  (`307` to a presigned URL of the store, which the client follows).

The workloads are the filesystem benchmark's (`python -m bench`, bench/workloads.py, the
same HTTP client): a monolithic push (POST + PUT), a chunked push (PATCH per chunk), 4 KiB
blobs at concurrency 16, manifest PUTs at concurrency 16, and pulls: one large blob, and
4 KiB blobs at concurrency 16, each through the registry and by redirect (the client opens
its own connection to the store, as a real one does). Runs alternate servers so that drift
hits all alike; values are medians. Writes bench/results/s3.md (and s3.json).

Usage: python -m bench.s3 [--blob-mib 32] [--chunk-mib 8] [--small 300] [--manifests 200]
[--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import uvloop
from harness.process import REPO_ROOT, free_port
from harness.seaweed import ACCESS_KEY, BUCKET, REGION, SECRET_KEY, SeaweedFS

from bench import servers, workloads
from bench._http import Connection, HttpError
from bench.report import machine_info
from bench.servers import Server
from bench.workloads import Blob, ImageParts, Target

RESULTS = REPO_ROOT / "bench" / "results"
MiB = 1 << 20
SMALL = 4096
CONCURRENCY = 16

MOORAGE, DISTRIBUTION = "Moorage", "Distribution"
MOORAGE_R, DISTRIBUTION_R = "Moorage redirect", "Distribution redirect"
DIRECT, REDIRECT = (MOORAGE, DISTRIBUTION), (MOORAGE_R, DISTRIBUTION_R)


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    unit: str
    pair: tuple[str, str]  # (Moorage's server, Distribution's)


ROWS = [
    Row("push_mono", "push monolithic (POST+PUT), {blob}", "MB/s", DIRECT),
    Row("push_chunked", "push chunked ({chunk} PATCH), {blob}", "MB/s", DIRECT),
    Row("small_blobs", "4 KiB blob pushes, concurrency 16", "blobs/s", DIRECT),
    Row("manifests", "manifest PUT, concurrency 16", "manifests/s", DIRECT),
    Row("pull", "pull {blob}, through the registry", "MB/s", DIRECT),
    Row("pull_redirect", "pull {blob}, by redirect", "MB/s", REDIRECT),
    Row("small_pulls", "4 KiB blob pulls, concurrency 16, through the registry", "blobs/s", DIRECT),
    Row("small_pulls_redirect", "4 KiB blob pulls, concurrency 16, by redirect", "blobs/s",
        REDIRECT),
]  # fmt: skip


def _loadavg() -> str:
    return ", ".join(f"{v:.1f}" for v in os.getloadavg())


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


DISTRIBUTION_S3 = """\
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  s3:
    region: {region}
    regionendpoint: {endpoint}
    forcepathstyle: true
    bucket: {bucket}
    accesskey: {access}
    secretkey: {secret}
    secure: false
    v4auth: true
    rootdirectory: /{prefix}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
{redirect}http:
  addr: 127.0.0.1:{port}
  headers:
    X-Content-Type-Options: [nosniff]
"""


def distribution_s3(tmp: Path, store: SeaweedFS, name: str, redirect: bool) -> Server:
    """Distribution with its `s3` driver on `store`; `redirect: disable: true` unless
    `redirect`."""
    port = free_port()
    slug = name.lower().replace(" ", "-")
    config = tmp / f"{slug}.yml"
    config.write_text(
        DISTRIBUTION_S3.format(
            region=REGION,
            endpoint=store.endpoint,
            bucket=BUCKET,
            access=ACCESS_KEY,
            secret=SECRET_KEY,
            prefix=f"bench-{slug}",
            redirect="" if redirect else "  redirect:\n    disable: true\n",
            port=port,
        )
    )
    return Server(
        name=name,
        url=f"http://127.0.0.1:{port}",
        argv=[servers.DISTRIBUTION_BINARY, "serve", str(config)],
        log_path=tmp / f"{slug}.log",
        # The AWS SDK for Go loads AWS_CA_BUNDLE into a transport Distribution replaces (it
        # panics at start); the endpoint is plain HTTP on loopback.
        env={"AWS_CA_BUNDLE": ""},
    )


def moorage_s3(tmp: Path, store: SeaweedFS, name: str, redirect: bool) -> Server:
    """One Moorage replica whose blob storage is `store` (`&redirect=on` with `redirect`)."""
    server = servers.moorage(tmp, None, name=name)
    storage = store.storage_url(f"bench-{name.lower().replace(' ', '-')}")
    server.argv += ["--storage", storage + ("&redirect=on" if redirect else "")]
    server.env.update(store.env())
    return server


# pulls that follow a redirect as a client does


class Puller:
    """GETs blobs from a registry; a `307` is followed on a keep-alive connection of its own
    to the store, without the registry's credentials."""

    def __init__(self, target: Target) -> None:
        self.registry = target.connect()
        self.stores: dict[str, Connection] = {}
        self.redirected = 0

    async def get(self, repo: str, blob: Blob) -> None:
        reply = await self.registry.request(
            "GET", f"/v2/{repo}/blobs/{blob.digest}", keep_body=False
        )
        if reply.status == 307:
            location = reply.headers["location"]
            parts = urlsplit(location)
            origin = f"{parts.scheme}://{parts.netloc}"
            store = self.stores.setdefault(origin, Connection(origin))
            reply = await store.request("GET", location, keep_body=False)
            self.redirected += 1
        reply.expect(200)
        if reply.size != len(blob.data):
            raise HttpError(
                f"pulled {reply.size} bytes of {blob.digest}, expected {len(blob.data)}"
            )

    def close(self) -> None:
        self.registry.close()
        for conn in self.stores.values():
            conn.close()


async def timed_pull(target: Target, repo: str, blob: Blob, expect_redirect: bool) -> float:
    """MB/s of one GET of the blob (and of the store's answer when redirected)."""
    puller = Puller(target)
    try:
        await puller.registry.request("GET", "/v2/")
        start = time.perf_counter()
        await puller.get(repo, blob)
        elapsed = time.perf_counter() - start
    finally:
        puller.close()
    if bool(puller.redirected) != expect_redirect:
        raise HttpError(f"{target.name}: redirected {puller.redirected} pulls, expected "
                        f"{'one' if expect_redirect else 'none'}")  # fmt: skip
    return len(blob.data) / workloads.MB / elapsed


async def small_pulls(target: Target, repo: str, blobs: list[Blob], expect_redirect: bool) -> float:
    """Blobs per second: GETs of `blobs` at concurrency 16."""
    pullers = [Puller(target) for _ in range(CONCURRENCY)]
    queue = iter(blobs)
    for p in pullers:
        await p.registry.request("GET", "/v2/")

    async def worker(p: Puller) -> None:
        for blob in queue:
            await p.get(repo, blob)

    start = time.perf_counter()
    try:
        await asyncio.gather(*(worker(p) for p in pullers))
    finally:
        elapsed = time.perf_counter() - start
        for p in pullers:
            p.close()
    redirected = sum(p.redirected for p in pullers)
    if redirected != (len(blobs) if expect_redirect else 0):
        raise HttpError(f"{target.name}: {redirected} of {len(blobs)} pulls redirected")
    return len(blobs) / elapsed


# the run


@dataclass
class Bench:
    args: argparse.Namespace
    servers: dict[str, Server]
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    load: list[str] = field(default_factory=list)  # load averages at the start and the end

    def target(self, name: str) -> Target:
        s = self.servers[name]
        return Target(s.name, s.url, s.authorization)

    async def measure(
        self, key: str, names: tuple[str, ...], run: Callable[[Target, int], Awaitable[float]]
    ) -> None:
        for rep in range(self.args.reps):
            for name in names:
                server = self.servers[name]
                before = server.cpu_seconds()
                value = await run(self.target(name), rep)
                self.samples.setdefault(key, {}).setdefault(name, []).append(value)
                spent = server.cpu_seconds() - before
                self.cpu.setdefault(key, {})[name] = self.cpu.get(key, {}).get(name, 0.0) + spent
            _log(f"  {key} run {rep + 1}: " + ", ".join(
                f"{n} {self.samples[key][n][-1]:,.1f}" for n in names))  # fmt: skip

    async def run(self) -> None:
        a = self.args
        self.load.append(_loadavg())
        size, chunk = a.blob_mib * MiB, a.chunk_mib * MiB
        base = os.urandom(size)
        _log("pushes")

        async def mono(t: Target, rep: int) -> float:
            blob = workloads.unique_blob(base, f"mono{rep}")
            return await workloads.timed_push(t, "bench/mono", blob, None)

        async def chunked(t: Target, rep: int) -> float:
            blob = workloads.unique_blob(base, f"chunked{rep}")
            return await workloads.timed_push(t, "bench/chunked", blob, chunk)

        async def small(t: Target, rep: int) -> float:
            return await workloads.small_blobs(t, "bench/small", a.small, SMALL, CONCURRENCY)

        parts = ImageParts.new()
        for name in DIRECT:  # the manifests' blobs, not timed
            conn = self.target(name).connect()
            await workloads.push_parts(conn, "bench/manifests", parts, None)
            conn.close()

        async def put(t: Target, rep: int) -> float:
            return await workloads.manifests(
                t, "bench/manifests", parts, a.manifests, CONCURRENCY, rep
            )

        await self.measure("push_mono", DIRECT, mono)
        await self.measure("push_chunked", DIRECT, chunked)
        await self.measure("small_blobs", DIRECT, small)
        await self.measure("manifests", DIRECT, put)

        _log("pulls")
        big = Blob.of(base)
        smalls = [Blob.of(os.urandom(SMALL)) for _ in range(a.small)]
        for name in (*DIRECT, *REDIRECT):  # what is pulled, pushed untimed
            conn = self.target(name).connect()
            await workloads.push_monolithic(conn, "bench/pull", big)

            async def one(c: Connection, blob: Blob) -> None:
                await workloads.push_monolithic(c, "bench/pull", blob)

            await workloads.run_concurrent(self.target(name), CONCURRENCY, smalls, one)
            conn.close()

        for key, names, redirect in (("", DIRECT, False), ("_redirect", REDIRECT, True)):

            async def pull(t: Target, rep: int, redirect: bool = redirect) -> float:
                return await timed_pull(t, "bench/pull", big, redirect)

            async def pulls(t: Target, rep: int, redirect: bool = redirect) -> float:
                return await small_pulls(t, "bench/pull", smalls, redirect)

            await self.measure(f"pull{key}", names, pull)
            await self.measure(f"small_pulls{key}", names, pulls)
        self.load.append(_loadavg())

    def table(self) -> str:
        blob, chunk = f"{self.args.blob_mib} MiB", f"{self.args.chunk_mib} MiB"
        lines = [
            "| metric | unit | Moorage | Distribution | Moorage/Distribution | server CPU s, "
            "Moorage | server CPU s, Distribution |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for row in ROWS:
            got = self.samples.get(row.key, {})
            m, d = (statistics.median(got[n]) for n in row.pair)
            cm, cd = (self.cpu[row.key][n] for n in row.pair)
            label = row.label.format(blob=blob, chunk=chunk)
            values = f"{m:,.1f} | {d:,.1f} | {m / d:.2f}x | {cm:.1f} | {cd:.1f}"
            lines.append(f"| {label} | {row.unit} | {values} |")
        return "\n".join(lines)

    def runs(self) -> str:
        lines = ["| metric | server | runs |", "|---|---|---|"]
        for row in ROWS:
            for name in row.pair:
                values = ", ".join(f"{v:,.1f}" for v in self.samples[row.key][name])
                lines.append(f"| {row.key} | {name} | {values} |")
        return "\n".join(lines)

    def markdown(self, argv: list[str]) -> str:
        a = self.args
        return "\n".join([
            "# Moorage vs Distribution on S3 (SeaweedFS on loopback)",
            "",
            *machine_info(REPO_ROOT),
            f"- plan: {a.blob_mib} MiB blobs ({a.chunk_mib} MiB chunks), {a.small} x 4 KiB "
            f"blobs, {a.manifests} manifests, {a.reps} run(s) per metric",
            "- SeaweedFS: `weed server` with its S3 gateway, one bucket, a prefix per server",
            f"- command: python -m bench.s3 {' '.join(argv)}",
            f"- load average (1, 5, 15 min) at start / end: {' / '.join(self.load)} (other "
            "work on the machine skews results)",
            "",
            self.table(),
            "",
            "MB = 10^6 bytes; medians of the runs below. Through the registry: Moorage's "
            "default, Distribution with `redirect: disable: true`. By redirect: Moorage "
            "`--storage s3://...&redirect=on`, Distribution's default; the client follows the "
            "`307` to the store on a keep-alive connection of its own, and the time counts "
            "both requests. Server CPU: the registry's process tree (Moorage's etcd "
            "included), summed over the runs; SeaweedFS's is not counted.",
            "",
            "## Runs",
            "",
            self.runs(),
            "",
        ])  # fmt: skip


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.s3", description=__doc__.split("\n")[0])
    p.add_argument("--blob-mib", type=int, default=32, help="the large blob, MiB")
    p.add_argument("--chunk-mib", type=int, default=8, help="chunk size of the chunked push")
    p.add_argument("--small", type=int, default=300, help="4 KiB blobs pushed and pulled")
    p.add_argument("--manifests", type=int, default=200)
    p.add_argument("--reps", type=int, default=3, help="runs per metric")
    p.add_argument("--output", type=Path, default=RESULTS / "s3.md")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Bench:
    args = _parse(argv)
    tmp = Path(tempfile.mkdtemp(prefix="moorage-bench-s3-"))
    store = SeaweedFS(tmp / "seaweed")
    under_test: dict[str, Server] = {}
    try:
        _log(f"starting SeaweedFS and the registries (temporary directory {tmp})")
        store.start()
        under_test = {
            MOORAGE: moorage_s3(tmp, store, MOORAGE, False),
            DISTRIBUTION: distribution_s3(tmp, store, DISTRIBUTION, False),
            MOORAGE_R: moorage_s3(tmp, store, MOORAGE_R, True),
            DISTRIBUTION_R: distribution_s3(tmp, store, DISTRIBUTION_R, True),
        }
        for server in under_test.values():
            server.start()
        for server in under_test.values():
            server.wait_ready()
        bench = Bench(args, under_test)
        uvloop.run(bench.run())
    finally:
        for server in under_test.values():
            server.stop()
        store.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    text = bench.markdown(sys.argv[1:] if argv is None else argv)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    args.output.with_suffix(".json").write_text(
        json.dumps({"samples": bench.samples, "cpu": bench.cpu}, indent=1)
    )
    print(bench.table())
    _log(f"written to {args.output}")
    return bench


if __name__ == "__main__":
    main()
