"""`python -m bench.token_auth`: the manifest GET rate of one Moorage replica with a Bearer
token (the Docker token flow) against the same with Basic credentials (issue #9 item 9: a
token must not show up as a cost). Alternates the two, `--reps` times each, and writes
bench/results/token_auth.md."""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import uvloop

from bench import servers, workloads
from bench.workloads import ImageParts, Target

RESULTS = Path(__file__).resolve().parent / "results" / "token_auth.md"
REPO = "bench/manifests"


async def _run(server: servers.Server, seconds: float, reps: int) -> dict[str, list[float]]:
    url, basic = server.url, server.authorization
    parts = ImageParts.new()
    conn = Target("setup", url, basic).connect()
    try:
        await workloads.push_parts(conn, REPO, parts, None)
        await workloads.put_manifest(conn, REPO, "latest", parts.manifest("latest"))
    finally:
        conn.close()
    rates: dict[str, list[float]] = {"basic": [], "bearer": []}
    for rep in range(reps):
        for mode in ("basic", "bearer") if rep % 2 == 0 else ("bearer", "basic"):
            scope = [f"repository:{REPO}:pull"]
            auth = basic if mode == "basic" else f"Bearer {servers.bearer_token(server, scope)}"
            rate = await workloads.manifest_reads(
                Target(mode, url, auth), REPO, "latest", "GET", seconds, 32
            )
            rates[mode].append(rate)
            print(f"  manifest GET [{rep + 1}/{reps}] {mode}: {rate:,.0f}/s", file=sys.stderr)
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.token_auth", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--reps", type=int, default=3, help="measurements per mode")
    parser.add_argument("--workers", type=int, default=None, help="Moorage API workers")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    load_start = Path("/proc/loadavg").read_text().split()[:3]
    tmp = Path(tempfile.mkdtemp(prefix="moorage-bench-token-"))
    server = servers.moorage(tmp, args.workers)
    try:
        server.start()
        server.wait_ready()
        rates = uvloop.run(_run(server, args.seconds, args.reps))
    except Exception:
        print(server.log_tail(), file=sys.stderr)
        raise
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    med = {mode: statistics.median(values) for mode, values in rates.items()}
    ratio = med["bearer"] / med["basic"]
    lines = [
        "# Manifest GET: Bearer token vs Basic credentials (one Moorage replica)",
        "",
        f"- command: python -m bench.token_auth {' '.join(sys.argv[1:] if argv is None else argv)}",
        f"- {args.reps} runs of {args.seconds:g} s per mode, alternating; 32 connections",
        f"- load average at start / end: {' '.join(load_start)} / "
        f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])} (other work skews results)",
        "",
        "| auth | median req/s | runs |",
        "|---|---:|---|",
        *(f"| {m} | {med[m]:,.0f} | {', '.join(f'{v:,.0f}' for v in rates[m])} |" for m in rates),
        "",
        f"Bearer / Basic = {ratio:.3f}",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
