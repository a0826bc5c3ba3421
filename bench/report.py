"""The results table (stdout and bench/results/*.md) and the machine description."""

from __future__ import annotations

import datetime
import math
import os
import platform
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    target: float | None  # Moorage/Distribution ratio to reach (or not exceed when lower is better)
    decimals: int = 0


METRICS: dict[str, Metric] = {
    m.key: m
    for m in [
        Metric("push_mono", "push monolithic (POST+PUT)", "MB/s", True, 2.0),
        Metric("push_chunked", "push chunked (8 MiB PATCH)", "MB/s", True, 2.0),
        Metric("pull", "pull (GET blob)", "MB/s", True, 1.0),
        Metric("small_blobs", "4 KiB blobs, concurrency 16", "blobs/s", True, 3.0),
        Metric("manifests", "manifest PUT, concurrency 16", "manifests/s", True, 2.0),
        Metric("manifest_get", "manifest GET by tag, concurrency 32", "req/s", True, 2.0),
        Metric("manifest_head", "manifest HEAD by tag, concurrency 32", "req/s", True, None),
        Metric("catalog", "catalog n=1000", "ms/request", False, 0.5, 1),
        Metric("rss", "peak RSS, all processes", "MiB", False, None),
    ]
}


# The cluster section (bench/cluster.py): Moorage only, Distribution has no equivalent.
CLUSTER_METRICS: dict[str, str] = {
    "cluster_latency": "manifest PUT latency p50/p99, concurrency 16, 1, 3 and 5 replicas",
    "failover": "write gap and failed pulls after SIGKILL of the etcd leader's replica",
    "journal": "manifest PUT throughput, concurrency 16, journal on vs off",
}


@dataclass
class Results:
    """Samples per metric per server, plus the server CPU seconds each metric consumed."""

    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    ceiling: dict[str, float] = field(default_factory=dict)
    disk: dict[str, float] = field(default_factory=dict)  # bench.disk: the disk's own ceiling
    cluster: dict[str, list[float]] = field(default_factory=dict)  # raw values per figure
    notes: list[str] = field(default_factory=list)
    # peak RSS in MiB per server, per kind of process (bench.servers.role_of)
    memory: dict[str, dict[str, float]] = field(default_factory=dict)

    def add(self, metric: str, server: str, value: float, cpu_seconds: float = 0.0) -> None:
        self.samples.setdefault(metric, {}).setdefault(server, []).append(value)
        per_server = self.cpu.setdefault(metric, {})
        per_server[server] = per_server.get(server, 0.0) + cpu_seconds

    def value(self, metric: str, server: str) -> float | None:
        values = self.samples.get(metric, {}).get(server)
        return statistics.median(values) if values else None


def _fmt(value: float | None, decimals: int) -> str:
    return "—" if value is None else f"{value:,.{decimals}f}"


def _ratio_cell(metric: Metric, moorage: float | None, dist: float | None) -> str:
    if moorage is None or not dist:
        return "—"
    ratio = moorage / dist
    text = f"{ratio:.2f}x"
    if not metric.higher_is_better:
        text += " (lower is better)"
    return text


def _target_cell(metric: Metric, moorage: float | None, dist: float | None) -> str:
    if metric.target is None:
        return "—"
    sign = "≥" if metric.higher_is_better else "≤"
    goal = f"{sign}{metric.target:g}x"
    if moorage is None or not dist:
        return goal
    ratio = moorage / dist
    met = ratio >= metric.target if metric.higher_is_better else ratio <= metric.target
    return f"{goal} {'met' if met else '**below**'}"


def table(results: Results) -> str:
    lines = [
        "| metric | unit | Moorage | Distribution | Moorage/Distribution | target |",
        "|---|---|---:|---:|---:|---|",
    ]
    for metric in METRICS.values():
        if metric.key not in results.samples:
            continue
        moorage = results.value(metric.key, "Moorage")
        dist = results.value(metric.key, "Distribution")
        lines.append(
            f"| {metric.label} | {metric.unit} | {_fmt(moorage, metric.decimals)} | "
            f"{_fmt(dist, metric.decimals)} | {_ratio_cell(metric, moorage, dist)} | "
            f"{_target_cell(metric, moorage, dist)} |"
        )
    return "\n".join(lines)


def _servers(results: Results) -> list[str]:
    """Every server measured, in the order first measured (Moorage, Distribution, ...)."""
    names: dict[str, None] = {}
    for per_server in results.samples.values():
        names.update(dict.fromkeys(per_server))
    return list(names)


def detail_table(results: Results) -> str:
    names = _servers(results)
    lines = [
        "| metric | "
        + " | ".join(f"{n} runs" for n in names)
        + " | "
        + " | ".join(f"server CPU s, {n}" for n in names)
        + " |",
        "|---|" + "---|" * len(names) + "---:|" * len(names),
    ]
    for key, per_server in results.samples.items():
        if key == "rss":
            continue
        decimals = METRICS[key].decimals
        runs = {s: ", ".join(_fmt(v, decimals) for v in vs) for s, vs in per_server.items()}
        cpu = results.cpu.get(key, {})
        lines.append(
            f"| {key} | "
            + " | ".join(runs.get(n, "—") for n in names)
            + " | "
            + " | ".join(f"{cpu.get(n, 0.0):.1f}" for n in names)
            + " |"
        )
    return "\n".join(lines)


def _change(metric: Metric, plain: float | None, tls: float | None) -> str:
    """What HTTPS changes against plain HTTP, signed so that negative is worse."""
    if plain is None or tls is None or not plain:
        return "—"
    change = round((tls / plain - 1) * 100)
    if not metric.higher_is_better:
        change = -change
    return f"{change:+d} %"


def tls_table(results: Results) -> str:
    """`--tls-compare`: each registry over plain HTTP and over HTTPS, medians; the change is
    HTTPS against HTTP, negative when HTTPS is worse; the ratios over each transport side by
    side (the read targets of issue #13 hold for both)."""
    lines = [
        "| metric | unit | Moorage HTTP | Moorage HTTPS | TLS change | Distribution HTTP | "
        "Distribution HTTPS | TLS change | Moorage/Distribution, HTTP | "
        "Moorage/Distribution, HTTPS |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for metric in METRICS.values():
        if metric.key not in results.samples:
            continue
        m, mt = results.value(metric.key, "Moorage"), results.value(metric.key, "Moorage HTTPS")
        d = results.value(metric.key, "Distribution")
        dt = results.value(metric.key, "Distribution HTTPS")
        n = metric.decimals
        lines.append(
            f"| {metric.label} | {metric.unit} | {_fmt(m, n)} | {_fmt(mt, n)} | "
            f"{_change(metric, m, mt)} | {_fmt(d, n)} | {_fmt(dt, n)} | {_change(metric, d, dt)} "
            f"| {_ratio_cell(metric, m, d)} | {_ratio_cell(metric, mt, dt)} |"
        )
    return "\n".join(lines)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, `q` in 0..100."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * q / 100)) - 1]


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def cluster_table(results: Results) -> str:
    """The cluster figures; Distribution is a single process with no replication or journal."""
    c = results.cluster
    if not c:
        return ""
    na = "n/a (no equivalent)"
    lines = ["| metric | unit | Moorage | Distribution | target |", "|---|---|---:|---|---|"]
    one = c.get("push ms, 1 replica")
    if one:
        for q in (50, 99):
            a = percentile(one, q)
            lines.append(
                f"| manifest PUT latency p{q}, concurrency 16, 1 replica | ms | {a:,.1f} | {na} "
                "| — |"
            )
            for n in (3, 5):
                more = c.get(f"push ms, {n} replicas")
                if more:
                    b = percentile(more, q)
                    lines.append(
                        f"| manifest PUT latency p{q}, concurrency 16, {n} replicas round-robin "
                        f"| ms | {b:,.1f} ({b / a:.2f}x of 1 replica) | {na} | — |"
                    )
    gaps = c.get("write gap s")
    if gaps:
        failed = c.get("failed pulls in the gap", [])
        probe = c.get("write gap s, a new push every 100 ms", [0.0])
        worst_failed = max(failed, default=0.0)
        n = len(gaps)
        lines += [
            f"| write gap after SIGKILL of the etcd leader's replica, median of {n} | s | "
            f"{statistics.median(gaps):.2f} | {na} | ≤2 s {_met(statistics.median(gaps) <= 2)} |",
            f"| write gap, worst of {n} | s | {max(gaps):.2f} | {na} | "
            f"≤2 s {_met(max(gaps) <= 2)} |",
            f"| write gap with a new push every 100 ms (not one after another), median / "
            f"worst of {n} | s | {statistics.median(probe):.2f} / {max(probe):.2f} | {na} | — |",
            f"| failed pulls during the write gap, median / worst of {n} | pulls | "
            f"{statistics.median(failed):.0f} / {worst_failed:.0f} | {na} | "
            f"0 {_met(worst_failed == 0)} |",
        ]
    on, off = c.get("manifests/s, journal on"), c.get("manifests/s, journal off")
    if on and off:
        a, b = statistics.median(on), statistics.median(off)
        lines += [
            f"| manifest PUT, concurrency 16, 1 replica, journal on | manifests/s | {a:,.0f} | "
            f"{na} | — |",
            f"| manifest PUT, concurrency 16, 1 replica, journal off (MOORAGE_JOURNAL=0) | "
            f"manifests/s | {b:,.0f} | {na} | — |",
            f"| journal on / journal off | ratio | {a / b:.2f}x | {na} | — |",
        ]
    return "\n".join(lines)


def cluster_runs(results: Results) -> str:
    lines = ["| figure | values |", "|---|---|"]
    for key, values in results.cluster.items():
        if key.startswith("push ms"):
            text = f"{len(values)} PUTs, p50 {percentile(values, 50):,.1f}, "
            text += f"p90 {percentile(values, 90):,.1f}, p99 {percentile(values, 99):,.1f}, "
            text += f"max {max(values):,.1f}"
        else:
            decimals = 2 if key.startswith("write gap") else 0
            text = ", ".join(_fmt(v, decimals) for v in values)
        lines.append(f"| {key} | {text} |")
    return "\n".join(lines)


def _figures_table(heading: str, figures: dict[str, float]) -> str:
    if not figures:
        return ""
    lines = [f"| {heading} | value |", "|---|---:|"]
    lines += [f"| {name} | {value:,.0f} |" for name, value in figures.items()]
    return "\n".join(lines)


def ceiling_table(results: Results) -> str:
    return _figures_table("client ceiling (against a do-nothing server)", results.ceiling)


def disk_table(results: Results) -> str:
    return _figures_table("disk ceiling (the benchmark's directory, best of 2)", results.disk)


def _run(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def machine_info(repo: Path) -> list[str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    commit = _run("git", "-C", str(repo), "rev-parse", "--short", "HEAD")
    dirty = _run("git", "-C", str(repo), "status", "--porcelain", "--", "src")
    return [
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {os.cpu_count()} CPUs ({cpu}), {mem_kib / 1024 / 1024:.1f} GiB RAM, "
        f"{platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}; Moorage at {commit or '?'}"
        f"{' (src has uncommitted changes)' if dirty else ''}",
        f"- Distribution: {_run('/usr/bin/docker-registry', '--version') or '?'}",
    ]


def memory_table(results: Results) -> str:
    """Peak RSS per kind of process. Each peak is its own maximum, so they need not add up
    to the peak of the sum (the main table's row)."""
    if not results.memory:
        return ""
    lines = ["| server | process | peak RSS, MiB |", "|---|---|---:|"]
    for server, roles in results.memory.items():
        for role, mib in roles.items():
            lines.append(f"| {server} | {role} | {mib:,.0f} |")
    return "\n".join(lines)


#: Figures other commands measure (too long for every `make bench`), shown beside its table
#: as their last results say: (file in bench/results, the command that writes it).
BESIDE = (
    ("scale.md", "make bench-scale"),
    ("etcd-size.md", "python -m bench.etcd_size"),
)


def beside(results_dir: Path) -> list[str]:
    """The last results of the BESIDE commands, each headed by its command and file."""
    parts: list[str] = []
    for name, command in BESIDE:
        path = results_dir / name
        if not path.exists():
            parts += [f"### `{command}`", "", f"no bench/results/{name} yet: run `{command}`", ""]
            continue
        lines = path.read_text().splitlines()
        body = [f"#{line}" if line.startswith("#") else line for line in lines[1:]]
        parts += [f"### `{command}` (bench/results/{name}, as last run)", *body, ""]
    return parts


def markdown(
    results: Results, repo: Path, header: list[str], beside_dir: Path | None = None
) -> str:
    parts = ["# Moorage vs Distribution", "", *machine_info(repo), *header, ""]
    if results.samples:
        parts += [
            table(results),
            "",
            "MB = 10^6 bytes. Throughput values are medians of the runs below. The ratio is "
            "Moorage/Distribution: above 1 is better for Moorage except where lower is better.",
            "",
        ]
        if any("Moorage HTTPS" in per_server for per_server in results.samples.values()):
            parts += [
                "## What TLS costs",
                "",
                "Each registry twice, over plain HTTP (the table above) and over HTTPS (TLS "
                "1.2+, the client verifying the server), the four measured in turn in each "
                "round. TLS change: HTTPS against HTTP, negative when HTTPS is worse.",
                "",
                tls_table(results),
                "",
            ]
        parts += [
            "## Runs and server CPU time",
            "",
            detail_table(results),
            "",
        ]
    if results.cluster:
        parts += [
            "## Cluster",
            "",
            "Moorage only: Distribution has no equivalent (no built-in replication, no "
            "journal). Clusters built with `moorage install` and `moorage join` on 127.0.0.1, "
            "one etcd member per replica, shared storage. Latency percentiles pool every run "
            "(nearest rank). The write gap runs from the SIGKILL of every process of the etcd "
            "leader's replica until a push started after the kill succeeds, with one pusher "
            "and one puller on each surviving replica; the failed pulls are those overlapping "
            "that window. A prober also starts a new push every 100 ms whatever the "
            "earlier ones wait for: its gap tells the cluster's own write outage apart from "
            "the time that pushes in flight at the kill stay stuck. The killed replica is "
            "restarted with `moorage start` between kills.",
            "",
            cluster_table(results),
            "",
            "### Cluster runs",
            "",
            cluster_runs(results),
            "",
        ]
    memory = memory_table(results)
    if memory:
        parts += ["## Memory per process", "", memory, ""]
    ceiling = ceiling_table(results)
    if ceiling:
        parts += ["## Client ceiling", "", ceiling, ""]
    disk = disk_table(results)
    if disk:
        parts += [
            "## Disk ceiling",
            "",
            disk,
            "",
            "What the disk gives a durable write, measured the way Moorage writes "
            "(bench/disk.py): a push's fsynced bytes cannot arrive faster than the first "
            "figure; Distribution does not wait for the disk.",
            "",
        ]
    if results.notes:
        parts += ["## Notes", "", *[f"- {n}" for n in results.notes], ""]
    if beside_dir is not None:
        parts += ["## Beside this run: scale and etcd size", "", *beside(beside_dir)]
    return "\n".join(parts)
