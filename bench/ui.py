"""The web UI's Repositories page over 10,000 repositories (`python -m bench.ui`).

One replica (bench.cluster: `moorage install`) is filled through the API with `--repos`
repositories of one tag each (bench.scale's images) and `--users` users with a grant each
(on a namespace of their own, half of them on one repository as well) and teams, so the
grant index the policy reads is realistic; then the pages are timed on loopback, signed in
as the admin, as a user who may pull the whole namespace (a grant on it), as one granted 30
repositories one by one (to itself and through two teams), and as one who may pull nothing:

- the first page, a page in the middle of the catalog (`after=`);
- a search by prefix that matches one repository (a key range);
- a search by substring that matches one repository near the end: its first request
  (which examines at most 2,000 names and links to the rest), and every request that
  follows the "Search further" links to the end;
- one repository's tags.

A request's time is measured by the client on loopback (the median of `--times`): an upper
bound of the server's time. Writes bench/results/ui.md.

Usage: python -m bench.ui [--repos 10000] [--users 100] [--times 15]
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


def _follow(client: httpx.Client, path: str) -> tuple[int, float, list[str]]:
    """Every request of a search until its last page: (requests, total ms, names shown)."""
    requests, total, names = 0, 0.0, []
    while True:
        t = time.monotonic()
        r = client.get(path)
        total += (time.monotonic() - t) * 1000
        requests += 1
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        names += re.findall(r'<li><a href="/ui/repository\?name=[^"]+">([^<]+)</a>', r.text)
        more = re.search(r'href="(/ui/repositories\?[^"]*after=[^"]+)">', r.text)
        if more is None:
            return requests, total, names
        path = more.group(1).replace("&amp;", "&")


def _accounts(api: httpx.Client, args: argparse.Namespace) -> None:
    """`reader`, `granted` and `nobody`, and --users more users with their grants."""

    def post(path: str, doc: dict[str, str]) -> None:
        r = api.post(path, json=doc)
        assert r.status_code < 300, (path, doc, r.text)

    for user in ("reader", "granted", "nobody"):
        post("/api/v0/users", {"name": user, "password": PASSWORD})
    post("/api/v0/grants", {"on": "scale", "to": "user:reader", "role": "read"})
    post("/api/v0/orgs", {"name": "benchorg"})
    step = max(1, args.repos // 30)
    for t in range(10):
        post("/api/v0/teams", {"org": "benchorg", "team": f"t{t}"})
    for i in range(args.users):
        user = f"user{i:03d}"
        post("/api/v0/users", {"name": user, "password": PASSWORD})
        post("/api/v0/teams/add-member", {"org": "benchorg", "team": f"t{i % 10}", "user": user})
        post("/api/v0/grants", {"on": f"ns{i:03d}", "to": f"user:{user}", "role": "write"})
        if i % 2:
            repo = repo_name((i * 97) % args.repos)
            post("/api/v0/grants", {"on": repo, "to": f"user:{user}", "role": "read"})
    for t in (0, 1):
        post("/api/v0/teams/add-member", {"org": "benchorg", "team": f"t{t}", "user": "granted"})
    for k in range(30):  # 10 to the user itself, 10 to each of its two teams
        to = "user:granted" if k < 10 else f"team:benchorg/t{k // 10 - 1}"
        post("/api/v0/grants", {"on": repo_name(k * step), "to": to, "role": "read"})


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
            _accounts(api, args)
        viewers = {
            "admin": _signed_in(url, *AUTH),
            "reader (read on the namespace)": _signed_in(url, "reader", PASSWORD),
            "granted (30 repositories, 2 teams)": _signed_in(url, "granted", PASSWORD),
            "nobody (may pull nothing)": _signed_in(url, "nobody", PASSWORD),
        }
        step = max(1, args.repos // 30)
        middle = repo_name(args.repos // 2)
        one = repo_name(args.repos - 7)
        for who, client in viewers.items():
            sees = who.startswith(("admin", "reader"))
            visible = sees or who.startswith("granted")  # the one searched for
            first = repo_name(0) if visible else "No repositories"
            after_middle = repo_name(args.repos // 2 + 1) if sees else ""
            if who.startswith("granted"):
                after_middle = repo_name((args.repos // 2 // step + 1) * step)
                one = repo_name(29 * step)
            pages = [
                ("first page", "/ui/repositories", first),
                ("middle page", f"/ui/repositories?after={middle}", after_middle or "No"),
                ("search by prefix for one", f"/ui/repositories?q={one}", one if visible else "No"),
                (
                    "search by substring for one: first request",
                    f"/ui/repositories?q={one[-6:]}&match=contains",
                    "Search further" if sees and args.repos > 2000 else "",
                ),
            ]
            if sees:
                pages.append(("one repository's tags", f"/ui/repository?name={one}", "v1"))
            for what, path, expect in pages:
                ms = _median_ms(client, path, args.times, expect)
                rows.append((who, what, ms))
                _log(f"  {who}: {what}: {ms:.1f} ms")
            count, total, found = _follow(client, f"/ui/repositories?q={one[-6:]}&match=contains")
            assert (one in found) == visible, (who, found)
            what = f"search by substring for one: all {count} requests to the end"
            rows.append((who, what, total))
            _log(f"  {who}: {what}: {total:.1f} ms")
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
        f"{args.users} more users, each with a grant on a namespace (half of them on one"
        " repository too), in 10 teams. A page reads only the catalog ranges the viewer may"
        " pull (web/catalog_view.py); a search by substring examines at most 2,000 names a"
        " request. The last row of each viewer is a sum, not a median.",
        "",
        "| viewer | page | median ms |",
        "|---|---|---|",
    ]
    lines += [f"| {who} | {what} | {ms:.1f} |" for who, what, ms in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ui", description=__doc__)
    parser.add_argument("--repos", type=int, default=10000)
    parser.add_argument("--users", type=int, default=100)
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
