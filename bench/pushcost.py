"""`python -m bench.pushcost`: the push path of this checkout against another git ref.

What the quota usage counter (meta/usage.py) and the garbage collection guards cost a push:
two Moorage replicas side by side (one API worker each, authenticated, plain HTTP), one
running this checkout's `src`, the other the `src` of `--ref` (default `main`, exported
with `git archive` and put first on the replica's PYTHONPATH). The quick plan's write
metrics of `python -m bench`, measured on both in turn each round (so load on the machine
falls on both alike): manifest PUT at concurrency 16, 4 KiB blobs at concurrency 16,
32 MiB monolithic and chunked (8 MiB) pushes. Medians over `--rounds`.

Usage: python -m bench.pushcost [--ref main] [--rounds 5] [--output FILE]
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


async def one_round(
    target: Target, parts: ImageParts, base: bytes, round_: int
) -> dict[str, float]:
    conn = target.connect()
    try:
        await workloads.push_parts(conn, "bench/manifests", parts, None)
    finally:
        conn.close()
    return {
        "manifests": await workloads.manifests(target, "bench/manifests", parts, 50, 16, round_),
        "small": await workloads.small_blobs(target, "bench/small", 100, 4096, 16),
        "mono": await workloads.timed_push(
            target, "bench/mono", workloads.unique_blob(base, "m"), None
        ),
        "chunked": await workloads.timed_push(
            target, "bench/chunked", workloads.unique_blob(base, "c"), 8 * MiB
        ),
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, list[float]]]:
    p = argparse.ArgumentParser(prog="python -m bench.pushcost")
    p.add_argument("--ref", default="main")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--output", type=Path, default=REPO_ROOT / "bench" / "results" / "pushcost.md")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="moorage-pushcost-"))
    commit = export(args.ref, tmp / "ref")
    other = servers.moorage(tmp, 1, name=f"Moorage {args.ref}")
    other.env["PYTHONPATH"] = str(tmp / "ref" / "src")
    this = servers.moorage(tmp, 1, name="Moorage this")
    both: list[Server] = [other, this]
    runs: dict[str, dict[str, list[float]]] = {s.name: {m: [] for m in METRICS} for s in both}
    base, parts = os.urandom(32 * MiB), ImageParts.new()
    try:
        for server in both:
            server.start()
        for server in both:
            server.wait_ready()
        for r in range(args.rounds):
            for server in both if r % 2 == 0 else reversed(both):
                target = Target(server.name, server.url, server.authorization)
                got = uvloop.run(one_round(target, parts, base, r))
                for metric, value in got.items():
                    runs[server.name][metric].append(value)
                print(f"round {r} {server.name}: {got}", file=sys.stderr, flush=True)
    finally:
        for server in both:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [
        f"# Push path: this checkout against {args.ref} ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        *(line for line in machine_info(REPO_ROOT) if "Distribution" not in line),
        f"- {args.ref} at {commit}; {args.rounds} rounds, both measured in each (order "
        f"alternating), medians; load average at the end "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}",
        "",
        f"| metric | unit | {args.ref} | this | change | runs {args.ref} / this |",
        "|---|---|---:|---:|---:|---|",
    ]
    for metric, (label, unit) in METRICS.items():
        a, b = runs[other.name][metric], runs[this.name][metric]
        ma, mb = statistics.median(a), statistics.median(b)
        spread = f"{min(a):.0f} to {max(a):.0f} / {min(b):.0f} to {max(b):.0f}"
        lines.append(
            f"| {label} | {unit} | {ma:.0f} | {mb:.0f} | {(mb / ma - 1) * 100:+.0f} % | {spread} |"
        )
    text = "\n".join(lines) + "\n"
    args.output.write_text(text)
    print(text)
    return runs


if __name__ == "__main__":
    main()
