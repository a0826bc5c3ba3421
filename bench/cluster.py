"""The cluster section: Moorage only, since Distribution has no replication and no journal.

Clusters are built with the real commands (`moorage install`, `join`, `start`, `stop`,
`status`), each replica with its own etcd member, all on 127.0.0.1 and one shared storage
directory per cluster. Three measurements:

- `cluster_latency`: manifest PUT latency (p50, p99) at concurrency 16 on one replica, on
  three and on five, pushed round-robin through the replicas (each configuration in turn in
  every run).
- `failover`: SIGKILL of every process of the etcd leader's replica while one pusher and one
  puller per surviving replica run; the write gap is the time from the kill until a push
  started after the kill succeeds, and the failed pulls are those that overlap that window.
  Repeated, the killed replica restarted with `moorage start` in between.
- `journal`: manifest PUT throughput at concurrency 16 on one replica with the journal on
  (the default) and off (`MOORAGE_JOURNAL=0`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import harness.cluster
import uvloop
from harness.process import AUTH

from bench import _http, servers, workloads
from bench._http import Connection, HttpError
from bench.report import Results, percentile
from bench.workloads import ImageParts, Target

AUTHORIZATION = "Basic " + base64.b64encode(":".join(AUTH).encode()).decode()
CONCURRENCY = 16
OP_TIMEOUT = 10.0  # seconds one push or pull may take during the failover test
WRITE_DEADLINE = 30.0  # give up waiting for the first push after the kill
WARMUP = 1.5  # seconds of load before the kill
SETTLE = 1.0  # seconds of load kept after the write gap ends
PROBE_EVERY = 0.1  # seconds between the starts of two probe pushes


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Replica(harness.cluster.Node):
    """A replica of the harness, with the bench's load target."""

    def target(self, name: str) -> Target:
        return Target(name, self.url, AUTHORIZATION)


class Cluster(harness.cluster.Cluster):
    """The harness's cluster under `root/name`, with quiet logs and the bench's replicas."""

    node_class = Replica

    def __init__(
        self, root: Path, name: str, env: dict[str, str] | None = None, tls: bool = False
    ) -> None:
        super().__init__(
            root.resolve() / name, env={"MOORAGE_LOG_LEVEL": "WARNING", **(env or {})}, tls=tls
        )
        self.name = name

    @property
    def replicas(self) -> list[Replica]:
        return [n for n in self.nodes if isinstance(n, Replica)]

    def moorage(self, *args: str, timeout: float = 180.0) -> str:
        """Run `moorage ARGS`; its stdout (raises when it fails)."""
        return self.cli(*args, timeout=timeout).stdout

    @classmethod
    def build(
        cls, root: Path, name: str, size: int, env: dict[str, str] | None = None, tls: bool = False
    ) -> Cluster:
        cluster = cls(root, name, env, tls)
        try:
            cluster.install()
            for _ in range(size - 1):
                cluster.join()
            if size > 1:
                cluster.wait_healthy()
        except BaseException:
            cluster.log_tails()
            cluster.shutdown()
            raise
        return cluster

    def wait_healthy(self, timeout: float = 90.0) -> None:
        self.wait_status("healthy", timeout=timeout)

    def leader_replica(self) -> Replica:
        leader = self.leader()
        assert isinstance(leader, Replica)
        return leader

    def restart(self, replica: Replica) -> None:
        """Bring a killed replica back with `moorage start` and wait for a healthy cluster."""
        replica.kill()  # anything that outlived the kill
        self.moorage("start", "--data-dir", str(replica.data_dir), "--json")
        self.wait_healthy()

    def log_tails(self) -> None:
        for replica in self.nodes:
            _log(f"--- {self.name} {replica.data_dir} log ---\n{replica.log_tail()}")


#: With --tls: every cluster serves HTTPS; the client trusts each cluster's exported CA.
TLS = False
_trusted: list[Path] = []


@contextlib.contextmanager
def running(
    root: Path, name: str, size: int, env: dict[str, str] | None = None
) -> Iterator[Cluster]:
    _log(f"  building {name}: {size} replica(s) with moorage install/join")
    cluster = Cluster.build(root, name, size, env, TLS)
    if TLS:
        _trusted.append(cluster.ca_file)
        _http.TLS_CONTEXT = servers.client_context(_trusted)
    try:
        yield cluster
    except BaseException:
        cluster.log_tails()
        raise
    finally:
        cluster.shutdown()


# measurements


async def _push_parts(target: Target, repo: str, parts: ImageParts) -> None:
    conn = target.connect()
    try:
        await workloads.push_parts(conn, repo, parts, None)
    finally:
        conn.close()


async def manifest_latencies(
    targets: list[Target], repo: str, parts: ImageParts, count: int, label: str
) -> list[float]:
    """Milliseconds of each of `count` manifest PUTs at concurrency 16, job i on target i % n."""
    await _push_parts(targets[0], repo, parts)
    jobs = iter(range(count))
    latencies: list[float] = []
    workers = [[t.connect() for t in targets] for _ in range(CONCURRENCY)]

    async def worker(conns: list[Connection]) -> None:
        for i in jobs:
            tag = f"{label}-{i}"
            body = parts.manifest(tag)
            start = time.perf_counter()
            await workloads.put_manifest(conns[i % len(conns)], repo, tag, body)
            latencies.append((time.perf_counter() - start) * 1000)

    await asyncio.gather(*(c.request("GET", "/v2/") for conns in workers for c in conns))
    try:
        await asyncio.gather(*(worker(conns) for conns in workers))
    finally:
        for conns in workers:
            for conn in conns:
                conn.close()
    return latencies


@dataclass(frozen=True, slots=True)
class Op:
    start: float
    end: float
    error: str = ""  # empty when the operation succeeded

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass(frozen=True, slots=True)
class Failover:
    gap: float  # seconds from the kill until a push started after it succeeded
    probe_gap: float  # the same for the probes: a new push every PROBE_EVERY seconds
    failed_pulls: int  # pulls overlapping [kill, kill + gap] that failed
    pulls_in_gap: int  # all pulls overlapping that window
    failed_pulls_after: int  # failed pulls from the kill to the end of the observation
    failed_pushes: int  # failed pushes after the kill
    errors: list[str]  # what failed after the kill, seconds after it


async def _pull(conn: Connection, repo: str, tag: str, parts: ImageParts) -> None:
    path = f"/v2/{repo}/manifests/{tag}"
    (await conn.request("GET", path, {"Accept": workloads.OCI_MANIFEST})).expect(200)
    for blob in (parts.config, parts.layer):
        reply = await conn.request("GET", f"/v2/{repo}/blobs/{blob.digest}")
        if reply.expect(200).body != blob.data:
            raise HttpError(f"{repo}@{blob.digest}: pulled bytes differ")


async def failover_once(
    survivors: list[Target],
    kill: Callable[[], int],
    repo: str,
    parts: ImageParts,
    pull_tag: str,
    label: str,
) -> Failover:
    """Load the survivors, kill the leader's replica, and time the write gap."""
    pushes: list[Op] = []
    pulls: list[Op] = []
    stopping = asyncio.Event()

    async def loop(target: Target, ops: list[Op], push: bool) -> None:
        conn = target.connect()
        n = 0
        try:
            while not stopping.is_set():
                n += 1
                start = time.perf_counter()
                try:
                    if push:
                        tag = f"{label}-{target.name}-{n}"
                        job = workloads.put_manifest(conn, repo, tag, parts.manifest(tag))
                        await asyncio.wait_for(job, OP_TIMEOUT)
                    else:
                        await asyncio.wait_for(_pull(conn, repo, pull_tag, parts), OP_TIMEOUT)
                    ops.append(Op(start, time.perf_counter()))
                except (HttpError, OSError, TimeoutError) as exc:
                    what = f"{'push' if push else 'pull'} via {target.name}: {exc!r}"
                    ops.append(Op(start, time.perf_counter(), what[:300]))
                    conn.close()  # the next request opens a fresh connection
                    await asyncio.sleep(0.01)  # an instant refusal must not spin the loop
        finally:
            conn.close()

    probes: list[Op] = []
    in_flight: set[asyncio.Task[None]] = set()

    async def probe(target: Target, n: int) -> None:
        conn = target.connect()
        start = time.perf_counter()
        tag = f"{label}-probe-{n}"
        try:
            job = workloads.put_manifest(conn, repo, tag, parts.manifest(tag))
            await asyncio.wait_for(job, OP_TIMEOUT)
            probes.append(Op(start, time.perf_counter()))
        except (HttpError, OSError, TimeoutError) as exc:
            probes.append(Op(start, time.perf_counter(), f"probe via {target.name}: {exc!r}"))
        finally:
            conn.close()

    async def prober() -> None:
        """A new push every PROBE_EVERY s, whatever the earlier ones are waiting for."""
        n = 0
        while not stopping.is_set():
            task = asyncio.create_task(probe(survivors[n % len(survivors)], n))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            n += 1
            await asyncio.sleep(PROBE_EVERY)

    tasks = [asyncio.create_task(loop(t, pushes, True)) for t in survivors]
    tasks.append(asyncio.create_task(prober()))
    tasks += [asyncio.create_task(loop(t, pulls, False)) for t in survivors]
    try:
        ready_by = time.perf_counter() + 30.0  # a fresh cluster may still be settling
        while not (any(op.ok for op in pushes) and any(op.ok for op in pulls)):
            if time.perf_counter() > ready_by:
                errors = [op.error for op in pushes + pulls if not op.ok]
                raise RuntimeError(f"no push or no pull succeeded before the kill: {errors[:4]}")
            await asyncio.sleep(0.05)
        await asyncio.sleep(WARMUP)
        killed_at = time.perf_counter()
        killed = kill()
        await asyncio.sleep(0.05)
        kill()  # anything the first round missed (none expected: the supervisor goes first)
        if not killed:
            raise RuntimeError("the leader's replica had no live process to kill")
        deadline = killed_at + WRITE_DEADLINE

        def first_write(ops: list[Op]) -> float | None:
            done = [op.end for op in ops if op.ok and op.start >= killed_at]
            return min(done) - killed_at if done else None

        while time.perf_counter() < deadline:
            if first_write(pushes) is not None and first_write(probes) is not None:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(SETTLE)
    finally:
        stopping.set()
        everything = [*tasks, *in_flight]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*everything, return_exceptions=True), OP_TIMEOUT)
        for task in everything:
            task.cancel()
        await asyncio.gather(*everything, return_exceptions=True)
    found = first_write(pushes), first_write(probes)
    gap, probe_gap = (WRITE_DEADLINE if g is None else g for g in found)
    window_end = killed_at + gap
    in_gap = [op for op in pulls if op.end >= killed_at and op.start <= window_end]
    return Failover(
        gap=gap,
        probe_gap=probe_gap,
        failed_pulls=sum(not op.ok for op in in_gap),
        pulls_in_gap=len(in_gap),
        failed_pulls_after=sum(not op.ok for op in pulls if op.end >= killed_at),
        failed_pushes=sum(not op.ok for op in pushes if op.end >= killed_at),
        errors=[
            f"{op.start - killed_at:+.2f}..{op.end - killed_at:+.2f} s {op.error}"
            for op in sorted(pushes + pulls + probes, key=lambda op: op.end)
            if not op.ok and op.end >= killed_at
        ],
    )


async def _prepare_failover(target: Target, repo: str, parts: ImageParts, tag: str) -> None:
    conn = target.connect()
    try:
        await workloads.push_parts(conn, repo, parts, None)
        await workloads.put_manifest(conn, repo, tag, parts.manifest(tag))
    finally:
        conn.close()


# the section


@dataclass(frozen=True, slots=True)
class ClusterPlan:
    manifests: int  # per latency run and per journal run
    reps: int  # latency and journal runs per configuration
    failovers: int


def run(
    tmp: Path, plan: ClusterPlan, selected: list[str], results: Results, workers: int | None
) -> None:
    """Run the selected cluster metrics into `results.cluster`."""
    env = {"MOORAGE_WORKERS": str(workers)} if workers is not None else {}
    root = tmp / "cluster"
    parts = ImageParts.new()
    if "cluster_latency" in selected:
        _log("cluster_latency:")
        with (
            running(root, "one", 1, env) as one,
            running(root, "three", 3, env) as three,
            running(root, "five", 5, env) as five,
        ):
            configs = [
                ("1 replica", [one.replicas[0].target("one")]),
                ("3 replicas", [r.target(f"three-{i}") for i, r in enumerate(three.replicas)]),
                ("5 replicas", [r.target(f"five-{i}") for i, r in enumerate(five.replicas)]),
            ]
            for rep in range(plan.reps):
                for name, targets in configs:
                    label = f"lat{rep}-{name.split()[0]}"
                    values = uvloop.run(
                        manifest_latencies(targets, "bench/latency", parts, plan.manifests, label)
                    )
                    results.cluster.setdefault(f"push ms, {name}", []).extend(values)
                    _log(
                        f"  [{rep + 1}/{plan.reps}] {name}: p50 {percentile(values, 50):.1f} ms, "
                        f"p99 {percentile(values, 99):.1f} ms"
                    )
    if "failover" in selected:
        _log("failover:")
        with running(root, "failover", 3, env) as cluster:
            first = cluster.replicas[0].target("r0")
            uvloop.run(_prepare_failover(first, "bench/failover", parts, "pull-me"))
            for rep in range(plan.failovers):
                if rep:
                    cluster.wait_healthy()
                victim = cluster.leader_replica()
                survivors = [r.target(r.data_dir.name) for r in cluster.replicas if r is not victim]
                found = uvloop.run(
                    failover_once(
                        survivors, victim.kill, "bench/failover", parts, "pull-me", f"gap{rep}"
                    )
                )
                for key, value in (
                    ("write gap s", found.gap),
                    ("write gap s, a new push every 100 ms", found.probe_gap),
                    ("failed pulls in the gap", found.failed_pulls),
                    ("pulls in the gap", found.pulls_in_gap),
                    ("failed pulls after the kill", found.failed_pulls_after),
                    ("failed pushes after the kill", found.failed_pushes),
                ):
                    results.cluster.setdefault(key, []).append(float(value))
                _log(
                    f"  [{rep + 1}/{plan.failovers}] killed {victim.data_dir.name} (leader): "
                    f"write gap {found.gap:.2f} s ({found.probe_gap:.2f} s with a new push "
                    f"every {PROBE_EVERY * 1000:.0f} ms), failed pulls {found.failed_pulls}/"
                    f"{found.pulls_in_gap} in the gap ({found.failed_pulls_after} after the "
                    f"kill), failed pushes {found.failed_pushes}"
                )
                pull_errors = [e for e in found.errors if " pull via " in e]
                other = [e for e in found.errors if " pull via " not in e]
                for error in pull_errors + other[:4]:  # every failed pull, a few pushes
                    _log(f"    after the kill: {error}")
                _log(f"  restarting {victim.data_dir.name} with moorage start")
                cluster.restart(victim)
    if "journal" in selected:
        _log("journal:")
        off_env = {**env, "MOORAGE_JOURNAL": "0"}
        with (
            running(root, "journal-on", 1, env) as on,
            running(root, "journal-off", 1, off_env) as off,
        ):
            journal_configs = [
                ("on", on.replicas[0].target("on")),
                ("off", off.replicas[0].target("off")),
            ]
            for _name, target in journal_configs:
                uvloop.run(_push_parts(target, "bench/journal", parts))
            for rep in range(plan.reps):
                for name, target in journal_configs if rep % 2 == 0 else journal_configs[::-1]:
                    os.sync()
                    value = uvloop.run(
                        workloads.manifests(
                            target, "bench/journal", parts, plan.manifests, CONCURRENCY, rep
                        )
                    )
                    results.cluster.setdefault(f"manifests/s, journal {name}", []).append(value)
                    _log(f"  [{rep + 1}/{plan.reps}] journal {name}: {value:,.0f} manifests/s")


def describe(plan: ClusterPlan) -> str:
    return (
        f"cluster: {plan.manifests} manifests per latency/journal run, {plan.reps} run(s) per "
        f"configuration, {plan.failovers} leader kill(s)"
    )
