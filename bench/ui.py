"""The web UI's Repositories page over 10,000 repositories (`python -m bench.ui`).

One replica (bench.cluster: `moorage install`) is filled through the API with `--repos`
repositories of one tag each (bench.scale's images), then the pages are timed on loopback,
signed in as the admin, as a user who may pull the whole namespace (a grant on it), and as
one who may pull nothing (every name filtered out: the most the page ever scans):

- the first page, a page in the middle of the catalog (`after=`), and a search that
  matches one repository;
- one repository's tags.

A request's time is measured by the client on loopback (the median of `--times`): an upper
bound of the server's time. Writes bench/results/ui.md.

Usage: python -m bench.ui [--repos 10000] [--times 15]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from harness.process import AUTH, REPO_ROOT

from bench.cluster import AUTHORIZATION, running
from bench.report import machine_info
from bench.scale import RESULTS, _log, _pool, _push_repo_blobs, _put_manifest, repo_name

PASSWORD = "bench-ui-password-1234"


def _signed_in(url: str, user: str, password: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=60)
    page = client.get("/ui/signin")
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match, page.text[:300]
    form = {"username": user, "password": password, "csrf": match.group(1)}
    r = client.post("/ui/signin", data=form)
    assert r.status_code == 303, r.text[:300]
    return client


def _median_ms(client: httpx.Client, path: str, times: int, expect: str) -> float:
    samples = []
    for _ in range(times):
        t = time.monotonic()
        r = client.get(path)
        samples.append((time.monotonic() - t) * 1000)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        assert expect in r.text, (path, expect)
    return statistics.median(samples)


def run(args: argparse.Namespace, root: Path) -> list[tuple[str, str, float]]:
    rows: list[tuple[str, str, float]] = []
    with running(root, "ui", 1, {"MOORAGE_LOG_LEVEL": "WARNING"}) as cluster:
        url = cluster.replicas[0].url
        names = [repo_name(i) for i in range(args.repos)]
        t = time.monotonic()
        asyncio.run(_pool([url], AUTHORIZATION, names, _push_repo_blobs))
        tags = ((n, "v1", None) for n in names)
        asyncio.run(_pool([url], AUTHORIZATION, tags, _put_manifest))
        _log(f"  {args.repos} repositories pushed in {time.monotonic() - t:.0f} s")
        with httpx.Client(base_url=url, headers={"Authorization": AUTHORIZATION}) as api:
            for user in ("reader", "nobody"):
                r = api.post("/api/v0/users", json={"name": user, "password": PASSWORD})
                assert r.status_code < 300, r.text
            grant = {"on": "scale", "to": "user:reader", "role": "read"}
            assert api.post("/api/v0/grants", json=grant).status_code < 300
        viewers = {
            "admin": _signed_in(url, *AUTH),
            "reader (read on the namespace)": _signed_in(url, "reader", PASSWORD),
            "nobody (may pull nothing)": _signed_in(url, "nobody", PASSWORD),
        }
        middle = repo_name(args.repos // 2)
        one = repo_name(args.repos - 7)
        for who, client in viewers.items():
            sees = who != "nobody (may pull nothing)"
            pages = [
                ("first page", "/ui/repositories", repo_name(0) if sees else "No repositories"),
                (
                    "middle page",
                    f"/ui/repositories?after={middle}",
                    repo_name(args.repos // 2 + 1) if sees else "No repositories",
                ),
                ("search for one", f"/ui/repositories?q={one[-6:]}", one if sees else "No"),
            ]
            if sees:
                pages.append(("one repository's tags", f"/ui/repository?name={one}", "v1"))
            for what, path, expect in pages:
                ms = _median_ms(client, path, args.times, expect)
                rows.append((who, what, ms))
                _log(f"  {who}: {what}: {ms:.1f} ms")
            client.close()
    return rows


def markdown(args: argparse.Namespace, rows: list[tuple[str, str, float]]) -> str:
    lines = [
        f"# Web UI: the Repositories page over {args.repos:,} repositories",
        "",
        "`python -m bench.ui`: one replica on loopback; the median of "
        f"{args.times} requests, measured by the client (an upper bound of server time).",
        "",
        *machine_info(REPO_ROOT),
        "",
        "| viewer | page | median ms |",
        "|---|---|---|",
    ]
    lines += [f"| {who} | {what} | {ms:.1f} |" for who, what, ms in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ui", description=__doc__)
    parser.add_argument("--repos", type=int, default=10000)
    parser.add_argument("--times", type=int, default=15)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="moorage-bench-ui-") as tmp:
        rows = run(args, Path(tmp))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ui.md").write_text(markdown(args, rows))
    _log(f"wrote {RESULTS / 'ui.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
