"""Accounts at scale (issue #9): a registry of tens of thousands of users, organizations,
teams, grants, audit events and 100,000 repositories, of which one non-admin user may pull
a scattered 1%.

The records are written straight into etcd with the store's own record code (the API would
take hours to make them: each account change waits for every replica's watch), then the
replica is asked, as that user and as the admin, for what must stay paged and bounded:

- the catalog, filtered for the user, walked with n=1000 and without n (at most 10,000
  names a page), which must list exactly the repositories the user may pull, in order;
- the users, grants and audit listings, walked to their end;
- a token for 32 scattered repositories (granted exactly the pullable ones);
- a first pull in a namespace with many grants after the access cache was emptied;
- a user's delete (its grants are found in one pass over all grants).

Each is timed and its etcd reads counted from etcd's own metrics (range requests and bytes
sent to clients), beside the replica's memory (RSS of its processes). The test
(tests/test_accounts_scale.py) runs a smaller registry and asserts correctness and that no
listing page, catalog page or token reads more than a tenth of what its records weigh;
`python -m bench.accounts_scale` runs the full size and writes
bench/results/accounts_scale.md and .json.

Usage: python -m bench.accounts_scale [--users N] [--orgs N] [--repos-per-org N]
[--grants N] [--audit N] [--root DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

import httpx
from harness.process import AUTH, REPO_ROOT
from harness.replica import Replica

from moorage.audit import AuditEvent
from moorage.audit.log import Keys, encode
from moorage.auth.passwords import hash_password
from moorage.meta import keys
from moorage.meta.account_records import GrantRecord, OrgRecord, TeamRecord
from moorage.meta.base import MetaStore, Op, Put, op_batches
from moorage.meta.etcd import ClientTls, EtcdMetaStore
from moorage.meta.records import UserRecord
from moorage.pki.files import TlsDir

T = TypeVar("T")
USER = "scaler"
PASSWORD = "scaler-password-1"
HOT_USER = "hotshot"
RESULTS = REPO_ROOT / "bench" / "results"


@dataclass(frozen=True)
class Size:
    users: int = 20_000
    orgs: int = 2_000
    repos_per_org: int = 50  # 100,000 repositories
    grants: int = 50_000
    audit: int = 20_000
    teams_per_org: int = 1
    members_per_team: int = 5
    public: int = 100
    hot_share: float = 0.2  # of the grants, on one namespace's repositories
    seed: int = 7

    @property
    def repos(self) -> int:
        return self.orgs * self.repos_per_org


@dataclass
class World:
    """What was written, and what the user may pull (computed here, independently of the
    policy: the reference the replica's answers are compared with)."""

    size: Size
    ops: list[Op] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    repos: list[str] = field(default_factory=list)
    pullable: list[str] = field(default_factory=list)  # USER's, in catalog order
    grant_keys: list[str] = field(default_factory=list)  # `<target>@<subject>`, sorted
    hot_repo: str = ""
    weight: dict[str, int] = field(default_factory=dict)  # bytes of keys + values per kind


def org_name(i: int) -> str:
    return f"o{i:04d}"


def plan(size: Size) -> World:
    """Every record of the registry, as store operations, and the reference answer."""
    rnd = random.Random(size.seed)
    w = World(size)
    password_hash = hash_password(PASSWORD)

    def put(kind: str, key: bytes, value: bytes) -> None:
        w.ops.append(Put(key, value))
        w.weight[kind] = w.weight.get(kind, 0) + len(key) + len(value)

    plain = [f"u{i:05d}" for i in range(size.users)]  # (USER and HOT_USER get no random grant)
    w.users = sorted([*plain, USER, HOT_USER])
    for name in w.users:
        put("users", keys.user(name), UserRecord(name, password_hash, "user").encode())
    orgs = [org_name(i) for i in range(size.orgs)]
    teams: list[str] = []
    memberships: dict[str, set[str]] = {USER: set()}
    for org in orgs:
        put("orgs", keys.org(org), OrgRecord(org).encode())
        for t in range(size.teams_per_org):
            members = set(rnd.sample(plain, size.members_per_team))
            if org in (orgs[7 % len(orgs)], orgs[-1]) and t == 0:
                members.add(USER)  # USER pulls two whole namespaces through its teams
            team = TeamRecord(org, f"t{t}", tuple(sorted(members)))
            put("teams", keys.team(org, team.name), team.encode())
            teams.append(f"{org}/{team.name}")
            for m in members:
                put("memberships", keys.membership(m, org, team.name), b"{}")
                memberships.setdefault(m, set()).add(f"{org}/{team.name}")
    for org in orgs:
        w.repos += [f"{org}/r{r:03d}" for r in range(size.repos_per_org)]
    own = [f"{USER}/own{r:02d}" for r in range(10)]  # USER's own namespace: all of it
    w.repos += own
    for repo in w.repos:
        put("repos", keys.repo(repo), b"{}")
    public = set(rnd.sample(w.repos, size.public))
    for repo in sorted(public):
        put("public", keys.public(repo), b"{}")

    roles: dict[tuple[str, str], str] = {}  # (target, subject) -> role
    mine = {f"user:{USER}"} | {f"team:{t}" for t in memberships[USER]}
    for org in sorted({t.split("/")[0] for t in memberships[USER]}):
        roles[(org, f"team:{org}/t0")] = "read"
    team_orgs = {t.split("/")[0] for t in memberships[USER]}
    pool = [r for r in w.repos if r.split("/")[0] not in team_orgs | {USER}]
    for repo in rnd.sample(pool, max(0, size.repos // 100 - len(public) - 2 * size.repos_per_org)):
        roles[(repo, f"user:{USER}")] = rnd.choice(["read", "write", "admin"])
    hot = orgs[len(orgs) // 3]  # (away from the middle, where the probes read)
    hot_repos = [f"{hot}/r{r:03d}" for r in range(size.repos_per_org)]
    w.hot_repo = hot_repos[-1]
    roles[(w.hot_repo, f"user:{HOT_USER}")] = "read"
    subjects = [f"user:{u}" for u in plain] + [f"team:{t}" for t in teams]
    others = [s for s in subjects if s not in mine]
    while len(roles) < size.grants:
        if rnd.random() < size.hot_share:
            target = rnd.choice(hot_repos)
        else:
            target = rnd.choice(w.repos[: size.repos]) if rnd.random() < 0.9 else rnd.choice(orgs)
        roles[(target, rnd.choice(others))] = rnd.choice(["read", "write", "admin"])
    for (target, subject), role in sorted(roles.items()):
        put("grants", keys.grant(target, subject), GrantRecord(target, subject, role).encode())
    w.grant_keys = sorted(f"{t}@{s}" for t, s in roles)

    names = Keys("bench.accounts")
    start = time.time() - size.audit
    for i in range(size.audit):
        event = AuditEvent(
            "login", f"u{i % max(size.users, 1):05d}", f"user:u{i:05d}", at=start + i
        )
        put("audit", names.next(event.at), encode(event))

    def may_pull(repo: str) -> bool:
        ns = repo.split("/")[0]
        if ns == USER or repo in public:
            return True
        return any((t, s) in roles for t in (ns, repo) for s in mine)

    w.pullable = sorted(r for r in w.repos if may_pull(r))
    return w


# -- etcd ------------------------------------------------------------------------------------
def store_of(replica: Replica) -> EtcdMetaStore:
    tls = ClientTls(*TlsDir(replica.data_dir).client_material())
    return EtcdMetaStore([f"https://127.0.0.1:{replica.etcd_client_port}"], tls=tls)


def with_store(replica: Replica, work: Callable[[MetaStore], Any]) -> Any:
    async def go() -> Any:
        store = store_of(replica)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(go())


def write(replica: Replica, world: World) -> float:
    """Every operation of the plan, in bounded transactions; the seconds it took."""

    async def go(store: MetaStore) -> None:
        batches = list(op_batches(world.ops))
        for i in range(0, len(batches), 8):  # 8 transactions in flight
            done = await asyncio.gather(*(store._txn([], b) for b in batches[i : i + 8]))
            assert all(done)

    started = time.monotonic()
    with_store(replica, go)
    return time.monotonic() - started


@dataclass
class Reads:
    ranges: int
    sent: int  # bytes etcd sent to its clients


class Meter:
    """etcd's own counters of range requests and bytes sent to clients (all clients: the
    replica's background jobs add a little)."""

    def __init__(self, replica: Replica) -> None:
        self.url = f"https://127.0.0.1:{replica.etcd_client_port}/metrics"
        self.verify = TlsDir(replica.data_dir).client_context()

    def read(self) -> Reads:
        text = httpx.get(self.url, verify=self.verify, timeout=30).text
        ranges = sent = 0
        for line in text.splitlines():
            if line.startswith("etcd_debugging_mvcc_range_total "):
                ranges = int(float(line.split()[1]))
            elif line.startswith("etcd_network_client_grpc_sent_bytes_total "):
                sent = int(float(line.split()[1]))
        return Reads(ranges, sent)

    def during(self, work: Callable[[], T]) -> tuple[T, Reads, float]:
        """`work()`, the etcd reads it caused and its seconds."""
        before = self.read()
        started = time.monotonic()
        out = work()
        seconds = time.monotonic() - started
        after = self.read()
        return out, Reads(after.ranges - before.ranges, after.sent - before.sent), seconds


def rss_mib(replica: Replica) -> dict[str, float]:
    """Resident memory of the replica's processes (supervisor, API workers, etcd), MiB."""
    out: dict[str, float] = {}
    for name, pid in replica.pids().items():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                out[name] = round(int(line.split()[1]) / 1024, 1)
    return out


# -- the walks -------------------------------------------------------------------------------
@dataclass
class Walk:
    names: list[str] = field(default_factory=list)
    pages: int = 0
    seconds: list[float] = field(default_factory=list)
    reads: list[Reads] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "pages": self.pages,
            "items": len(self.names),
            "total_s": round(sum(self.seconds), 3),
            "page_ms_mean": round(1000 * statistics.mean(self.seconds), 1),
            "page_ms_max": round(1000 * max(self.seconds), 1),
            "ranges_per_page_max": max(r.ranges for r in self.reads),
            "kib_per_page_max": round(max(r.sent for r in self.reads) / 1024, 1),
        }


def catalog_pages(
    c: httpx.Client, meter: Meter, n: int | None, limit: int = 1_000_000
) -> Iterator[tuple[list[str], Reads, float]]:
    url: str | None = "/v2/_catalog" + (f"?n={n}" if n else "")
    while url is not None and limit > 0:
        limit -= 1
        resp, reads, seconds = meter.during(lambda u=url: c.get(u))  # type: ignore[misc]
        assert resp.status_code == 200, resp.text
        link = resp.headers.get("link")
        url = link.split(";")[0].strip("<>") if link else None
        yield resp.json()["repositories"], reads, seconds


def walk_catalog(c: httpx.Client, meter: Meter, n: int | None) -> Walk:
    walk = Walk()
    for names, reads, seconds in catalog_pages(c, meter, n):
        walk.names += names
        walk.pages += 1
        walk.seconds.append(seconds)
        walk.reads.append(reads)
    return walk


def walk_listing(c: httpx.Client, meter: Meter, path: str, items: str, **params: Any) -> Walk:
    """An /api/v0 listing with `n`/`last` (`more`) or the audit log's `cursor` (`next`)."""
    walk = Walk()
    cursor: dict[str, Any] = {}
    while True:
        query = {**params, **cursor}
        resp, reads, seconds = meter.during(lambda q=query: c.get(path, params=q))  # type: ignore[misc]
        assert resp.status_code == 200, resp.text
        doc = resp.json()
        walk.names += [json.dumps(x, sort_keys=True) for x in doc[items]]
        walk.pages += 1
        walk.seconds.append(seconds)
        walk.reads.append(reads)
        if "next" in doc:
            if not doc["next"]:
                return walk
            cursor = {"cursor": doc["next"]}
        else:
            if not doc["more"]:
                return walk
            cursor = {"last": doc["last"]}


def _one(reads: Reads, seconds: float) -> dict[str, Any]:
    return {"ms": round(1000 * seconds, 1), **asdict(reads)}


def probes(replica: Replica, world: World, n: int = 100) -> dict[str, dict[str, Any]]:
    """One page of each listing from the middle (n names), a token for 32 scattered
    repositories and single pulls: the time and etcd reads of each. AssertionError on a
    wrong answer."""
    meter = Meter(replica)
    out: dict[str, dict[str, Any]] = {}
    middle_user = world.users[len(world.users) // 2]
    middle_repo = world.repos[len(world.repos) // 2]
    middle_grant = world.grant_keys[len(world.grant_keys) // 2]
    since = time.time() - world.size.audit / 2  # (the events are one second apart)
    with httpx.Client(base_url=replica.url, auth=AUTH, timeout=600) as admin:
        for kind, path, params in (
            ("users_page", "/api/v0/users", {"n": n, "last": middle_user}),
            ("grants_page", "/api/v0/grants", {"n": n, "last": middle_grant}),
            ("audit_page", "/api/v0/audit", {"limit": n, "since": f"{since:.0f}"}),
            ("catalog_admin_page", "/v2/_catalog", {"n": n, "last": middle_repo}),
        ):
            resp, reads, seconds = meter.during(lambda p=path, q=params: admin.get(p, params=q))  # type: ignore[misc]
            assert resp.status_code == 200, (kind, resp.text)
            out[kind] = _one(reads, seconds)
        admin.post("/api/v0/orgs", json={"name": "cache-buster"}).raise_for_status()
    with httpx.Client(base_url=replica.url, auth=(USER, PASSWORD), timeout=600) as me:
        assert me.get("/v2/").status_code == 200  # (the password check, once)
        # A page after a name the caller was not shown is refused (its Link would tell how
        # many hidden names follow); after one of its own, it is served.
        hidden = next(r for r in world.repos[len(world.repos) // 2 :] if r not in world.pullable)
        refused = me.get("/v2/_catalog", params={"n": n, "last": hidden})
        assert refused.status_code == 400, refused.text
        mine = world.pullable[len(world.pullable) // 2]
        resp, reads, seconds = meter.during(
            lambda: me.get("/v2/_catalog", params={"n": n, "last": mine})
        )
        assert resp.status_code == 200, resp.text
        # The page: the caller's repositories right after `last`, in order (its Link's own
        # `last` is sealed when the last name read is not one of them: moorage.api.cursors).
        shown = resp.json()["repositories"]
        read = sorted(r for r in world.repos if r > mine)[:n]
        pullable = set(world.pullable)
        assert shown == [r for r in read if r in pullable], "a catalog page"
        end = unquote(resp.headers["link"].split("last=", 1)[1].split(">", 1)[0])
        assert end.startswith("~") or end == shown[-1], "a catalog page's Link"
        out["catalog_user_page"] = _one(reads, seconds)
        rnd = random.Random(world.size.seed + 1)
        wanted = rnd.sample(world.repos, 24) + rnd.sample(world.pullable, 8)
        scopes = "&".join(f"scope=repository:{r}:pull" for r in wanted)
        resp, reads, seconds = meter.during(lambda: me.get(f"/auth/token?{scopes}"))
        assert resp.status_code == 200, resp.text
        claims = json.loads(_b64(resp.json()["token"].split(".")[1]))
        granted = sorted(a["name"] for a in claims["access"])
        assert granted == sorted(set(wanted) & set(world.pullable)), "the token's access"
        out["token_32_scopes"] = _one(reads, seconds)
        repo = world.pullable[len(world.pullable) // 2]
        resp, reads, seconds = meter.during(lambda: me.get(f"/v2/{repo}/tags/list"))
        assert resp.status_code == 200, resp.text
        out["pull_first"] = _one(reads, seconds)
    with httpx.Client(base_url=replica.url, auth=(HOT_USER, PASSWORD), timeout=600) as hot:
        assert hot.get("/v2/").status_code == 200
        resp, reads, seconds = meter.during(lambda: hot.get(f"/v2/{world.hot_repo}/tags/list"))
        assert resp.status_code == 200, resp.text
        out["pull_first_in_hot_namespace"] = _one(reads, seconds)
        resp, reads, seconds = meter.during(lambda: hot.get(f"/v2/{world.hot_repo}/tags/list"))
        out["pull_again_in_hot_namespace"] = _one(reads, seconds)
    return out


def walks(replica: Replica, world: World, full: bool = True) -> dict[str, Any]:
    """The catalog as the user (n=1000 cold and warm, without n, and with `full` n=100) and
    as the admin, the users, grants and audit listings to their end, a user's delete; the
    replica's memory. AssertionError on a wrong answer."""
    meter = Meter(replica)
    out: dict[str, Any] = {"rss_mib_before": rss_mib(replica)}
    with httpx.Client(base_url=replica.url, auth=(USER, PASSWORD), timeout=600) as me:
        assert me.get("/v2/").status_code == 200  # (the password check, once)
        for key, n in (("n1000_cold", 1000), ("n1000_warm", 1000), ("unpaged", None)):
            walk = walk_catalog(me, meter, n)
            assert walk.names == world.pullable, f"the user's catalog, {key}"
            out[f"catalog_user_{key}"] = walk.summary()
        if full:
            walk = walk_catalog(me, meter, 100)
            assert walk.names == world.pullable
            out["catalog_user_n100"] = walk.summary()
    with httpx.Client(base_url=replica.url, auth=AUTH, timeout=600) as admin:
        walk = walk_catalog(admin, meter, 1000)
        assert walk.names == sorted(world.repos), "the admin's catalog"
        out["catalog_admin_n1000"] = walk.summary()
        walk = walk_listing(admin, meter, "/api/v0/users", "users", n=1000)
        assert [json.loads(u)["name"] for u in walk.names] == ["admin", *world.users]
        out["users_n1000"] = walk.summary()
        walk = walk_listing(admin, meter, "/api/v0/grants", "grants", n=1000)
        assert len(walk.names) == len(world.grant_keys)
        out["grants_n1000"] = walk.summary()
        walk = walk_listing(admin, meter, "/api/v0/audit", "events", limit=1000)
        assert len(walk.names) >= world.size.audit
        out["audit_limit1000"] = walk.summary()
        out["rss_mib_after_walks"] = rss_mib(replica)
        victim = world.users[len(world.users) // 3]
        resp, reads, seconds = meter.during(
            lambda: admin.post("/api/v0/users/delete", json={"name": victim})
        )
        assert resp.status_code == 200, resp.text
        out["user_delete"] = _one(reads, seconds)
    out["rss_mib_after"] = rss_mib(replica)
    return out


def _b64(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -- the command -----------------------------------------------------------------------------
def report(size: Size, world: World, fill_s: float, found: dict[str, Any]) -> str:
    lines = [
        "# Accounts at scale",
        "",
        f"`python -m bench.accounts_scale` on {sys.platform}: {size.users:,} users, "
        f"{size.orgs:,} organizations ({size.orgs * size.teams_per_org:,} teams), "
        f"{len(world.grant_keys):,} grants ({size.hot_share:.0%} on one namespace), "
        f"{len(world.repos):,} repositories ({size.public} public), {size.audit:,} audit "
        f"events; the user `{USER}` may pull {len(world.pullable):,} of them, scattered. "
        f"Written straight into etcd in {fill_s:.1f} s.",
        "",
        "| what | pages | items | total s | ms/page mean | ms/page max | etcd ranges/page max "
        "| KiB/page max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, value in found.items():
        if isinstance(value, dict) and "pages" in value:
            lines.append(
                f"| {key} | {value['pages']} | {value['items']:,} | {value['total_s']} | "
                f"{value['page_ms_mean']} | {value['page_ms_max']} | "
                f"{value['ranges_per_page_max']} | {value['kib_per_page_max']} |"
            )
    lines += ["", "| one request | ms | etcd ranges | KiB from etcd |", "|---|---|---|---|"]
    for key, value in found.items():
        if isinstance(value, dict) and "ms" in value:
            lines.append(
                f"| {key} | {value['ms']} | {value['ranges']} | {round(value['sent'] / 1024, 1)} |"
            )
    lines += ["", "Memory (RSS, MiB) of the replica's processes:", ""]
    for key in ("rss_mib_before", "rss_mib_after_walks", "rss_mib_after"):
        lines.append(f"- {key}: {found[key]}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = Size()
    for name in ("users", "orgs", "repos_per_org", "grants", "audit"):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name)
        )
    parser.add_argument("--root", type=Path, default=None)
    args = parser.parse_args()
    size = Size(
        users=args.users,
        orgs=args.orgs,
        repos_per_org=args.repos_per_org,
        grants=args.grants,
        audit=args.audit,
    )
    root = args.root or Path(tempfile.mkdtemp(prefix="accounts-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    replica = Replica(root / "data")
    replica.start()
    try:
        started = time.monotonic()
        world = plan(size)
        print(f"planned {len(world.ops):,} records in {time.monotonic() - started:.1f} s")
        fill_s = write(replica, world)
        print(f"written in {fill_s:.1f} s")
        found = {**probes(replica, world), **walks(replica, world)}
    finally:
        replica.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"size": asdict(size), "fill_s": round(fill_s, 1), **found}
    (RESULTS / "accounts_scale.json").write_text(json.dumps(doc, indent=2) + "\n")
    text = report(size, world, fill_s, found)
    (RESULTS / "accounts_scale.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
