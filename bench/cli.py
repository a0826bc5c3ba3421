"""`python -m bench`: both registries side by side, the same client, one table."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import uvloop
from harness.process import REPO_ROOT

from bench import _http, cluster, disk, servers, workloads
from bench.report import (
    CLUSTER_METRICS,
    METRICS,
    Results,
    ceiling_table,
    disk_table,
    markdown,
)
from bench.servers import RssSampler, Server
from bench.workloads import Blob, ImageParts, Target

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: What a token of `--auth token` grants: every repository the timed metrics touch.
TOKEN_SCOPES = [
    *(f"repository:bench/{r}:pull,push" for r in ("manifests", "mono", "chunked", "pull", "small")),
    "registry:catalog:*",
]
PY_SPY = REPO_ROOT / ".venv" / "bin" / "py-spy"
MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class Plan:
    blob_size: int
    chunk_size: int
    small_count: int
    small_size: int
    manifest_count: int
    read_seconds: float
    catalog_repos: int
    catalog_requests: int
    reps: int
    cluster_manifests: int  # per cluster latency run and per journal run
    failovers: int  # leader kills

    @classmethod
    def full(cls) -> Plan:
        return cls(256 * MiB, 8 * MiB, 500, 4096, 200, 10.0, 1000, 20, 3, 300, 3)

    @classmethod
    def quick(cls) -> Plan:
        return cls(32 * MiB, 8 * MiB, 100, 4096, 50, 2.0, 100, 5, 1, 100, 2)

    def cluster(self) -> cluster.ClusterPlan:
        return cluster.ClusterPlan(self.cluster_manifests, self.reps, self.failovers)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one run: a smoke test")
    parser.add_argument("--workers", type=int, default=None, help="Moorage API workers")
    parser.add_argument(
        "--only",
        action="append",
        choices=[*(k for k in METRICS if k != "rss"), *CLUSTER_METRICS],
        help="run only this metric (repeatable); peak RSS is reported whenever Moorage and "
        "Distribution run; the cluster metrics (" + ", ".join(CLUSTER_METRICS) + ") run "
        "Moorage clusters only",
    )
    parser.add_argument("--reps", type=int, default=None, help="runs per throughput metric")
    parser.add_argument(
        "--failovers", type=int, default=None, help="leader kills in the failover metric"
    )
    parser.add_argument("--no-ceiling", action="store_true", help="skip the client ceiling")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="markdown file (default bench/results/latest.md; quick.md with --quick)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--tls",
        action="store_true",
        help="both registries serve HTTPS (Moorage with --tls and its cluster certificate, "
        "Distribution with http.tls and a bench CA's), TLS 1.2 floor; the client verifies "
        "them against those two CAs only; the cluster section's clusters serve HTTPS too",
    )
    parser.add_argument(
        "--tls-compare",
        action="store_true",
        help="what TLS costs: each registry runs twice, over plain HTTP and over HTTPS (as "
        "--tls), the four measured in turn; one more table compares the two transports",
    )
    parser.add_argument(
        "--auth",
        choices=["basic", "token"],
        default="basic",
        help="how the client authenticates to Moorage: Basic credentials on every request, or "
        "a Bearer token from its /auth/token endpoint (the Docker token flow; a fresh token "
        "before each metric; the untimed catalog fill uses Basic)",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        metavar="DIR",
        help="profile Moorage with py-spy during each measurement (raw stacks in DIR); "
        "slows Moorage, so the numbers of such a run are not results",
    )
    return parser.parse_args(argv)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# the client's own ceiling


async def _ceiling_once(sink: Target, plan: Plan, body: bytes) -> dict[str, float]:
    found: dict[str, float] = {}
    conn = sink.connect()
    await conn.request("GET", "/v2/")
    start = time.perf_counter()
    (await conn.request("PUT", "/upload", body=body)).expect(201)
    found["upload MB/s"] = len(body) / workloads.MB / (time.perf_counter() - start)
    start = time.perf_counter()
    reply = await conn.request("GET", f"/big?n={len(body)}", keep_body=False)
    found["download MB/s"] = reply.size / workloads.MB / (time.perf_counter() - start)
    conn.close()
    found["GET req/s, concurrency 32"] = await workloads.manifest_reads(
        sink, "sink", "latest", "GET", min(plan.read_seconds, 3.0), 32
    )
    found["POST+PUT 4 KiB blobs/s, concurrency 16"] = await workloads.small_blobs(
        sink, "sink", plan.small_count, plan.small_size, 16
    )
    return found


async def _ceiling(sink: Target, plan: Plan, results: Results) -> None:
    """Best of two runs: the ceiling is what the client can reach, not its typical pace."""
    body = os.urandom(plan.blob_size)
    for _ in range(2):
        for name, value in (await _ceiling_once(sink, plan, body)).items():
            results.ceiling[name] = max(value, results.ceiling.get(name, 0.0))


def measure_ceiling(tmp: Path, plan: Plan, results: Results) -> None:
    sink = servers.sink(tmp)
    sink.start()
    try:
        sink.wait_ready()
        uvloop.run(_ceiling(Target("sink", sink.url, None), plan, results))
    finally:
        sink.stop()


# the registries


class Bench:
    def __init__(
        self,
        plan: Plan,
        selected: list[str],
        servers_: list[Server],
        profile_dir: Path | None = None,
        token_mode: bool = False,
    ) -> None:
        self.plan = plan
        self.token_mode = token_mode
        self.profile_dir = profile_dir
        self.selected = selected
        self.servers = servers_
        self.targets = [Target(s.name, s.url, s.authorization) for s in servers_]
        self.results = Results()
        self.parts = ImageParts.new()
        self.base = os.urandom(plan.blob_size)
        self.pull_blob = Blob.of(self.base)

    async def _measure(
        self, metric: str, reps: int, run: Callable[[Target, int], Awaitable[float]]
    ) -> None:
        """Run `metric` `reps` times, alternating servers so drift hits both alike."""
        for rep in range(reps):
            for server, target in zip(self.servers, self.targets, strict=True):
                os.sync()  # the previous run's dirty pages must not be flushed during this one
                profiler = self._profile(server, f"{metric}-{rep + 1}")
                cpu_before = server.cpu_seconds()
                try:
                    value = await run(target, rep)
                finally:
                    if profiler is not None:
                        profiler.send_signal(signal.SIGINT)
                        profiler.wait(30)
                self.results.add(metric, target.name, value, server.cpu_seconds() - cpu_before)
                _log(f"  {metric} [{rep + 1}/{reps}] {target.name}: {value:,.1f}")

    def _profile(self, server: Server, label: str) -> subprocess.Popen[bytes] | None:
        """py-spy on Moorage's processes while it runs one measurement (with --py-spy)."""
        if self.profile_dir is None or server.name != "Moorage":
            return None
        out = self.profile_dir / f"{label}.txt"
        argv = [str(PY_SPY), "record", "--nonblocking", "--subprocesses", "--format", "raw"]
        argv += ["--rate", "250", "--output", str(out), "--pid", str(server.root_pid)]
        log = (self.profile_dir / f"{label}.log").open("wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        time.sleep(1.0)  # py-spy attaches to every process of the tree first
        return proc

    def _fresh_tokens(self) -> None:
        """Token mode: each Moorage target gets a new Bearer token for the bench's
        repositories (as docker and podman fetch one per operation)."""
        for target, server in zip(self.targets, self.servers, strict=True):
            if server.name == "Moorage":
                token = servers.bearer_token(server, TOKEN_SCOPES)
                target.authorization = f"Bearer {token}"

    async def setup(self) -> None:
        for target in self.targets:
            conn = target.connect()
            try:
                await workloads.push_parts(conn, "bench/manifests", self.parts, None)
                await workloads.put_manifest(
                    conn, "bench/manifests", "latest", self.parts.manifest("latest")
                )
                if "pull" in self.selected:
                    await workloads.push_monolithic(conn, "bench/pull", self.pull_blob)
            finally:
                conn.close()

    async def run(self) -> Results:
        plan = self.plan
        _log("setting up: config, layer and a manifest in each registry")
        await self.setup()
        for metric in self.selected:
            _log(f"{metric}:")
            if self.token_mode:
                self._fresh_tokens()
            if metric == "push_mono":

                async def mono(target: Target, rep: int) -> float:
                    blob = workloads.unique_blob(self.base, f"mono-{target.name}-{rep}")
                    return await workloads.timed_push(target, "bench/mono", blob, None)

                await self._measure(metric, plan.reps, mono)
            elif metric == "push_chunked":

                async def chunked(target: Target, rep: int) -> float:
                    blob = workloads.unique_blob(self.base, f"chunked-{target.name}-{rep}")
                    return await workloads.timed_push(
                        target, "bench/chunked", blob, plan.chunk_size
                    )

                await self._measure(metric, plan.reps, chunked)
            elif metric == "pull":

                async def pull(target: Target, rep: int) -> float:
                    return await workloads.timed_pull(target, "bench/pull", self.pull_blob)

                await self._measure(metric, plan.reps, pull)
            elif metric == "small_blobs":

                async def small(target: Target, rep: int) -> float:
                    return await workloads.small_blobs(
                        target, "bench/small", plan.small_count, plan.small_size, 16
                    )

                await self._measure(metric, plan.reps, small)
            elif metric == "manifests":

                async def put(target: Target, rep: int) -> float:
                    return await workloads.manifests(
                        target, "bench/manifests", self.parts, plan.manifest_count, 16, rep
                    )

                await self._measure(metric, plan.reps, put)
            elif metric in ("manifest_get", "manifest_head"):
                method = "GET" if metric == "manifest_get" else "HEAD"

                async def read(target: Target, rep: int, method: str = method) -> float:
                    return await workloads.manifest_reads(
                        target, "bench/manifests", "latest", method, plan.read_seconds, 32
                    )

                await self._measure(metric, plan.reps, read)
            elif metric == "catalog":
                for target, server in zip(self.targets, self.servers, strict=True):
                    _log(f"  creating {plan.catalog_repos} repositories in {target.name}")
                    filler = Target(target.name, target.url, server.authorization)
                    await workloads.fill_catalog(
                        filler, "bench/catalog", self.parts, "bench/manifests", plan.catalog_repos
                    )

                async def catalog(target: Target, rep: int) -> float:
                    return await workloads.catalog_ms(
                        target, 1000, plan.catalog_repos, plan.catalog_requests
                    )

                await self._measure(metric, plan.reps, catalog)
        return self.results


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    plan = Plan.quick() if args.quick else Plan.full()
    if args.reps:
        plan = dataclasses.replace(plan, reps=args.reps)
    if args.failovers:
        plan = dataclasses.replace(plan, failovers=args.failovers)
    selected = args.only or [*(k for k in METRICS if k != "rss"), *CLUSTER_METRICS]
    head_to_head = [k for k in METRICS if k in selected]  # dependency order
    cluster_metrics = [k for k in CLUSTER_METRICS if k in selected]
    output = args.output or RESULTS_DIR / ("quick.md" if args.quick else "latest.md")
    if head_to_head and not Path(servers.DISTRIBUTION_BINARY).exists():
        _log(f"{servers.DISTRIBUTION_BINARY} is missing: apt-get install docker-registry")
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="moorage-bench-"))
    results = Results()
    try:
        if not args.no_ceiling:
            _log("measuring the client's ceiling against a do-nothing server")
            measure_ceiling(tmp, plan, results)
            _log(ceiling_table(results))
            _log("measuring the disk's ceiling for durable writes")
            results.disk = disk.measure(
                tmp / "disk", plan.blob_size, plan.small_count, plan.small_size
            )
            _log(disk_table(results))
        if head_to_head:
            _head_to_head(tmp, plan, head_to_head, args, results)
        if cluster_metrics:
            _log("cluster section (Moorage only)")
            cluster.TLS = bool(args.tls)
            cluster.run(tmp, plan.cluster(), cluster_metrics, results, args.workers)
            results.notes.append(
                f"load average after the cluster section: {_loadavg()} (other work on the "
                "machine skews results)"
            )
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    workers = args.workers or os.environ.get("MOORAGE_WORKERS", "1 (default)")
    transport = "plain HTTP"
    if args.tls:
        transport = "HTTPS (TLS 1.2+, both registries and the cluster section)"
    if args.tls_compare:
        transport = "plain HTTP and HTTPS (TLS 1.2+), each registry twice, measured in turn"
    header = [
        f"- Moorage API workers: {workers}",
        f"- transport: {transport}",
        "- Moorage client auth: "
        + ("Bearer tokens (/auth/token)" if args.auth == "token" else "Basic"),
        f"- plan: {'quick' if args.quick else 'full'}: {_describe(plan)}"
        + (f"; {cluster.describe(plan.cluster())}" if cluster_metrics else ""),
        f"- command: python -m bench {' '.join(argv if argv is not None else sys.argv[1:])}",
    ]
    # The whole report on stdout too: the machine and versions, the table with its ratios,
    # the runs behind each median, and the scale and etcd-size figures of their own commands.
    text = markdown(results, REPO_ROOT, header, RESULTS_DIR)
    print()
    print(text)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    output.with_suffix(".json").write_text(
        json.dumps(
            {
                "samples": results.samples,
                "cpu": results.cpu,
                "ceiling": results.ceiling,
                "disk": results.disk,
                "cluster": results.cluster,
                "memory": results.memory,
            }
        )
    )
    print(f"\nwritten to {output}")
    return 0


def _head_to_head(
    tmp: Path, plan: Plan, selected: list[str], args: argparse.Namespace, results: Results
) -> None:
    """Moorage and Distribution side by side, with their peak RSS (with --tls-compare each
    twice: plain HTTP as "Moorage"/"Distribution", HTTPS as "... HTTPS")."""
    pki = servers.BenchPki.make(tmp) if args.tls or args.tls_compare else None
    if args.tls_compare:
        assert pki is not None
        under_test = [
            servers.moorage(tmp, args.workers),
            servers.distribution(tmp),
            servers.moorage(tmp, args.workers, True, "Moorage HTTPS"),
            servers.distribution(tmp, pki, "Distribution HTTPS"),
        ]
    else:
        under_test = [servers.moorage(tmp, args.workers, pki is not None),
                      servers.distribution(tmp, pki)]  # fmt: skip
    sampler = RssSampler(under_test)
    try:
        _log(f"starting {', '.join(s.name for s in under_test)} (temporary directory {tmp})")
        for server in under_test:
            server.start()
        for server in under_test:
            server.wait_ready()
        if pki is not None:  # the client trusts the bench CA and Moorage's cluster CA only
            cas = [pki.ca_file, *(s.ca_file for s in under_test if s.ca_file is not None)]
            _http.TLS_CONTEXT = servers.client_context(cas)
        sampler.start()
        if args.py_spy is not None:
            if not PY_SPY.exists():
                raise SystemExit(f"{PY_SPY} is missing: .venv/bin/pip install py-spy")
            args.py_spy.mkdir(parents=True, exist_ok=True)
        results.notes.append(f"load average at start: {_loadavg()}")
        bench = Bench(plan, selected, under_test, args.py_spy, args.auth == "token")
        bench.results = results
        uvloop.run(bench.run())
        sampler.stop()
        results.notes.append(
            f"load average at end: {_loadavg()} (other work on the machine skews results)"
        )
        for server in under_test:
            results.add("rss", server.name, server.peak_rss / MiB)
            results.memory[server.name] = {
                role: peak / MiB for role, peak in sorted(server.peak_by_role.items())
            }
            results.notes.append(
                f"{server.name}: peak RSS sampled every {sampler.interval:g} s over processes "
                f"{', '.join(map(str, server.tree()))}; sum of their VmHWM at the end "
                f"{server.hwm_sum() / MiB:,.0f} MiB"
            )
    except Exception:
        for server in under_test:
            _log(f"--- {server.name} log ({server.log_path}) ---\n{server.log_tail()}")
        raise
    finally:
        if sampler.is_alive():
            sampler.stop()
        for server in under_test:
            server.stop()


def _describe(plan: Plan) -> str:
    return (
        f"{plan.blob_size // MiB} MiB blobs in {plan.chunk_size // MiB} MiB chunks, "
        f"{plan.small_count} x {plan.small_size // 1024} KiB blobs, "
        f"{plan.manifest_count} manifests, {plan.read_seconds:g} s per read test, "
        f"catalog over {plan.catalog_repos} repositories ({plan.catalog_requests} requests), "
        f"{plan.reps} run(s) per throughput metric"
    )


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
