"""Concurrent changes to the same accounts through two replicas (issue #9): grant and revoke
of one grant, add and remove of one team member, token create and revoke, disable and
enable of a user whose pull loop runs meanwhile, a delete of a user while its pull loop
runs, a user deleted while it is added to a team, a team deleted while a member is added
to it, an organization deleted while a team is added to it.

Nothing answers 5xx. Afterwards the store is consistent (every record decodes, no orphan
membership or token index key: tests/accounts_state.py) and what the API lists is what
both replicas enforce: the user pulls and pushes exactly as the listed grants, team
members and disabled flag say, every listed token works and every revoked one does not.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import pytest

from tests.accounts_state import read_accounts, with_store
from tests.cluster import AUTH, Cluster, Node, push_image

PASSWORD = "race-password-1"
ROUNDS = 24
REPO = "race/app"
_SOURCES = itertools.count(1)


@dataclass
class Log:
    """Every answer of the test's requests by status, and the 5xx ones in full."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def note(self, what: str, resp: httpx.Response) -> httpx.Response:
        with self.lock:
            self.statuses[resp.status_code] = self.statuses.get(resp.status_code, 0) + 1
            if resp.status_code >= 500:
                self.errors.append(f"{what}: {resp.status_code} {resp.text[:300]}")
        return resp


def client(node: Node, who: tuple[str, str] | None, fresh: bool = False) -> httpx.Client:
    """`fresh`: from a loopback address of its own (failed logins count per address)."""
    transport = None
    if fresh:
        n = next(_SOURCES)
        transport = httpx.HTTPTransport(local_address=f"127.2.{n // 250}.{n % 250 + 1}")
    return httpx.Client(base_url=node.url, auth=who, timeout=60, transport=transport)


@dataclass
class Race:
    c: Cluster
    a: Node
    b: Node
    log: Log


@pytest.fixture(scope="module")
def race(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Race]:
    c = Cluster(tmp_path_factory.mktemp("races"))
    try:
        a = c.install()
        b = c.join()
        push_image(a, REPO, "v1", "race")
        with client(a, AUTH) as api:
            for name in ("racer", "victim"):
                ok(api.post("/api/v0/users", json={"name": name, "password": PASSWORD}))
            ok(api.post("/api/v0/orgs", json={"name": "race"}))
            ok(api.post("/api/v0/teams", json={"org": "race", "team": "crew"}))
            grant = {"role": "write", "on": "race", "to": "team:race/crew"}
            ok(api.post("/api/v0/grants", json=grant))
            ok(api.post("/api/v0/grants", json={**grant, "to": "user:victim"}))
        yield Race(c, a, b, Log())
    finally:
        c.shutdown()


def ok(resp: httpx.Response) -> Any:
    assert resp.status_code == 200, (resp.request.url, resp.text)
    return resp.json()


def together(*jobs: Callable[[], None]) -> None:
    """Run the jobs at once; re-raise the first failure."""
    with ThreadPoolExecutor(len(jobs)) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()


def repeat(node: Node, log: Log, calls: list[tuple[str, dict[str, Any]]]) -> Callable[[], None]:
    """ROUNDS times, each of `calls` (path, body) as the admin through `node`."""

    def run() -> None:
        with client(node, AUTH) as api:
            for _ in range(ROUNDS):
                for path, body in calls:
                    log.note(path, api.post(path, json=body))

    return run


def pull_loop(node: Node, log: Log, who: tuple[str, str], stop: threading.Event) -> list[int]:
    """Pull REPO's manifest until `stop`; the statuses. From an address of its own (the
    pulls of a deleted user are failed logins)."""
    seen: list[int] = []
    with client(node, who, fresh=True) as c:
        while not stop.is_set():
            seen.append(log.note("pull", c.get(f"/v2/{REPO}/manifests/v1")).status_code)
    return seen


def test_concurrent_account_changes_on_two_replicas(race: Race) -> None:
    a, b, log = race.a, race.b, race.log
    stop = threading.Event()
    loops: list[list[int]] = []
    tokens: list[tuple[str, str]] = []  # (id, token) of every token racer made
    revoked: set[str] = set()

    def loop(node: Node, who: tuple[str, str]) -> Callable[[], None]:
        return lambda: loops.append(pull_loop(node, log, who, stop))

    def make_tokens() -> None:
        with client(a, ("racer", PASSWORD)) as me:
            for _ in range(ROUNDS):
                r = log.note(
                    "token", me.post("/api/v0/tokens", json={"scopes": [f"repository:{REPO}:pull"]})
                )
                if r.status_code == 200:
                    tokens.append((r.json()["id"], r.json()["token"]))

    def revoke_tokens() -> None:
        with client(b, AUTH) as api:
            for _ in range(ROUNDS):
                listed = log.note("tokens", api.get("/api/v0/tokens", params={"user": "racer"}))
                for t in listed.json()["tokens"][:2]:
                    r = log.note("revoke", api.post("/api/v0/tokens/revoke", json={"id": t["id"]}))
                    if r.status_code == 200:
                        revoked.add(t["id"])

    member = {"org": "race", "team": "crew", "user": "racer"}
    grant = {"role": "read", "on": REPO, "to": "user:racer"}
    with ThreadPoolExecutor(4) as pool:
        pulls = [
            pool.submit(loop(n, who))
            for n in (a, b)
            for who in (("racer", PASSWORD), ("victim", PASSWORD))
        ]
        together(
            repeat(a, log, [("/api/v0/grants", grant)]),
            repeat(b, log, [("/api/v0/grants/revoke", {"on": REPO, "to": "user:racer"})]),
            repeat(a, log, [("/api/v0/teams/add-member", member)]),
            repeat(b, log, [("/api/v0/teams/remove-member", member)]),
            repeat(a, log, [("/api/v0/users/disable", {"name": "racer"})]),
            repeat(b, log, [("/api/v0/users/enable", {"name": "racer"})]),
            make_tokens,
            revoke_tokens,
        )
        stop.set()
        for p in pulls:
            p.result()
    assert log.errors == [], log.errors
    assert all(s in (200, 401, 403, 429) for seen in loops for s in seen), loops
    assert_consistent(race)
    assert_enforced(race, tokens, revoked)


def test_deleted_user_stops_pulling_at_once_on_both_replicas(race: Race) -> None:
    """Pulls of a user started after its delete answered never succeed, on either replica;
    its token stops too and is gone from the store."""
    a, b, log = race.a, race.b, race.log
    with client(a, ("victim", PASSWORD)) as me:
        token = ok(me.post("/api/v0/tokens", json={"scopes": [f"repository:{REPO}:pull"]}))
    deleted = threading.Event()
    after: list[int] = []

    def puller(node: Node) -> Callable[[], None]:
        def run() -> None:
            with client(node, ("victim", PASSWORD), fresh=True) as c:
                for _ in range(400):
                    started_after = deleted.is_set()
                    status = log.note("pull", c.get(f"/v2/{REPO}/manifests/v1")).status_code
                    if started_after:
                        after.append(status)
                        if len(after) > 40:
                            return

        return run

    def delete() -> None:
        time.sleep(0.3)  # (the pull loops are running: an ordering, not a timing assertion)
        with client(a, AUTH) as api:
            ok(api.post("/api/v0/users/delete", json={"name": "victim"}))
        deleted.set()

    together(puller(a), puller(b), delete)
    assert after, "no pull started after the delete"
    assert 200 not in after, after
    for node in (a, b):
        with client(node, ("victim", token["token"]), fresh=True) as c:
            assert c.get(f"/v2/{REPO}/manifests/v1").status_code == 401
    found = with_store(a.data_dir, a.etcd_client_port, read_accounts)
    assert token["id"] not in found.tokens
    assert "victim" not in found.users


Call = tuple[str, dict[str, Any]]


def duel(log: Log, first: tuple[httpx.Client, Call], second: tuple[httpx.Client, Call],
         delay: float) -> list[int]:  # fmt: skip
    """Two calls started together (the second `delay` seconds later: a sweep of the race
    window, not a timing assertion); their statuses."""
    gate = threading.Barrier(2)
    statuses = [0, 0]

    def call(i: int, api: httpx.Client, path: str, body: dict[str, Any], wait: float) -> None:
        gate.wait()
        time.sleep(wait)
        statuses[i] = log.note(path, api.post(path, json=body)).status_code

    together(
        partial(call, 0, first[0], *first[1], 0.0), partial(call, 1, second[0], *second[1], delay)
    )
    return statuses


def test_deletes_racing_additions_leave_no_orphans(race: Race) -> None:
    """A user deleted while it is added to a team, a team deleted while a member is added
    to it, an organization deleted while a team is added to it (each pair started together
    on the two replicas): no index key outlives what it points to."""
    a, b, log = race.a, race.b, race.log
    crew = {"org": "race", "team": "crew", "user": "temp"}
    tmp = {"org": "race", "team": "tmp"}
    org = {"name": "fleeting"}
    duels: list[tuple[Call, Call, Call]] = [
        (("/api/v0/users", {"name": "temp", "password": PASSWORD}),
         ("/api/v0/users/delete", {"name": "temp"}), ("/api/v0/teams/add-member", crew)),
        (("/api/v0/teams", tmp),
         ("/api/v0/teams/delete", tmp), ("/api/v0/teams/add-member", {**tmp, "user": "racer"})),
        (("/api/v0/orgs", org),
         ("/api/v0/orgs/delete", org), ("/api/v0/teams", {"org": "fleeting", "team": "t"})),
        (("/api/v0/users", {"name": "granted", "password": PASSWORD}),
         ("/api/v0/users/delete", {"name": "granted"}),
         ("/api/v0/grants", {"role": "read", "on": "race", "to": "user:granted"})),
        (("/api/v0/teams", tmp),
         ("/api/v0/teams/delete", tmp),
         ("/api/v0/grants", {"role": "read", "on": "race", "to": "team:race/tmp"})),
    ]  # fmt: skip
    with client(a, AUTH) as on_a, client(b, AUTH) as on_b:
        for setup, remove, add in duels:
            for i in range(ROUNDS):
                log.note(setup[0], on_a.post(setup[0], json=setup[1]))
                duel(log, (on_a, remove), (on_b, add), (i % 8) * 0.004)
    assert log.errors == [], log.errors
    assert_consistent(race)


def test_a_grant_needs_its_user_or_team(race: Race) -> None:
    """A grant to a name nobody holds would go to whoever takes the name later: refused."""
    with client(race.a, AUTH) as api:
        for to in ("user:ghost", "team:race/ghosts"):
            r = api.post("/api/v0/grants", json={"role": "write", "on": "race", "to": to})
            assert r.status_code == 404, r.text
            assert "create it first" in r.json()["error"]
        ok(api.post("/api/v0/users", json={"name": "ghost", "password": PASSWORD}))
    with client(race.b, ("ghost", PASSWORD), fresh=True) as ghost:
        assert ghost.get(f"/v2/{REPO}/tags/list").status_code == 403
    assert_consistent(race)


def test_two_admins_disabling_each_other_at_once_leave_one(race: Race) -> None:
    """The two enabled cluster admins disable each other through the two replicas at once:
    one wins, the other is refused (the last enabled admin stays), every round."""
    a, b, log = race.a, race.b, race.log
    with client(a, AUTH) as api:
        for name in ("boss1", "boss2"):
            ok(api.post("/api/v0/users", json={"name": name, "password": PASSWORD, "admin": True}))
    bosses = {"boss1": client(a, ("boss1", PASSWORD)), "boss2": client(b, ("boss2", PASSWORD))}
    try:
        ok(bosses["boss1"].post("/api/v0/users/disable", json={"name": "admin"}))
        for i in range(ROUNDS // 2):
            first = (bosses["boss1"], ("/api/v0/users/disable", {"name": "boss2"}))
            second = (bosses["boss2"], ("/api/v0/users/disable", {"name": "boss1"}))
            statuses = duel(log, first, second, (i % 8) * 0.004)
            assert sorted(statuses) in ([200, 401], [200, 409]), statuses
            winner = "boss1" if statuses[0] == 200 else "boss2"
            loser = "boss2" if winner == "boss1" else "boss1"
            ok(bosses[winner].post("/api/v0/users/enable", json={"name": loser}))
    finally:
        for boss in bosses.values():  # whichever is still enabled
            boss.post("/api/v0/users/enable", json={"name": "admin"})
            boss.close()
    with client(a, AUTH) as api:
        assert api.get("/api/v0/users").status_code == 200
    assert log.errors == [], log.errors


def test_a_password_change_does_not_undo_a_concurrent_disable(race: Race) -> None:
    """passwd (slow: argon2) and disable of one user at once on the two replicas: both are
    kept, whatever their order (a passwd that wrote back the record it read first undid the
    disable)."""
    a, b, log = race.a, race.b, race.log
    with client(a, AUTH) as on_a, client(b, AUTH) as on_b:
        ok(on_a.post("/api/v0/users", json={"name": "changer", "password": PASSWORD}))
        for i in range(6):
            new = f"changed-password-{i}"
            first = (on_a, ("/api/v0/users/passwd", {"name": "changer", "password": new}))
            second = (on_b, ("/api/v0/users/disable", {"name": "changer"}))
            assert duel(log, first, second, i * 0.02) == [200, 200]
            users = {u["name"]: u for u in ok(on_b.get("/api/v0/users"))["users"]}
            assert users["changer"]["disabled"] is True, i
            ok(on_b.post("/api/v0/users/enable", json={"name": "changer"}))
            with client(b, ("changer", new)) as me:
                assert me.get("/v2/").status_code == 200
    assert log.errors == [], log.errors


# -- the end state -------------------------------------------------------------------------------
def assert_consistent(race: Race) -> None:
    for node in (race.a, race.b):
        found = with_store(node.data_dir, node.etcd_client_port, read_accounts)
        assert found.problems == [], (node, found.problems)


def assert_enforced(race: Race, tokens: list[tuple[str, str]], revoked: set[str]) -> None:
    """What the API lists (through A) is what A and B enforce for racer and its tokens."""
    with client(race.a, AUTH) as api:
        users = {u["name"]: u for u in ok(api.get("/api/v0/users"))["users"]}
        on_repo = {g["to"] for g in ok(api.get("/api/v0/grants", params={"on": REPO}))["grants"]}
        teams = ok(api.get("/api/v0/teams", params={"org": "race"}))["teams"]
        listed = {
            t["id"] for t in ok(api.get("/api/v0/tokens", params={"user": "racer"}))["tokens"]
        }
    crew = next(t for t in teams if t["team"] == "crew")
    enabled = not users["racer"]["disabled"]
    member = "racer" in crew["members"]
    may_pull = enabled and (member or "user:racer" in on_repo)
    may_push = enabled and member
    assert {i for i, _ in tokens} - revoked == listed
    for node in (race.a, race.b):
        with client(node, ("racer", PASSWORD)) as c:
            pull = c.get(f"/v2/{REPO}/manifests/v1").status_code
            push = c.post(f"/v2/{REPO}/blobs/uploads/").status_code
            catalog = c.get("/v2/_catalog").json()["repositories"] if enabled else []
        assert pull == (200 if may_pull else 401 if not enabled else 403), (node, pull)
        assert push == (202 if may_push else 401 if not enabled else 403), (node, push)
        assert (REPO in catalog) == may_pull
        for token_id, token in tokens:
            with client(node, ("racer", token), fresh=True) as c:
                status = c.get(f"/v2/{REPO}/manifests/v1").status_code
            if token_id in revoked:
                assert status == 401, (node, token_id)
            else:
                assert status == (200 if may_pull else 401 if not enabled else 403), (node, status)
