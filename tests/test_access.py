"""Accounts, permissions and their enforcement on a real 2-replica cluster (issue #9 items 1,
2, 4, 7, 8): the README's walkthrough through the CLI, an authorization matrix over every
/v2 route and every /api/v0 account route x anonymous, wrong password, reader, writer (via a
team), namespace admin, cluster admin, disabled and deleted users — every allow and every
deny asserted —, a public repository pulled anonymously with skopeo, the catalog per user
(paged), the mount rule, and a disable seen on the other replica at once."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness.process import cli_env

from tests.cluster import AUTH, OCI_MANIFEST, Cluster, Node, moorage_cmd, push_image, sha256
from tests.test_clients import build_image, run

PASSWORD = "s3cret-password"
ZERO = "sha256:" + "0" * 64
UPLOAD = "0" * 32


@dataclass
class World:
    c: Cluster
    a: Node
    b: Node
    digest: str  # the manifest of acme/app:v1
    layer: str  # a blob of acme/app


def cli(c: Cluster, *args: str, stdin: str | None = None) -> Any:
    """`moorage ARGS --existing A --json` as the cluster admin; its JSON answer."""
    out = subprocess.run(
        moorage_cmd(*args, "--existing", c.nodes[0].url, "--json"),
        input=stdin or "",
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(),
        check=False,
    )
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return json.loads(out.stdout)


_SOURCES = itertools.count(1)


def http(node: Node, who: tuple[str, str] | None, fresh: bool = False) -> httpx.Client:
    """A client; `fresh`: from a loopback address of its own, so that the failed logins
    this module makes on purpose stay under the per-address limits (30 in 5 minutes)."""
    transport = None
    if fresh:
        n = next(_SOURCES)
        transport = httpx.HTTPTransport(local_address=f"127.1.{n // 250}.{n % 250 + 1}")
    return httpx.Client(base_url=node.url, auth=who, timeout=30, transport=transport)


def creds(name: str) -> tuple[str, str]:
    return (name, PASSWORD)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    c = Cluster(tmp_path_factory.mktemp("access"))
    try:
        a = c.install()
        b = c.join()
        body = push_image(a, "acme/app", "v1", "app")
        push_image(a, "acme/pub", "v1", "pub")
        push_image(a, "alice/own", "v1", "own")
        push_image(a, "other/secret", "v1", "secret")
        layer = json.loads(body)["layers"][0]["digest"]
        # The README's walkthrough, through the CLI (the rest through the API: cheaper).
        doc = cli(c, "user", "add", "writer", "--password-stdin", stdin=PASSWORD + "\n")
        assert doc == {"name": "writer", "admin": False, "disabled": False}
        cli(c, "org", "add", "acme")
        cli(c, "team", "add", "acme/devs")
        cli(c, "team", "add-member", "acme/devs", "writer")
        cli(c, "grant", "write", "--on", "acme", "--to", "team:acme/devs")
        with http(a, AUTH) as api:
            for name in ("reader", "nsadmin", "alice", "gone", "off"):
                r = api.post("/api/v0/users", json={"name": name, "password": PASSWORD})
                assert r.status_code == 200, r.text
            for role, on, to in [
                ("read", "acme/app", "user:reader"),
                ("admin", "acme", "user:nsadmin"),
                ("write", "acme", "user:gone"),
                ("write", "acme", "user:off"),
            ]:
                r = api.post("/api/v0/grants", json={"role": role, "on": on, "to": to})
                assert r.status_code == 200, r.text
            assert api.post("/api/v0/users/delete", json={"name": "gone"}).status_code == 200
            assert api.post("/api/v0/users/disable", json={"name": "off"}).status_code == 200
            r = api.post("/api/v0/policies", json={"on": "acme", "quota": "1GiB"})
            assert r.status_code == 200, r.text
        yield World(c, a, b, sha256(body), layer)
    finally:
        c.shutdown()


# -- the /v2 matrix --------------------------------------------------------------------------

PULL, PUSH, DELETE, BASE, CATALOG = "pull", "push", "delete", "base", "catalog"

#: (method, path, body, what it needs). Every allowed request is harmless: deletes name
#: digests that do not exist, the manifest put is invalid, uploads are unknown.
V2: list[tuple[str, str, bytes | None, str]] = [
    ("GET", "/v2/", None, BASE),
    ("GET", "/v2/_catalog", None, CATALOG),
    ("GET", "/v2/acme/app/manifests/v1", None, PULL),
    ("HEAD", "/v2/acme/app/manifests/v1", None, PULL),
    ("GET", "/v2/acme/app/blobs/{layer}", None, PULL),
    ("HEAD", "/v2/acme/app/blobs/{layer}", None, PULL),
    ("GET", "/v2/acme/app/tags/list", None, PULL),
    ("GET", "/v2/acme/app/referrers/{digest}", None, PULL),
    ("POST", "/v2/acme/app/blobs/uploads/", None, PUSH),
    ("GET", f"/v2/acme/app/blobs/uploads/{UPLOAD}", None, PUSH),
    ("PATCH", f"/v2/acme/app/blobs/uploads/{UPLOAD}", b"x", PUSH),
    ("PUT", f"/v2/acme/app/blobs/uploads/{UPLOAD}?digest={ZERO}", b"", PUSH),
    ("DELETE", f"/v2/acme/app/blobs/uploads/{UPLOAD}", None, PUSH),
    ("PUT", "/v2/acme/app/manifests/v2", b"{not a manifest", PUSH),
    ("DELETE", f"/v2/acme/app/manifests/{ZERO}", None, DELETE),
    ("DELETE", f"/v2/acme/app/blobs/{ZERO}", None, DELETE),
]

#: Who holds what on acme/app (None: the credentials prove nothing, a 401 everywhere).
ACTORS: dict[str, tuple[tuple[str, str] | None, set[str] | None]] = {
    "anonymous": (None, set()),
    "wrong password": (("reader", "not-the-password"), None),
    "disabled": (creds("off"), None),
    "deleted": (creds("gone"), None),
    "no grant": (creds("alice"), {BASE, CATALOG}),
    "reader": (creds("reader"), {BASE, CATALOG, PULL}),
    "writer": (creds("writer"), {BASE, CATALOG, PULL, PUSH}),
    "namespace admin": (creds("nsadmin"), {BASE, CATALOG, PULL, PUSH, DELETE}),
    "cluster admin": (AUTH, {BASE, CATALOG, PULL, PUSH, DELETE}),
}


#: Actors whose every request is a failed login: each from an address of its own.
FAILING = frozenset({"wrong password", "deleted"})


@pytest.mark.parametrize("actor", list(ACTORS))
def test_v2_authorization_matrix(world: World, actor: str) -> None:
    who, holds = ACTORS[actor]

    def check(route: tuple[str, str, bytes | None, str]) -> str | None:
        method, path, body, need = route
        url = path.format(layer=world.layer, digest=world.digest)
        with http(world.b, who, fresh=actor in FAILING) as c:
            r = c.request(method, url, content=body)
        # no credentials, or credentials that prove nothing: 401
        expected = "401" if not holds else "allowed" if need in holds else "403"
        got = str(r.status_code) if r.status_code in (401, 403) else "allowed"
        if got == "401":
            assert "www-authenticate" in r.headers
        if got != "allowed" and method != "HEAD":
            code = "UNAUTHORIZED" if got == "401" else "DENIED"
            assert r.json()["errors"][0]["code"] == code
        if got != expected:
            return f"{method} {url}: {r.status_code} {r.text[:120]} (want {expected})"
        return None

    with ThreadPoolExecutor(4) as pool:  # the failed logins' argon2 checks are slow
        wrong = [w for w in pool.map(check, V2) if w]
    assert wrong == []


def test_allowed_requests_really_work(world: World) -> None:
    """The allowed cells above do what they should: the reader pulls, the writer pushes
    but cannot delete, the namespace admin deletes."""
    with http(world.a, creds("reader")) as c:
        r = c.get("/v2/acme/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert r.status_code == 200
        assert sha256(r.content) == world.digest
        assert c.get(f"/v2/acme/app/blobs/{world.layer}").status_code == 200
        assert c.get("/v2/acme/app/tags/list").json()["tags"] == ["v1"]
    with http(world.a, creds("writer")) as c:
        blob = b"written by the writer"
        r = c.post(f"/v2/acme/new/blobs/uploads/?digest={sha256(blob)}", content=blob)
        assert r.status_code == 201, r.text
        assert c.delete(f"/v2/acme/new/blobs/{sha256(blob)}").status_code == 403
    with http(world.a, creds("nsadmin")) as c:
        assert c.delete(f"/v2/acme/new/blobs/{sha256(blob)}").status_code == 202
    with http(world.a, creds("alice")) as c:  # her own namespace
        blob = b"alice's own"
        r = c.post(f"/v2/alice/x/blobs/uploads/?digest={sha256(blob)}", content=blob)
        assert r.status_code == 201, r.text
        assert c.get("/v2/acme/app/tags/list").status_code == 403


# -- the /api/v0 account routes ----------------------------------------------------------------

ADMIN_ONLY, NS_ADMIN, SELF = "admin", "nsadmin", "self"

#: (method, path, body, who may). Allowed calls fail harmlessly after the permission check
#: (an invalid name, an unknown grant, a non-boolean), or only read.
API: list[tuple[str, str, dict[str, Any] | None, str]] = [
    ("GET", "/api/v0/users", None, ADMIN_ONLY),
    ("POST", "/api/v0/users", {"name": "Bad Name!"}, ADMIN_ONLY),
    ("POST", "/api/v0/users/passwd", {"name": "nobody-at-all", "password": "x"}, ADMIN_ONLY),
    ("POST", "/api/v0/users/passwd", {"name": "reader", "password": "short"}, SELF),
    ("POST", "/api/v0/users/disable", {"name": "nobody-at-all"}, ADMIN_ONLY),
    ("POST", "/api/v0/users/enable", {"name": "nobody-at-all"}, ADMIN_ONLY),
    ("POST", "/api/v0/users/delete", {"name": "nobody-at-all"}, ADMIN_ONLY),
    ("GET", "/api/v0/orgs", None, ADMIN_ONLY),
    ("POST", "/api/v0/orgs", {"name": "-bad"}, ADMIN_ONLY),
    ("POST", "/api/v0/orgs/delete", {"name": "nosuchorg"}, ADMIN_ONLY),
    ("GET", "/api/v0/teams?org=acme", None, ADMIN_ONLY),
    ("POST", "/api/v0/teams", {"org": "nosuchorg", "team": "t"}, ADMIN_ONLY),
    ("POST", "/api/v0/teams/delete", {"org": "acme", "team": "nosuch"}, ADMIN_ONLY),
    (
        "POST",
        "/api/v0/teams/add-member",
        {"org": "acme", "team": "nosuch", "user": "x"},
        ADMIN_ONLY,
    ),
    (
        "POST",
        "/api/v0/teams/remove-member",
        {"org": "acme", "team": "devs", "user": "x"},
        ADMIN_ONLY,
    ),
    ("GET", "/api/v0/grants", None, ADMIN_ONLY),
    ("GET", "/api/v0/grants?on=acme", None, NS_ADMIN),
    ("POST", "/api/v0/grants", {"role": "read", "on": "acme/app", "to": "bad"}, NS_ADMIN),
    ("POST", "/api/v0/grants/revoke", {"on": "acme", "to": "user:nobody-at-all"}, NS_ADMIN),
    ("POST", "/api/v0/repositories/public", {"repo": "acme/app", "public": "x"}, NS_ADMIN),
    ("POST", "/api/v0/grants", {"role": "read", "on": "other", "to": "bad"}, ADMIN_ONLY),
    ("POST", "/api/v0/repositories/public", {"repo": "other/secret", "public": "x"}, ADMIN_ONLY),
    # A namespace admin sets its namespace's policies but the quota the operator set on it:
    # it may neither raise nor remove it (allowed calls fail on a bad value / setting name).
    ("POST", "/api/v0/policies", {"on": "acme", "keep_last": "x"}, NS_ADMIN),
    ("POST", "/api/v0/policies", {"on": "acme", "quota": "no size"}, ADMIN_ONLY),
    ("POST", "/api/v0/policies/unset", {"on": "acme", "settings": ["quota", "x"]}, ADMIN_ONLY),
    (
        "POST",
        "/api/v0/policies/unset",
        {"on": "acme", "settings": ["immutable_tags", "x"]},
        NS_ADMIN,
    ),
    ("POST", "/api/v0/policies", {"on": "other", "keep_last": "x"}, ADMIN_ONLY),
]

API_HOLDS: dict[str, set[str] | None] = {
    "anonymous": None,
    "wrong password": None,
    "disabled": None,
    "deleted": None,
    "no grant": set(),
    "reader": {SELF},
    "writer": set(),
    "namespace admin": {NS_ADMIN},
    "cluster admin": {ADMIN_ONLY, NS_ADMIN, SELF},
}


@pytest.mark.parametrize("actor", list(ACTORS))
def test_api_authorization_matrix(world: World, actor: str) -> None:
    who = ACTORS[actor][0]
    holds = API_HOLDS[actor]

    def check(route: tuple[str, str, dict[str, Any] | None, str]) -> str | None:
        method, path, body, need = route
        with http(world.b, who, fresh=actor in FAILING) as c:
            r = c.request(method, path, json=body)
        expected = "401" if holds is None else "allowed" if need in holds else "403"
        got = str(r.status_code) if r.status_code in (401, 403) else "allowed"
        if got == "allowed":
            assert r.status_code in (200, 400, 404, 409), (path, r.text)
        assert "error" in r.json() or r.status_code == 200
        if got != expected:
            return f"{method} {path}: {r.status_code} {r.text[:120]} (want {expected})"
        return None

    with ThreadPoolExecutor(4) as pool:
        wrong = [w for w in pool.map(check, API) if w]
    assert wrong == []


# -- public repositories, the catalog, mounts ------------------------------------------------


def test_public_repository_pulled_anonymously_with_skopeo(world: World, tmp_path: Path) -> None:
    host = world.a.url.removeprefix("http://")
    ref = f"docker://{host}/acme/pub:v1"

    def inspect() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", "--no-creds", ref],
            capture_output=True,
            text=True,
            timeout=120,
        )

    refused = inspect()
    assert refused.returncode != 0
    cli(world.c, "repo", "set-public", "acme/pub")
    try:
        pulled = subprocess.run(
            ["skopeo", "copy", "--src-tls-verify=false", "--src-no-creds", ref,
             f"dir:{tmp_path / 'pulled'}"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert pulled.returncode == 0, pulled.stderr
        assert (tmp_path / "pulled" / "manifest.json").exists()
        # a real client pushes with a writer's password (via its team), not a reader's
        for who, ok in (("writer", True), ("reader", False)):
            pushed = subprocess.run(
                ["skopeo", "copy", "--dest-tls-verify=false", "--dest-creds",
                 f"{who}:{PASSWORD}", f"dir:{tmp_path / 'pulled'}",
                 f"docker://{host}/acme/copied:{who}"],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert (pushed.returncode == 0) is ok, pushed.stderr
        with http(world.b, None) as c:  # the other replica too; and no push for anyone
            assert c.get("/v2/acme/pub/tags/list").json()["tags"] == ["v1"]
            assert c.post("/v2/acme/pub/blobs/uploads/").status_code == 401
        with http(world.b, creds("alice")) as c:
            assert c.get("/v2/acme/pub/tags/list").status_code == 200
            assert c.post("/v2/acme/pub/blobs/uploads/").status_code == 403
    finally:
        cli(world.c, "repo", "set-public", "acme/pub", "--off")
    with http(world.b, None) as c:
        assert c.get("/v2/acme/pub/tags/list").status_code == 401


def catalog(
    node: Node, who: tuple[str, str], n: int | None = None, links: list[str] | None = None
) -> list[str]:
    """The whole catalog, following Link headers (kept in `links`)."""
    out: list[str] = []
    url = "/v2/_catalog" + (f"?n={n}" if n else "")
    with http(node, who) as c:
        for _ in range(100):
            r = c.get(url)
            assert r.status_code == 200, r.text
            out += r.json()["repositories"]
            link = r.headers.get("link")
            if not link:
                return out
            url = link.split(";")[0].strip("<>")
            if links is not None:
                links.append(url)
    raise AssertionError("the catalog's links never ended")


def test_catalog_shows_only_what_the_caller_may_pull(world: World) -> None:
    everything = catalog(world.a, AUTH)
    assert {"acme/app", "acme/pub", "alice/own", "other/secret"} <= set(everything)
    for who, want in [
        (creds("reader"), {"acme/app"}),
        (creds("alice"), {r for r in everything if r.startswith("alice/")}),
        (creds("nsadmin"), {r for r in everything if r.startswith("acme/")}),
    ]:
        full = catalog(world.b, who)
        assert set(full) == want, who
        links: list[str] = []
        assert catalog(world.b, who, n=1, links=links) == full  # filtered per page, links go on
        # No link names a repository the caller may not see: past one, `last` is sealed.
        hidden = set(everything) - want
        for url in links:
            last = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["last"][0]
            assert last not in hidden, (who, url)
            assert last in want or last.startswith("~"), (who, url)
        sealed = [u for u in links if "last=~" in u or "last=%7E" in u]
        assert sealed, links
        # A cursor works on every replica (the cluster secret), a forged one is refused.
        with http(world.a, who) as c:
            assert c.get(sealed[0]).status_code == 200
            r = c.get(sealed[0][:-4] + "AAAA")
            assert r.status_code == 400
            assert r.json()["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID"
            # Every cursor has one length: it does not tell how long the hidden name is.
            cursors = [
                urllib.parse.parse_qs(urllib.parse.urlsplit(u).query)["last"][0] for u in sealed
            ]
            assert len({len(cursor) for cursor in cursors}) == 1, cursors
            # A `last` in clear must be a name the caller was shown: placing a page after
            # any other (a hidden name, a prefix of one, a made-up string) would let the
            # presence of a Link spell out hidden names a letter at a time.
            for last in [*sorted(hidden)[:2], "a", "other", "zz", "Bad Name", min(want)]:
                r = c.get("/v2/_catalog", params={"n": 1, "last": last})
                if last in want:
                    assert r.status_code == 200, r.text
                    continue
                assert r.status_code == 400, (who, last, r.text)
                assert r.json()["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID"
    assert catalog(world.b, AUTH, n=2) == everything
    # A cluster admin may start anywhere, even after no valid name (it sees every name).
    with http(world.b, AUTH) as c:
        for last in ("acme", "Acme!"):
            r = c.get("/v2/_catalog", params={"last": last})
            assert r.status_code == 200, r.text
            assert r.json()["repositories"][0] > last


def test_mount_needs_pull_on_the_source(world: World) -> None:
    with http(world.a, creds("writer")) as c:
        own = json.loads(
            httpx.get(
                f"{world.a.url}/v2/alice/own/manifests/v1",
                auth=AUTH,
                headers={"Accept": OCI_MANIFEST},
            ).content
        )["layers"][0]["digest"]
        r = c.post(f"/v2/acme/app/blobs/uploads/?mount={own}&from=alice/own")
        assert r.status_code == 202  # not allowed to pull alice/own: an ordinary upload
        r = c.post(f"/v2/acme/app/blobs/uploads/?mount={own}")
        assert r.status_code == 202  # no `from`: only what acme/app already holds
        assert c.head(f"/v2/acme/app/blobs/{own}").status_code == 404
        r = c.post(f"/v2/acme/other/blobs/uploads/?mount={world.layer}&from=acme/app")
        assert r.status_code == 201  # may pull acme/app
    with http(world.a, AUTH) as c:  # a cluster admin may link any blob it can read
        r = c.post(f"/v2/acme/other/blobs/uploads/?mount={own}")
        assert r.status_code == 201


# -- at once, on every replica -------------------------------------------------------------------


def test_disable_and_delete_take_effect_on_the_other_replica_at_once(world: World) -> None:
    # B decides from its cache, which its etcd watch keeps current (not a TTL, not a read)
    assert "access watch established" in world.b.log_tail(5000)
    cli(world.c, "user", "add", "temp", "--password-stdin", stdin=PASSWORD + "\n")
    cli(world.c, "grant", "read", "--on", "acme/app", "--to", "user:temp")
    with http(world.b, creds("temp")) as b:
        for _ in range(3):  # warm every cache of replica B
            assert b.get("/v2/acme/app/tags/list").status_code == 200
        with http(world.a, AUTH) as a:
            r = a.post("/api/v0/users/disable", json={"name": "temp"})
            assert r.status_code == 200, r.text
            assert b.get("/v2/acme/app/tags/list").status_code == 401
            assert a.post("/api/v0/users/enable", json={"name": "temp"}).status_code == 200
            assert b.get("/v2/acme/app/tags/list").status_code == 200
            r = a.post("/api/v0/grants/revoke", json={"on": "acme/app", "to": "user:temp"})
            assert r.status_code == 200, r.text
            assert b.get("/v2/acme/app/tags/list").status_code == 403
            assert a.post("/api/v0/users/delete", json={"name": "temp"}).status_code == 200
            assert b.get("/v2/acme/app/tags/list").status_code == 401


def test_the_last_cluster_admin_cannot_be_disabled_or_deleted(world: World) -> None:
    with http(world.a, AUTH) as a:
        for action in ("disable", "delete"):
            r = a.post(f"/api/v0/users/{action}", json={"name": AUTH[0]})
            assert r.status_code == 409
            assert "last enabled cluster admin" in r.json()["error"]


def test_a_missing_name_is_said_to_be_missing(world: World) -> None:
    """`GET /api/v0/teams` without `?org=` said "invalid organization name 'None'"."""
    with http(world.a, AUTH) as a:
        r = a.get("/api/v0/teams")
        assert r.status_code == 400
        assert r.json()["error"] == "the organization name is missing"
        r = a.post("/api/v0/teams", json={"team": "t"})
        assert r.status_code == 400
        assert "missing" in r.json()["error"]


def test_generated_password_is_printed_once_and_works(world: World) -> None:
    doc = cli(world.c, "user", "add", "gen")
    assert len(doc["password"]) >= 16
    with http(world.a, ("gen", doc["password"])) as c:
        assert c.get("/v2/").status_code == 200
        assert c.get("/v2/gen/x/tags/list").status_code == 404  # its own namespace, empty
    users = cli(world.c, "user", "list")["users"]
    assert {"name": "gen", "admin": False, "disabled": False} in users
    assert all("password" not in u for u in users)


def test_accounts_are_in_the_backup_snapshot(world: World) -> None:
    """What `moorage backup` reads holds every account record (a restore writes them back:
    tests/unit/test_policy.py), and none of them is refused as invalid."""
    records: list[dict[str, Any]] = []
    with http(world.b, AUTH) as c:
        query: dict[str, Any] = {"paged": "1"}
        while True:
            r = c.get("/api/v0/cluster/backup", params=query)
            assert r.status_code == 200, r.text
            doc = r.json()
            assert doc["invalid"] == []
            records += doc["records"]
            if doc["next"] is None:
                break
            query = {"paged": "1", "revision": doc["revision"], "after": doc["next"]}
    kinds = {rec["kind"] for rec in records}
    assert {"user", "org", "team", "membership", "grant"} <= kinds
    users = {rec["name"]: rec for rec in records if rec["kind"] == "user"}
    assert users["off"]["disabled"] is True
    assert "gone" not in users
    assert {"kind": "membership", "user": "writer", "org": "acme", "team": "devs"} in records
    grant = {"kind": "grant", "target": "acme", "subject": "team:acme/devs", "role": "write"}
    assert grant in records


def test_the_walkthrough_podman_writer_reader_robot_and_the_audit_log(
    world: World, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The issue's check as a new user runs it: the team's writer pushes with podman (the
    token flow), a reader pulls but can neither push nor delete, a robot token pushes with
    skopeo until it is revoked, and the audit log shows each step with who did it."""
    c, a = world.c, world.a
    host = a.url.removeprefix("http://")
    start = time.time()
    src = tmp_path / "src"
    build_image(src, "v1", "amd64", [{"walk.txt": b"walkthrough\n"}], tmp_path)

    # The writer (team acme/devs holds write on acme) pushes with podman.
    runroot = Path(tempfile.mkdtemp(prefix="moorage-podman-"))
    request.addfinalizer(lambda: shutil.rmtree(runroot, ignore_errors=True))
    store = tmp_path / "podman"
    podman = ["podman", "--root", str(store / "root"), "--runroot", str(runroot),
              "--tmpdir", str(store / "tmp"), "--storage-driver", "vfs"]  # fmt: skip
    image_id = run(*podman, "pull", f"oci:{src}:v1").strip().splitlines()[-1]
    run(*podman, "tag", image_id, f"{host}/acme/walk:v1")
    run(*podman, "push", "--tls-verify=false", "--creds", f"writer:{PASSWORD}",
        f"{host}/acme/walk:v1")  # fmt: skip
    with http(world.b, AUTH) as h:
        assert h.get("/v2/acme/walk/tags/list").json()["tags"] == ["v1"]

    # A reader of acme/walk pulls it, and cannot push or delete.
    cli(c, "grant", "read", "--on", "acme/walk", "--to", "user:reader")
    pulled = subprocess.run(
        ["skopeo", "copy", "--src-tls-verify=false", "--src-creds", f"reader:{PASSWORD}",
         f"docker://{host}/acme/walk:v1", f"dir:{tmp_path / 'pulled'}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr
    pushed = subprocess.run(
        [*podman, "push", "--tls-verify=false", "--creds", f"reader:{PASSWORD}",
         f"{host}/acme/walk:v1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert pushed.returncode != 0
    with http(world.b, creds("reader")) as h:
        digest = h.head("/v2/acme/walk/manifests/v1", headers={"Accept": OCI_MANIFEST}).headers.get(
            "Docker-Content-Digest"
        )
        assert digest
        assert h.delete(f"/v2/acme/walk/manifests/{digest}").status_code == 403
        assert "acme/walk" in h.get("/v2/_catalog").json()["repositories"]
    with http(world.b, creds("alice")) as h:  # no grant on acme: not in its catalog
        assert "acme/walk" not in h.get("/v2/_catalog").json()["repositories"]

    # A robot token pushes with skopeo, and stops working once revoked.
    made = cli(c, "token", "create", "--robot", "walk", "--scope",
               "repository:acme/walk:pull,push", "--expires", "1d")  # fmt: skip
    robot = f"{made['username']}:{made['token']}"

    def robot_copy(tag: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", robot,
             f"oci:{src}:v1", f"docker://{host}/acme/walk:{tag}"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    first = robot_copy("robot")
    assert first.returncode == 0, first.stderr
    cli(c, "token", "revoke", made["id"])
    assert robot_copy("after-revoke").returncode != 0
    with http(a, AUTH) as h:
        assert sorted(h.get("/v2/acme/walk/tags/list").json()["tags"]) == ["robot", "v1"]

    # The audit log has every step, with who did it.
    out = subprocess.run(
        moorage_cmd("audit", "--existing", a.url, "--since", f"{start - 1:.3f}", "--json"),
        capture_output=True, text=True, timeout=120, env=cli_env(), check=True,
    )  # fmt: skip
    seen = {
        (e["action"], e["actor"], e["target"]) for e in map(json.loads, out.stdout.splitlines())
    }
    for step in [
        ("push", "writer", "acme/walk:v1"),
        ("grant", "admin", "acme/walk"),
        ("push", made["username"], "acme/walk:robot"),
    ]:
        assert step in seen, (step, sorted(seen))
    actions = {action for action, _, _ in seen}
    assert {"token.create", "token.revoke"} <= actions, sorted(seen)
