"""`python -m bench.pushcost`: the push path of this checkout against another git ref.

What the quota usage counter (meta/usage.py) and the garbage collection guards cost a push:
two Moorage replicas side by side (one API worker each, authenticated, plain HTTP), one
running this checkout's `src`, the other the `src` of `--ref` (default `main`, exported
with `git archive` and put first on the replica's PYTHONPATH). The quick plan's write
metrics of `python -m bench`, measured on both in turn each round (so load on the machine
falls on both alike): manifest PUT at concurrency 16, 4 KiB blobs at concurrency 16,
32 MiB monolithic and chunked (8 MiB) pushes. Medians over `--rounds`.

Usage: python -m bench.pushcost [--ref main] [--rounds 5] [--journal-off] [--output FILE]

Each metric also reports the server's CPU time per operation (less noisy than rates on a
shared machine); `--journal-off` adds a third replica of this checkout without the journal.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop
from harness.process import REPO_ROOT

from bench import servers, workloads
from bench.report import machine_info
from bench.servers import Server
from bench.workloads import ImageParts, Target

MiB = 1 << 20
METRICS = {
    "manifests": ("manifest PUT, concurrency 16", "manifests/s"),
    "small": ("4 KiB blobs, concurrency 16", "blobs/s"),
    "mono": ("push 32 MiB monolithic", "MB/s"),
    "chunked": ("push 32 MiB chunked (8 MiB)", "MB/s"),
}


def export(ref: str, into: Path) -> str:
    """`ref`'s src/ under `into`; its short commit."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", ref, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", ref],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


#: Operations per metric of one round (for server CPU per operation).
COUNTS = {"manifests": 50, "small": 100, "mono": 1, "chunked": 1}
OFF = "this, journal off"


async def one_round(
    target: Target, server: Server, parts: ImageParts, base: bytes, round_: int
) -> dict[str, tuple[float, float]]:
    """Per metric: its value and the server's CPU seconds (its whole process tree, etcd
    included) per operation."""
    conn = target.connect()
    try:
        await workloads.push_parts(conn, "bench/manifests", parts, None)
    finally:
        conn.close()
    runs: dict[str, Callable[[], Awaitable[float]]] = {
        "manifests": lambda: workloads.manifests(
            target, "bench/manifests", parts, COUNTS["manifests"], 16, round_
        ),
        "small": lambda: workloads.small_blobs(target, "bench/small", COUNTS["small"], 4096, 16),
        "mono": lambda: workloads.timed_push(
            target, "bench/mono", workloads.unique_blob(base, f"m{round_}"), None
        ),
        "chunked": lambda: workloads.timed_push(
            target, "bench/chunked", workloads.unique_blob(base, f"c{round_}"), 8 * MiB
        ),
    }
    found: dict[str, tuple[float, float]] = {}
    for metric, run in runs.items():
        os.sync()  # the previous run's dirty pages are not flushed during this one
        cpu = server.cpu_seconds()
        value = await run()
        found[metric] = (value, (server.cpu_seconds() - cpu) / COUNTS[metric])
    return found


def main(argv: list[str] | None = None) -> dict[str, dict[str, list[float]]]:
    p = argparse.ArgumentParser(prog="python -m bench.pushcost")
    p.add_argument("--ref", default="main")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument(
        "--journal-off",
        action="store_true",
        help="a third replica runs this checkout with MOORAGE_JOURNAL=0: what the journal costs",
    )
    p.add_argument("--output", type=Path, default=REPO_ROOT / "bench" / "results" / "pushcost.md")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="moorage-pushcost-"))
    commit = export(args.ref, tmp / "ref")
    other = servers.moorage(tmp, 1, name=f"Moorage {args.ref}")
    other.env["PYTHONPATH"] = str(tmp / "ref" / "src")
    this = servers.moorage(tmp, 1, name="Moorage this")
    both: list[Server] = [other, this]
    if args.journal_off:
        off = servers.moorage(tmp, 1, name=f"Moorage {OFF}")
        off.env["MOORAGE_JOURNAL"] = "0"
        both.append(off)
    runs: dict[str, dict[str, list[float]]] = {s.name: {m: [] for m in METRICS} for s in both}
    cpu: dict[str, dict[str, list[float]]] = {s.name: {m: [] for m in METRICS} for s in both}
    base, parts = os.urandom(32 * MiB), ImageParts.new()
    try:
        for server in both:
            server.start()
        for server in both:
            server.wait_ready()
        for r in range(args.rounds):
            for server in both if r % 2 == 0 else reversed(both):
                target = Target(server.name, server.url, server.authorization)
                got = uvloop.run(one_round(target, server, parts, base, r))
                for metric, (value, seconds) in got.items():
                    runs[server.name][metric].append(value)
                    cpu[server.name][metric].append(seconds)
                print(f"round {r} {server.name}: {got}", file=sys.stderr, flush=True)
    finally:
        for server in both:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    text = _report(args, commit, both, runs, cpu)
    args.output.write_text(text)
    print(text)
    return runs


def _report(
    args: argparse.Namespace,
    commit: str,
    both: list[Server],
    runs: dict[str, dict[str, list[float]]],
    cpu: dict[str, dict[str, list[float]]],
) -> str:
    other, this = both[0], both[1]
    off = both[2] if len(both) > 2 else None
    med = statistics.median
    lines = [
        f"# Push path: this checkout against {args.ref} ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        *(line for line in machine_info(REPO_ROOT) if "Distribution" not in line),
        f"- {args.ref} at {commit}; {args.rounds} rounds, each replica measured in each (order "
        f"alternating), medians; load average at the end "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}",
        "- server CPU: the replica's whole process tree (supervisor, API worker, etcd) per "
        "operation (a manifest, a blob, a 32 MiB push), in ms",
        "",
        f"| metric | unit | {args.ref} | this | change | runs {args.ref} / this "
        f"| CPU ms/op {args.ref} / this |" + (f" {OFF} | CPU ms/op, {OFF} |" if off else ""),
        "|---|---|---:|---:|---:|---|---|" + ("---:|---:|" if off else ""),
    ]
    for metric, (label, unit) in METRICS.items():
        a, b = runs[other.name][metric], runs[this.name][metric]
        ma, mb = med(a), med(b)
        spread = f"{min(a):.0f} to {max(a):.0f} / {min(b):.0f} to {max(b):.0f}"
        ca, cb = med(cpu[other.name][metric]) * 1000, med(cpu[this.name][metric]) * 1000
        row = (
            f"| {label} | {unit} | {ma:.0f} | {mb:.0f} | {(mb / ma - 1) * 100:+.0f} % | {spread} "
            f"| {ca:.2f} / {cb:.2f} |"
        )
        if off is not None:
            row += f" {med(runs[off.name][metric]):.0f} | {med(cpu[off.name][metric]) * 1000:.2f} |"
        lines.append(row)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
