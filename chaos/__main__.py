"""`python -m chaos`: push continuously while injecting faults; count what was lost."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from chaos.scenarios import SCENARIOS, Options, Result, run_scenario


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m chaos",
        description="Chaos harness for Moorage: concurrent pushers, one fault per scenario, "
        "then every acknowledged push is pulled and its digests verified.",
    )
    p.add_argument("--replicas", type=int, choices=(3, 5), default=3)
    p.add_argument(
        "--duration",
        type=float,
        default=30.0,
        help="seconds of load per scenario: a third before, during and after the fault",
    )
    p.add_argument("--scenario", choices=("all", *SCENARIOS), default="all")
    p.add_argument(
        "--no-replay",
        action="store_true",
        help="recover without replaying the journal (shows what etcd alone would lose)",
    )
    p.add_argument("--workers", type=int, default=4, help="concurrent pushers")
    p.add_argument(
        "--storage",
        default=None,
        metavar="S3_URL",
        help="blob storage on S3: s3://BUCKET/PREFIX?endpoint=URL&region=R (credentials from "
        "the environment as the AWS tools read them; each scenario uses a prefix below it); "
        "default: a directory of the work directory",
    )
    p.add_argument("--workdir", type=Path, default=None, help="default: a new temp directory")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, data)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--quiet", action="store_true", help="do not print the timeline")
    args = p.parse_args(argv)
    if args.storage is not None and not args.storage.startswith("s3://"):
        p.error(
            "--storage takes an s3://BUCKET/PREFIX?endpoint=URL location (without it, "
            "blob storage is a directory of the work directory)"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="moorage-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    opts = Options(
        replicas=args.replicas,
        duration=args.duration,
        replay=not args.no_replay,
        workers=args.workers,
        s3=args.storage,
        log=(lambda line: None) if args.quiet or args.json else print,
    )
    results: list[Result] = []
    started = time.monotonic()
    for name in names:
        result = run_scenario(name, opts, workdir / name)
        results.append(result)
        if not args.json:
            print(result.describe(), flush=True)
    ok = all(r.ok for r in results)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        total = sum(r.acknowledged for r in results)
        lost = sum(len(r.lost) for r in results)
        print(
            f"\nall scenarios: acknowledged {total}, lost {lost}, "
            f"{time.monotonic() - started:.0f} s: {'OK' if ok else 'FAILED'}"
        )
    if ok and not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"work directory (logs, data): {workdir}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
