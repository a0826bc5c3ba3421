"""`python -m bench.etcd_tls`: what etcd's mutual TLS costs Moorage's manifest PUT.

Moorage always runs etcd with mutual TLS, so the registry cannot be measured without it;
this compares the store alone. Two throwaway one-member etcd servers start with a replica's
flags (`moorage.cluster.etcd_process`), one with plain HTTP and one with mutual TLS on both
planes (a certificate of a fresh cluster CA, `TlsDir.etcd_args()`). Moorage's store
(`EtcdMetaStore`, as the API workers use it) writes to each: over its usual TLS channel
presenting the certificate, and over an insecure gRPC channel to the plain one. Measured in
turn, on the same machine at the same time, so drift hits both alike:

- manifest PUT: `put_manifest` of unique manifests (two linked blobs, one tag each), the one
  etcd transaction an API manifest PUT makes, at concurrency 16 (the HTTP benchmark's);
- single-key put: one `Put` transaction per request, the smallest write, at concurrency 16.

Medians of the runs; the HTTP figures of `python -m bench` include this cost.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aetcd
from harness.process import REPO_ROOT, free_port

from bench.report import machine_info
from moorage.meta import etcd as etcd_store
from moorage.meta.base import Put
from moorage.meta.records import ManifestRecord
from moorage.pki import TlsDir, create_ca, issue_replica

RESULTS = Path(__file__).resolve().parent / "results" / "etcd-tls.md"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONCURRENCY = 16
REPLICA_FLAGS = [
    "--max-txn-ops", "1024",
    "--max-request-bytes", str(8 * 1024 * 1024),
    "--quota-backend-bytes", str(8 * 1024 * 1024 * 1024),
    "--auto-compaction-mode", "revision",
    "--auto-compaction-retention", "100000",
    "--logger", "zap",
]  # fmt: skip


class PlainStore(etcd_store.EtcdMetaStore):
    """Moorage's store over an insecure gRPC channel (only for this comparison)."""

    def __init__(self, endpoint: str) -> None:
        dummy = etcd_store.ClientTls(b"", b"", b"")
        super().__init__([endpoint], tls=dummy)
        host, port = etcd_store._target([endpoint])
        self._client = aetcd.Client(host=host, port=port, options=dict(etcd_store._CHANNEL_OPTIONS))


class Etcd:
    """One throwaway etcd member on 127.0.0.1, plain or with mutual TLS."""

    def __init__(self, root: Path, name: str, tls: TlsDir | None) -> None:
        self.root = root / name
        self.name = name
        self.tls = tls
        scheme = "https" if tls is not None else "http"
        self.client_url = f"{scheme}://127.0.0.1:{free_port()}"
        self.peer_url = f"{scheme}://127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        argv = [
            "etcd", "--name", self.name, "--data-dir", str(self.root / "etcd"),
            "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", f"{self.name}={self.peer_url}",
            "--initial-cluster-state", "new", "--initial-cluster-token", self.name,
            *REPLICA_FLAGS,
        ]  # fmt: skip
        if self.tls is not None:
            argv += self.tls.etcd_args()
        with open(self.root / "etcd.log", "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def store(self) -> etcd_store.EtcdMetaStore:
        if self.tls is None:
            return PlainStore(self.client_url)
        ca, key, cert = self.tls.client_material()
        return etcd_store.EtcdMetaStore(
            [self.client_url], tls=etcd_store.ClientTls(ca=ca, key=key, cert=cert)
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def wait_ready(store: etcd_store.EtcdMetaStore, patience: float = 30) -> None:
    deadline = time.monotonic() + patience
    while True:
        try:
            await store.revision()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def rate(count: int, op: Callable[[int], Awaitable[Any]]) -> float:
    """Operations per second of `count` calls of `op(i)`, `CONCURRENCY` at a time."""
    todo = iter(range(count))

    async def worker() -> None:
        for i in todo:
            await op(i)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return count / (time.perf_counter() - start)


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def prepare(store: etcd_store.EtcdMetaStore, repo: str) -> list[str]:
    blobs = [digest(f"{repo}/{i}".encode()) for i in range(2)]
    for b in blobs:
        await store.link_blob(repo, b, 1024)
    return blobs


async def manifests(
    store: etcd_store.EtcdMetaStore, repo: str, blobs: list[str], count: int, run: str
) -> float:
    async def put(i: int) -> None:
        body = json.dumps({"run": run, "i": i, "blobs": blobs}).encode()
        record = ManifestRecord(digest(body), OCI_MANIFEST, len(body))
        missing = await store.put_manifest(repo, record, tags=[f"{run}-{i}"], blobs=blobs)
        assert not missing, missing

    return await rate(count, put)


async def single_puts(store: etcd_store.EtcdMetaStore, count: int, run: str) -> float:
    async def put(i: int) -> None:
        assert await store._txn([], [Put(f"/bench/{run}/{i}".encode(), b"x" * 100)])

    return await rate(count, put)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(servers: list[Etcd], count: int, reps: int) -> dict[str, dict[str, list[float]]]:
    """Per operation and transport: rates per run, and the CPU microseconds per operation
    the etcd server and this client (gRPC, TLS, Moorage's store) spent over all runs."""
    stores = {s.name: s.store() for s in servers}
    pids = {s.name: s.proc.pid for s in servers if s.proc is not None}
    out: dict[str, dict[str, list[float]]] = {"manifests": {}, "puts": {}}
    for key in [*out]:
        out[f"{key} etcd cpu us"], out[f"{key} client cpu us"] = {}, {}

    async def timed(key: str, name: str, run: Awaitable[float]) -> float:
        etcd0, client0 = cpu_seconds(pids[name]), time.process_time()
        value = await run
        etcd = (cpu_seconds(pids[name]) - etcd0) * 1e6 / count
        client = (time.process_time() - client0) * 1e6 / count
        out[key].setdefault(name, []).append(value)
        out[f"{key} etcd cpu us"].setdefault(name, []).append(etcd)
        out[f"{key} client cpu us"].setdefault(name, []).append(client)
        return value

    try:
        for store in stores.values():
            await store.connect()
            await wait_ready(store)
        blobs = {name: await prepare(store, "bench/etcd") for name, store in stores.items()}
        for name, store in stores.items():  # warm-up: connections, etcd's first pages
            await manifests(store, "bench/etcd", blobs[name], CONCURRENCY * 4, "warm")
        for rep in range(reps):
            for name, store in stores.items():
                os.sync()
                run = manifests(store, "bench/etcd", blobs[name], count, f"r{rep}")
                value = await timed("manifests", name, run)
                print(f"  manifest PUT [{rep + 1}/{reps}] {name}: {value:,.0f}/s", file=sys.stderr)
                value = await timed("puts", name, single_puts(store, count, f"r{rep}"))
                print(f"  single put [{rep + 1}/{reps}] {name}: {value:,.0f}/s", file=sys.stderr)
    finally:
        for store in stores.values():
            await store.close()
    return out


def table(found: dict[str, dict[str, list[float]]]) -> str:
    lines = [
        "| store operation, concurrency 16 | etcd plain HTTP | etcd mutual TLS | TLS change |",
        "|---|---:|---:|---:|",
    ]
    labels = {"manifests": "manifest PUT (put_manifest)", "puts": "single-key put"}
    for key, label in labels.items():
        for suffix, unit in (("", "per s"), (" etcd cpu us", "etcd CPU µs each"),
                             (" client cpu us", "client CPU µs each")):  # fmt: skip
            plain = statistics.median(found[key + suffix]["plain"])
            tls = statistics.median(found[key + suffix]["mtls"])
            lines.append(
                f"| {label}, {unit} | {plain:,.0f} | {tls:,.0f} | "
                f"{(tls / plain - 1) * 100:+.0f} % |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.etcd_tls", description=__doc__)
    parser.add_argument("--count", type=int, default=1000, help="operations per run")
    parser.add_argument("--reps", type=int, default=3, help="runs per transport")
    parser.add_argument(
        "--output",
        type=Path,
        default=RESULTS,
        help=f"markdown file (default {RESULTS.relative_to(REPO_ROOT)})",
    )
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="moorage-etcd-tls-"))
    authority = create_ca("bench-etcd")
    tls = TlsDir(tmp / "tls")
    key, cert = issue_replica(authority, "bench-etcd", ["127.0.0.1"])
    tls.write_ca(authority.cert)
    tls.write_key(key)
    tls.write_cert(cert)
    servers = [Etcd(tmp, "plain", None), Etcd(tmp, "mtls", tls)]
    try:
        for s in servers:
            s.start()
        found = asyncio.run(measure(servers, args.count, args.reps))
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    text = "\n".join([
        "# etcd's own cost of mutual TLS (python -m bench.etcd_tls)", "",
        *machine_info(REPO_ROOT),
        f"- command: python -m bench.etcd_tls {' '.join(sys.argv[1:] if argv is None else argv)}",
        f"- {args.count} operations per run, {args.reps} run(s) per transport, medians; "
        f"load average at the end {load} (other work on the machine skews results)",
        "", table(found), "",
        "TLS change: mutual TLS against plain HTTP (for CPU, positive is more CPU). Every "
        "run: " + json.dumps({k: {n: [round(x) for x in v] for n, v in d.items()}
                             for k, d in found.items()}), "",
    ])  # fmt: skip
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
