"""Fuzzing the identity and access surface of a running replica (issue #9): the Docker token
endpoint (`GET`/`POST /auth/token`), the accounts API (`/api/v0/users`, `orgs`, `teams`,
`grants`, `repositories/public`), access tokens (`/api/v0/tokens`), the audit log
(`/api/v0/audit`) and forged Bearer tokens on `/v2/`.

hypothesis builds the requests the way tests/test_fuzz.py does (its strategies and raw
socket client are reused): query parameters of every shape, repeated fields, JSON bodies
whose fields hold every wrong type, deep nesting, huge and cut-short bodies, unicode and
path traversal in names, scopes of every shape, bad Basic headers, tampered refresh and
access tokens. Every answer must be below 500 and, when it is an error, a JSON document with
an `error` string; a non-admin never gets a 2xx from an admin-only endpoint; a Bearer token
that is not exactly one the registry issued never pulls. Afterwards every stored account
record still decodes and the indexes agree (tests/accounts_state.py), every listing still
pages to its end, the images pushed before pull back and the log holds no traceback.

`make test` runs the derandomized "ci" profile (a few hundred requests, about 25 s);
`make fuzz` runs FUZZ_EXAMPLES random examples per test.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from harness.process import AUTH
from harness.replica import Replica
from hypothesis import given
from hypothesis import strategies as st

from moorage.auth import jwt
from tests import rawhttp
from tests.accounts_state import read_accounts, with_store
from tests.rawhttp import Image, RawResponse, assert_pulls_back, push_image
from tests.test_fuzz import (
    _SOURCES,
    HOSTILE,
    HUGE,
    METHODS,
    NUMBERS,
    ONE_IN_4,
    ONE_IN_10,
    Request,
    bad_header,
    encoded_text,
    is_server_refusal,
    json_values,
    profile,
    send,
    splice,
)

PASSWORD = "fuzz-password-1"
USER = "fuzz-user"  # a non-admin the fuzzer signs in as (never disabled, deleted or renamed)
PROTECTED = {"admin", USER}  # never the name of a passwd, disable or delete
ORG, TEAM, REPO = "fuzz-org", "devs", "fuzz-org/app"
USERS = [USER, "fuzz-victim", "fuzz-reader", "ghost", "admin", "robot+fuzz-bot"]
ORGS = [ORG, "other-org", "ghost-org"]
TEAMS = [TEAM, "ops", "ghost-team"]
TARGETS = [ORG, REPO, "fuzz-user", "fuzz-user/own", "other-org/x", "library/busybox", "a"]
SUBJECTS = [f"user:{USER}", "user:fuzz-reader", f"team:{ORG}/{TEAM}", "team:other-org/ops"]
USER_CHANGES = ("/api/v0/users/passwd", "/api/v0/users/disable", "/api/v0/users/delete")
ADMIN_ONLY = {  # (method, path): a non-admin's 2xx here is a finding
    ("GET", "/api/v0/users"),
    ("POST", "/api/v0/users"),
    ("POST", "/api/v0/users/disable"),
    ("POST", "/api/v0/users/enable"),
    ("POST", "/api/v0/users/delete"),
    ("GET", "/api/v0/orgs"),
    ("POST", "/api/v0/orgs"),
    ("POST", "/api/v0/orgs/delete"),
    ("GET", "/api/v0/teams"),
    ("POST", "/api/v0/teams"),
    ("POST", "/api/v0/teams/delete"),
    ("POST", "/api/v0/teams/add-member"),
    ("POST", "/api/v0/teams/remove-member"),
    ("GET", "/api/v0/audit"),
}


def _basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


@dataclass
class Site:
    """The replica under fuzzing and the credentials and objects the fuzzer aims at."""

    replica: Replica
    kept: list[Image]
    service: str = ""
    user_token: str = ""  # an access token of USER (a Basic password)
    robot_token: str = ""  # a robot's access token
    robot_name: str = ""
    token_ids: list[str] = field(default_factory=list)
    bearer: str = ""  # a JWT USER got from /auth/token (pull on REPO)
    refresh: str = ""  # a refresh token of USER
    kid: str = ""
    jwk: dict[str, str] = field(default_factory=dict)
    log_start: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def assert_intact(self) -> None:
        with self.replica.client() as c:
            assert c.get("/_ping").json() == {"healthy": True}
            for image in self.kept:
                assert_pulls_back(c, image)
            for path, items in (
                ("/api/v0/users", "users"),
                ("/api/v0/orgs", "orgs"),
                ("/api/v0/grants", "grants"),
            ):
                _walk(c, path, items)
            r = c.get("/api/v0/tokens")
            assert r.status_code == 200, r.text
            r = c.get("/api/v0/audit", params={"limit": 1000})
            assert r.status_code == 200, r.text
        found = with_store(self.replica.data_dir, self.replica.etcd_client_port, read_accounts)
        assert found.problems == [], found.problems
        assert USER in found.users
        assert "admin" in found.users
        with open(self.replica.log, "rb") as fh:
            fh.seek(self.log_start)
            log = fh.read()
        assert b"Traceback" not in log, log[-3000:].decode(errors="replace")


def _walk(c: httpx.Client, path: str, items: str) -> None:
    """Page through a listing with n=7 to its end: every page a 200."""
    last: str | None = None
    for _ in range(10_000):
        params = {"n": "7", **({"last": last} if last else {})}
        r = c.get(path, params=params)
        assert r.status_code == 200, (path, last, r.text)
        doc = r.json()
        assert isinstance(doc[items], list)
        if not doc["more"]:
            return
        last = doc["last"]
    raise AssertionError(f"{path} never ended")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    replica = Replica(tmp_path_factory.mktemp("fuzz-accounts") / "data")
    replica.start()
    try:
        with replica.client() as c:
            kept = [
                push_image(c, REPO, "v1", secrets.token_bytes(2000)),
                push_image(c, f"kept-{secrets.token_hex(4)}/image", "v1", b"kept" * 300),
            ]
            s = Site(replica, kept)
            for name in (USER, "fuzz-victim", "fuzz-reader"):
                ok(c.post("/api/v0/users", json={"name": name, "password": PASSWORD}))
            ok(c.post("/api/v0/orgs", json={"name": ORG}))
            ok(c.post("/api/v0/teams", json={"org": ORG, "team": TEAM}))
            ok(c.post("/api/v0/teams/add-member", json={"org": ORG, "team": TEAM, "user": USER}))
            ok(c.post("/api/v0/grants", json={"role": "write", "on": ORG, "to": SUBJECTS[2]}))
            ok(c.post("/api/v0/grants", json={"role": "read", "on": REPO, "to": SUBJECTS[1]}))
            robot = ok(
                c.post(
                    "/api/v0/tokens",
                    json={"scopes": [f"repository:{REPO}:pull"], "robot": "fuzz-bot"},
                )
            )
            s.robot_token, s.robot_name = robot["token"], robot["username"]
        with replica.client(auth=(USER, PASSWORD)) as u:
            mine = ok(u.post("/api/v0/tokens", json={"scopes": ["repository:fuzz-org/*:pull"]}))
            s.user_token = mine["token"]
            s.token_ids = [mine["id"], robot["id"]]
            got = ok(u.get("/auth/token", params={"scope": f"repository:{REPO}:pull"}))
            s.bearer = got["token"]
            s.service = jwt_claims(s.bearer)["aud"]
        with replica.client() as c:  # (the first token issued made the signing key)
            newest = ok(c.get("/api/v0/token-keys"))["keys"][0]
            s.kid, s.jwk = newest["kid"], newest["jwk"]
        form = {"grant_type": "password", "username": USER, "password": PASSWORD}
        form["access_type"] = "offline"
        with httpx.Client(base_url=replica.url, timeout=30) as anon:
            s.refresh = ok(anon.post("/auth/token", data=form))["refresh_token"]
        s.log_start = replica.log.stat().st_size
        yield s
    finally:
        replica.stop()


def ok(resp: httpx.Response) -> Any:
    assert resp.status_code == 200, (resp.request.url, resp.status_code, resp.text)
    return resp.json()


# -- tokens: what the fuzzer forges ------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    doc: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return doc


def forgeries(s: Site) -> list[str]:
    """Tokens that are not exactly one the registry issued (each must be refused)."""
    head, payload, sig = s.bearer.split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    claims = jwt_claims(s.bearer)
    mine = ec.generate_private_key(ec.SECP256R1())
    everything = [{"type": "repository", "name": "*", "actions": ["pull", "push", "delete"]}]
    promoted = {**claims, "adm": True, "sub": "admin", "access": everything}

    def part(doc: dict[str, Any]) -> str:
        return _b64(json.dumps(doc, separators=(",", ":")).encode())

    hs_key = json.dumps(s.jwk, separators=(",", ":"), sort_keys=True).encode()
    hs_head = part({"alg": "HS256", "kid": s.kid, "typ": "JWT"})
    hs_sig = _b64(hmac.new(hs_key, f"{hs_head}.{part(promoted)}".encode(), "sha256").digest())
    own_kid = jwt.key_id(mine.public_key())
    signed_by_mine = jwt.encode(promoted, mine, s.kid)
    embedded = {**header, "jwk": jwt.public_jwk(mine.public_key()), "kid": own_kid}
    embedded_input = f"{part(embedded)}.{part(promoted)}"
    embedded_sig = jwt.encode(promoted, mine, own_kid).split(".")[2]
    raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    return [
        f"{head}.{part(promoted)}.{sig}",  # claims changed, signature kept
        f"{part({**header, 'alg': 'none'})}.{part(promoted)}.",
        f"{part({'alg': 'none'})}.{payload}.",
        f"{hs_head}.{part(promoted)}.{hs_sig}",  # HS256 keyed with the public key
        signed_by_mine,  # our kid, another key
        jwt.encode(promoted, mine, own_kid),  # an unknown kid
        f"{embedded_input}.{embedded_sig}",  # the key in the header
        f"{part({**header, 'jku': 'http://127.0.0.1:1/jwks'})}.{payload}.{sig}",
        f"{part({**header, 'crit': ['exp']})}.{payload}.{sig}",
        f"{head}.{payload}.{sig}=",  # padding
        f"{head}.{payload}.{sig}!",  # a character outside base64url
        f"{head}.{payload}.{_b64(raw[:32])}",  # half a signature
        f"{head}.{payload}.{_b64(raw + b'x')}",
        f"{head}.{payload}",
        f"{head}.{payload}.{sig}.{sig}",
        s.refresh,  # a refresh token is not an access token
        "",
        HUGE,
        "é" * 10,
    ]


def mutate(token: str, edits: list[tuple[int, str]]) -> str:
    for position, char in edits:
        at = position % max(len(token), 1)
        token = token[:at] + char + token[at + 1 :]
    return token


# -- strategies --------------------------------------------------------------------------------
def hostile_text(known: list[str]) -> st.SearchStrategy[str]:
    """A known value, a plausible one, or one with hostile fragments: unicode, traversal,
    control characters, huge."""
    plain = st.one_of(st.sampled_from(known), st.sampled_from(known), VALID_ACCOUNT)
    fragments = st.lists(
        st.tuples(st.integers(0, 200), st.sampled_from(HOSTILE + HOSTILE_RAW)),
        min_size=1,
        max_size=3,
    )
    return st.one_of(
        plain,
        plain,
        st.builds(splice, plain, fragments),
        st.text(max_size=30),
        st.sampled_from(WEIRD),
    )


VALID_ACCOUNT = st.from_regex(r"[a-z0-9]{1,6}(?:[._-][a-z0-9]{1,4}){0,2}", fullmatch=True)
HOSTILE_RAW = ["\x00", "\n", "\r\n", "\u202e", "\ud800", "\udfff", "é", "Å", "ﬁ", "\u0130", " "]
WEIRD = [
    "",
    ".",
    "..",
    "../..",
    "../../etc/passwd",
    "fuzz-org/../admin",
    "fuzz-org/./app",
    "fuzz-org//app",
    "/fuzz-org",
    "fuzz-org/",
    "FUZZ-ORG",
    "fuzz-org@user:admin",
    "fuzz-org/app@user:fuzz-user",
    "user:admin",
    "team:fuzz-org/devs/x",
    "*",
    "fuzz-org/*",
    "a" * 65,
    "a" * 5000,
    "\ud800" * 8,
    "fuzz-user\n",
    "admin\x00",
    "\uff41\uff44\uff4d\uff49\uff4e",  # fullwidth "admin"
]
PASSWORDS = st.one_of(
    st.sampled_from([PASSWORD, "short", "x" * 1024, "x" * 1025, "\ud800" * 9, "\x00" * 9]),
    st.text(min_size=0, max_size=40),
    json_values(),
)
FLAGS: st.SearchStrategy[Any] = st.one_of(
    st.booleans(), st.sampled_from(["false", "true", 0, 1, None, [], {}, "yes"])
)
SCOPE_TYPES = ["repository", "registry", "repository(plugin)", "Repository", "repo", "", "a(b)"]
SCOPE_NAMES = [
    REPO,
    "fuzz-user/own",
    "fuzz-org/*",
    "*",
    "catalog",
    "127.0.0.1:5000/x",
    "a:b:c",
    "/fuzz-org/app",
    "/",
    "fuzz-org/",
    "fuzz-org@user:fuzz-user",
]
SCOPE_ACTIONS = ["pull", "push", "delete", "*", "pull,push", "pull,push,delete", "", "PULL", ",,"]


def scopes() -> st.SearchStrategy[str]:
    """Mostly well-formed scopes (any name, hostile ones included, goes to the policy), one
    in about twenty malformed (which refuses the whole request)."""
    names = st.one_of(st.sampled_from(SCOPE_NAMES), hostile_text(TARGETS)).map(
        lambda n: "".join(c for c in n if not c.isspace()) or "x"
    )
    one = st.builds(
        lambda t, n, a: f"{t}:{n}:{a}",
        st.sampled_from(["repository"] * 4 + ["registry", "repository(plugin)"]),
        names,
        st.sampled_from(["pull", "push", "delete", "*", "pull,push", "pull,push,delete"]),
    )
    malformed = st.one_of(
        st.builds(
            lambda t, n, a: f"{t}:{n}:{a}",
            st.sampled_from(SCOPE_TYPES),
            st.one_of(st.sampled_from(SCOPE_NAMES), hostile_text(TARGETS)),
            st.sampled_from(SCOPE_ACTIONS),
        ),
        st.text(max_size=40),
        st.sampled_from(["repository:fuzz-org/app:pull" * 100, "a" * 20000, ":", "::"]),
    )
    return st.one_of(
        *[one] * 12,
        *[st.lists(one, min_size=2, max_size=6).map(" ".join)] * 6,
        st.integers(30, 40).map(
            lambda k: " ".join(f"repository:fuzz-org/r{i}:pull" for i in range(k))
        ),
        malformed,
    )


FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "name": hostile_text(USERS + ORGS),
    "user": hostile_text(USERS),
    "org": hostile_text(ORGS),
    "team": hostile_text(TEAMS),
    "password": PASSWORDS,
    "admin": FLAGS,
    "public": FLAGS,
    "role": st.one_of(
        st.sampled_from(["read", "write", "admin", "owner", "READ", ""]), json_values()
    ),
    "on": hostile_text(TARGETS),
    "repo": hostile_text(TARGETS),
    "to": hostile_text(SUBJECTS),
    "scopes": st.one_of(st.lists(scopes(), max_size=40), scopes(), json_values()),
    "expires": st.one_of(
        st.sampled_from(["30d", "never", "0d", "999999d", "1e3d", "-1d", "1m", "10y", "11y"]),
        json_values(),
    ),
    "robot": hostile_text(["fuzz-bot", "robot+fuzz-bot", "other-bot"]),
    "id": st.one_of(st.just("@token-id"), st.just("@token"), hostile_text(["0" * 16])),
}
POSTS: dict[str, list[str]] = {
    "/api/v0/users": ["name", "password", "admin"],
    "/api/v0/users/passwd": ["name", "password"],
    "/api/v0/users/disable": ["name"],
    "/api/v0/users/enable": ["name"],
    "/api/v0/users/delete": ["name"],
    "/api/v0/orgs": ["name"],
    "/api/v0/orgs/delete": ["name"],
    "/api/v0/teams": ["org", "team"],
    "/api/v0/teams/delete": ["org", "team"],
    "/api/v0/teams/add-member": ["org", "team", "user"],
    "/api/v0/teams/remove-member": ["org", "team", "user"],
    "/api/v0/grants": ["role", "on", "to"],
    "/api/v0/grants/revoke": ["on", "to"],
    "/api/v0/repositories/public": ["repo", "public"],
    "/api/v0/tokens": ["scopes", "expires", "robot"],
    "/api/v0/tokens/revoke": ["id"],
}
GETS: dict[str, list[str]] = {
    "/api/v0/users": ["n", "last"],
    "/api/v0/orgs": ["n", "last"],
    "/api/v0/teams": ["org", "n", "last"],
    "/api/v0/grants": ["on", "n", "last"],
    "/api/v0/tokens": ["user", "last"],
    "/api/v0/audit": ["since", "until", "limit", "cursor", "actor", "action", "format"],
    "/api/v0/token-keys": [],
}
TIMES = [
    "1h",
    "0",
    "2026-01-01T00:00:00Z",
    "1e9",
    "9" * 70,
    "-1h",
    "x",
    "1s",
    "99999999999",
    "999999999w",
    "2026-13-01T00:00:00Z",
    "2026-01-01",
    "",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "2026-01-01T00:00:00.123456789Z",
    "2026-01-01T00:00:00+99:00",
]
QUERY_VALUES: dict[str, st.SearchStrategy[str]] = {
    "n": st.one_of(st.sampled_from(NUMBERS), st.sampled_from(["7", "1000", "1001"])),
    "limit": st.one_of(st.sampled_from(NUMBERS), st.sampled_from(["7", "1000", "1001"])),
    "last": hostile_text(USERS + ORGS + TEAMS + [f"{ORG}@{SUBJECTS[2]}"]),
    "org": hostile_text(ORGS),
    "on": hostile_text(TARGETS),
    "user": hostile_text(USERS),
    "since": st.one_of(st.sampled_from(TIMES), st.text(max_size=30)),
    "until": st.one_of(st.sampled_from(TIMES), st.text(max_size=30)),
    "cursor": st.one_of(
        st.sampled_from(["", "AAAA", "=", "MDAwMDAwMDAwMDAwMDAwMDAtYS0wMDAwMDAwMA"]),
        st.text(max_size=140),
    ),
    "actor": hostile_text(USERS),
    "action": st.sampled_from(["login", "grant", "user.add", "token.issue", "", "x" * 300]),
    "format": st.sampled_from(["json", "jsonl", "xml", "", "JSON"]),
}


def encode_query(pairs: list[tuple[str, str]]) -> str:
    """Percent-encoded as a client would (lone surrogates as their UTF-8-ish escape)."""

    def enc(text: str) -> str:
        return quote(text.encode("utf-8", "surrogatepass"), safe="")

    return "&".join(f"{enc(k)}={enc(v)}" for k, v in pairs)


@st.composite
def credentials(
    draw: st.DrawFn, site: Site, admins: int = 12
) -> tuple[bytes | None, str | None, str]:
    """(Authorization, source address, who): mostly the admin, sometimes the non-admin user,
    its access token, a robot's, a Bearer JWT, or something hostile from an address of its
    own (failed logins are limited per address; hostile ones never name a real account)."""
    kind = draw(
        st.sampled_from(["admin"] * admins + ["user"] * 3 + ["token", "robot", "bearer", "hostile"])
    )
    if kind == "admin":
        return _basic(*AUTH), None, "admin"
    if kind == "user":
        return _basic(USER, PASSWORD), None, "user"
    # A token may have been revoked by the fuzzer: then it is a failed login, counted
    # against its address (from one of its own, so that the admin's is never throttled).
    if kind == "token":
        return _basic(USER, site.user_token), next(_SOURCES), "token"
    if kind == "robot":
        return _basic(site.robot_name, site.robot_token), next(_SOURCES), "token"
    if kind == "bearer":
        return b"Bearer " + site.bearer.encode(), next(_SOURCES), "token"
    hostile = draw(
        st.sampled_from(
            [
                None,
                b"Basic",
                b"Basic !!!",
                b"Basic " + base64.b64encode(b"no-colon"),
                b"Basic " + base64.b64encode(b":"),
                b"Basic " + base64.b64encode(b"nobody:\xff\xfe"),
                b"Basic \xe9\xe9",
                _basic("nobody", "wrong"),
                _basic("nobody", "mrg_" + "0" * 16 + "_" + "0" * 64),
                _basic("fuzz-victim", "mrg_" + "0" * 16 + "_" + "0" * 64),
                _basic("robot+nobody", "mrg_short"),
                b"Basic " + base64.b64encode(b"a" * 9000),
                b"Bearer " + HUGE.encode(),
                b"Bearer",
                b"Digest x",
            ]
        )
    )
    return hostile, next(_SOURCES), "nobody"


def json_body(fields: list[str]) -> st.SearchStrategy[bytes]:
    """A JSON object of the endpoint's fields (each present or not, right or wrong), maybe
    with extra keys; or a body that is not a JSON object at all."""
    chosen = st.fixed_dictionaries(
        {}, optional={f: FIELD_VALUES[f] for f in fields} | {"x": json_values()}
    )
    docs = chosen.map(lambda d: json.dumps(d).encode())
    return st.one_of(
        docs,
        docs,
        docs,
        st.sampled_from(
            [
                b"",
                b"null",
                b"[]",
                b'"name"',
                b"1e400",
                b"NaN",
                b'{"name": NaN}',
                b'{"name": 1e400}',
                b'{"name": ' + b"9" * 5000 + b"}",
                b'{"name": "a", "name": "b"}',
                b'\xef\xbb\xbf{"name": "x"}',
                '{"name": "x"}'.encode("utf-16"),
                b'{"name": "\xff"}',
                b"[" * 100_000 + b"]" * 100_000,
                b'{"a":' * 5000 + b"1" + b"}" * 5000,
                b'{"name": "' + b"a" * 70_000 + b'"}',
                b'{"name": "x"',
            ]
        ),
        st.binary(max_size=300),
    )


@st.composite
def account_requests(draw: st.DrawFn, site: Site) -> tuple[Request, str]:
    auth, source, who = draw(credentials(site))
    if draw(st.booleans()):
        path = draw(st.sampled_from(sorted(POSTS)))
        method = b"POST"
        body = draw(json_body(POSTS[path]))
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            doc = None
        if isinstance(doc, dict):
            if path in USER_CHANGES and doc.get("name") in [*PROTECTED, None]:
                doc["name"] = "fuzz-victim"
            if doc.get("id") in ("@token-id", "@token"):
                tid = draw(st.sampled_from(site.token_ids))
                doc["id"] = tid if doc["id"] == "@token-id" else site.user_token
            body = json.dumps(doc).encode()
        query = ""
    else:
        path = draw(st.sampled_from(sorted(GETS)))
        method = b"GET"
        names = GETS[path] + ["n", "x", "last"]
        pairs = draw(
            st.lists(
                st.sampled_from(names).flatmap(
                    lambda k: st.tuples(
                        st.just(k), QUERY_VALUES.get(k, hostile_text(USERS + TARGETS))
                    )
                ),
                max_size=5,
            )
        )
        query = encode_query(pairs)
        body = b""
    if draw(ONE_IN_10):  # odd methods, odd paths
        method = draw(METHODS)
    if draw(ONE_IN_10):
        fragments = draw(
            st.lists(st.tuples(st.integers(0, 40), st.sampled_from(HOSTILE)), min_size=1)
        )
        path = splice(path, fragments)
    if draw(ONE_IN_10):
        path = path + "/" + draw(encoded_text(20))
    target = (path + ("?" + query if query else "")).encode()
    return build(method, target, auth, source, body, draw), f"{who} {method.decode()} {path}"


def build(
    method: bytes,
    target: bytes,
    auth: bytes | None,
    source: str | None,
    body: bytes,
    draw: st.DrawFn,
    content_type: bytes | None = b"application/json",
) -> Request:
    headers: list[tuple[bytes, bytes]] = []
    if auth is not None:
        headers.append((b"Authorization", auth))
    if content_type is not None and body:
        headers.append((b"Content-Type", content_type))
    framing = draw(st.sampled_from(["length"] * 10 + ["chunked", "short"]))
    half_close = False
    if framing == "length":
        headers.append((b"Content-Length", str(len(body)).encode()))
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
        body = (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    else:  # the body cut short
        headers.append((b"Content-Length", str(len(body) + 10).encode()))
        half_close = True
    malformed = any(b < 0x21 or b >= 0x7F for b in target) or len(target) > 8000
    malformed |= any(bad_header(v) for _, v in headers)
    return Request(method, target, headers, body, half_close, malformed, source)


@st.composite
def token_gets(draw: st.DrawFn, site: Site) -> tuple[Request, str]:
    auth, source, who = draw(credentials(site, admins=2))  # mostly the non-admin's grants
    if who == "token" and draw(st.booleans()):
        auth = _basic(USER, site.user_token)
    pairs: list[tuple[str, str]] = []
    for value in draw(st.lists(scopes(), max_size=6)):
        pairs.append(("scope", value))
    if draw(ONE_IN_10):  # more scope parameters than a token holds
        pairs += [
            ("scope", f"repository:fuzz-org/r{i}:pull") for i in range(draw(st.integers(30, 40)))
        ]
    if draw(ONE_IN_4):
        service = draw(st.sampled_from([site.service, "", "other", HUGE, "\ud800"]))
        pairs.append(("service", service))
    for key in ("account", "offline_token", "client_id"):
        if draw(ONE_IN_4):
            pairs.append((key, draw(st.one_of(st.sampled_from(["true", "1", "no"]), st.text()))))
    if draw(ONE_IN_10):
        pairs += [("service", site.service)] * draw(st.integers(2, 60))
    pairs = draw(st.permutations(pairs))
    target = ("/auth/token?" + encode_query(pairs)).encode()
    return build(b"GET", target, auth, source, b"", draw), f"{who} GET /auth/token"


@st.composite
def token_posts(draw: st.DrawFn, site: Site) -> tuple[Request, str]:
    grant = draw(
        st.sampled_from(
            ["password", "password", "refresh_token", "refresh_token", "client_credentials", ""]
        )
    )
    fields: list[tuple[str, str]] = [("grant_type", grant)] if draw(st.integers(0, 9)) else []
    if grant == "password" or draw(ONE_IN_10):
        user, password = draw(
            st.sampled_from(
                [
                    (USER, PASSWORD),
                    ("admin", AUTH[1]),
                    ("robot+fuzz-bot", site.robot_token),
                    (USER, site.user_token),
                    ("nobody", "x"),
                    ("", "x"),
                    ("a:b", "c"),
                    ("ü" * 300, "x"),
                ]
            )
        )
        fields += [("username", user), ("password", password)]
        if draw(st.booleans()):
            fields.append(("access_type", draw(st.sampled_from(["offline", "online", ""]))))
    if grant == "refresh_token" or draw(ONE_IN_10):
        forged = forgeries(site)
        refresh = draw(
            st.one_of(
                st.just(site.refresh),
                st.just(site.bearer),
                st.sampled_from(forged),
                st.builds(
                    mutate,
                    st.just(site.refresh),
                    st.lists(st.tuples(st.integers(0, 10_000), st.characters()), min_size=1),
                ),
            )
        )
        fields.append(("refresh_token", refresh))
    for value in draw(st.lists(scopes(), max_size=6)):
        fields.append(("scope", value))
    for key in ("service", "client_id", "grant_type"):
        if draw(ONE_IN_10):
            fields.append((key, draw(st.one_of(st.just(site.service), st.text(max_size=20)))))
    if draw(ONE_IN_10):
        fields += [("x", "1")] * draw(st.integers(40, 200))
    fields = draw(st.permutations(fields))
    body = urlencode(fields, encoding="utf-8", errors="surrogatepass").encode()
    body = draw(
        st.one_of(
            st.just(body),
            st.just(body),
            st.just(body),
            st.just(body + b"&" + b"a=" + b"b" * 20_000),
            st.just(body.replace(b"%", b"%z")),
            st.just(body + "&username=é".encode()),
            st.binary(max_size=200),
        )
    )
    ctype = draw(
        st.sampled_from(
            [
                b"application/x-www-form-urlencoded",
                b"application/x-www-form-urlencoded",
                b"Application/X-WWW-Form-Urlencoded; charset=utf-8",
                b"application/json",
                b"multipart/form-data; boundary=x",
                None,
            ]
        )
    )
    auth: bytes | None = None
    source = None
    if draw(ONE_IN_10):
        auth, source, _ = draw(credentials(site))
    # Any of these logins may fail (a revoked token, a wrong name): from an address of its own.
    req = build(b"POST", b"/auth/token", auth, source or next(_SOURCES), body, draw, ctype)
    return req, f"POST /auth/token {grant}"


@st.composite
def bearer_pulls(draw: st.DrawFn, site: Site) -> tuple[Request, str]:
    """A pull of REPO with a Bearer token: the issued one, a forgery or a mutation of it."""
    forged = forgeries(site)
    choice = draw(st.integers(0, 2))
    if choice == 0:
        token = draw(st.sampled_from(forged))
    elif choice == 1:
        edits = draw(st.lists(st.tuples(st.integers(0, 10_000), st.characters()), min_size=1))
        token = mutate(site.bearer, edits)
    else:
        token = site.bearer
    target = f"/v2/{REPO}/manifests/v1".encode()
    auth = b"Bearer " + token.encode("utf-8", "surrogatepass")
    req = build(b"GET", target, auth, next(_SOURCES), b"", draw)
    req.half_close = False
    req.headers = [
        (k, v) for k, v in req.headers if k not in (b"Content-Length", b"Transfer-Encoding")
    ]
    return req, "forged" if token != site.bearer else "issued"


# -- the exchange and its assertions -----------------------------------------------------------
def exchange(site: Site, req: Request, who: str) -> RawResponse | None:
    resp = send(site.replica.port, req)
    if resp is None:
        return None
    key = f"{resp.status // 100}xx"
    site.counts[key] = site.counts.get(key, 0) + 1
    assert resp.status < 500, f"{resp.status} {resp.body[:500]!r} for {req!r}"
    if is_server_refusal(resp):
        assert req.malformed or resp.status in (400, 404, 405, 414), (resp.status, req)
        return resp
    jsonl = b"format=jsonl" in req.target and resp.status == 200
    if req.method != b"HEAD" and not jsonl and not req.target.startswith(b"/v2/"):
        ctype = resp.header("content-type") or ""
        assert ctype.startswith("application/json"), (resp.status, ctype, resp.body[:200], req)
        doc = resp.json()
        if resp.status >= 400:
            assert isinstance(doc, dict), (doc, req)
            assert isinstance(doc.get("error"), str), (doc, req)
    path = req.target.split(b"?", 1)[0].decode(errors="replace")
    if who.startswith(("user ", "token ", "nobody ")) and 200 <= resp.status < 300:
        method = req.method.decode(errors="replace")
        assert (method, path) not in ADMIN_ONLY, (who, resp.status, resp.body[:300], req)
    return resp


def run(site: Site, strategy: st.SearchStrategy[tuple[Request, str]], examples: int) -> None:
    @profile(examples)
    @given(pair=strategy)
    def one(pair: tuple[Request, str]) -> None:
        exchange(site, *pair)

    site.counts.clear()
    one()
    print(f"fuzz: {site.counts}")
    site.assert_intact()


def test_fuzz_token_endpoint_get(site: Site) -> None:
    run(site, token_gets(site), examples=120)


def test_fuzz_token_endpoint_post(site: Site) -> None:
    run(site, token_posts(site), examples=150)


def test_fuzz_account_api(site: Site) -> None:
    run(site, account_requests(site), examples=300)


HOSTILE_SCOPE_NAMES = [
    "/fuzz-org/app",
    "/",
    "//",
    "fuzz-org/",
    "fuzz-org//app",
    "../fuzz-org/app",
    "fuzz-org/../admin",
    "*",
    "fuzz-org/*",
    "fuzz-org@user:fuzz-user",
    "fuzz-org/app@user:fuzz-user",
    "FUZZ-ORG/app",
    "\u0430dmin/x",
    "a" * 480,  # (a scope is at most 512 characters)
]


def test_hostile_scope_names_for_each_kind_of_principal(site: Site) -> None:
    """Every scope name a policy could trip on, asked for by the non-admin with its password,
    its access token, the robot and nobody: a token (never 5xx) granting nothing outside the
    namespaces the non-admin holds (its own and, through its team, fuzz-org), and nothing to
    the robot (scoped to fuzz-org/app) or to nobody."""
    # Tokens of their own: the fuzzing before may have revoked the site's (or made the most
    # one user may hold).
    with site.replica.client() as c:
        for token in ok(c.get("/api/v0/tokens", params={"user": USER}))["tokens"]:
            ok(c.post("/api/v0/tokens/revoke", json={"id": token["id"]}))
        scope = {"scopes": [f"repository:{REPO}:pull"], "robot": "scope-bot"}
        robot = ok(c.post("/api/v0/tokens", json=scope))
    with site.replica.client(auth=(USER, PASSWORD)) as u:
        mine = ok(u.post("/api/v0/tokens", json={"scopes": ["repository:fuzz-org/*:pull"]}))
    who = [
        (_basic(USER, PASSWORD), None, (USER, ORG)),
        (_basic(USER, mine["token"]), next(_SOURCES), (ORG,)),
        (_basic(robot["username"], robot["token"]), next(_SOURCES), ()),
        (None, next(_SOURCES), ()),
    ]
    for name in HOSTILE_SCOPE_NAMES:
        for auth, source, holds in who:
            headers = [(b"Authorization", auth)] if auth else []
            query = encode_query([("scope", f"repository:{name}:pull,push")])
            resp = rawhttp.request(
                site.replica.port, b"GET", f"/auth/token?{query}".encode(), headers,
                auth=False, source=source,
            )  # fmt: skip
            assert resp is not None
            assert resp.status == 200, (name, auth, resp.status, resp.body[:300])
            granted = [a["name"] for a in jwt_claims(resp.json()["token"])["access"]]
            assert all(n.split("/")[0] in holds for n in granted), (name, auth, granted)
    site.assert_intact()


def test_forged_bearer_tokens_never_pull(site: Site) -> None:
    """Every forgery, and every change to an issued token that changes what it decodes to,
    is a 401; the issued token itself pulls."""

    def decoded(token: str) -> list[bytes] | None:
        parts = token.split(".")
        try:
            return [base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)) for p in parts]
        except ValueError:
            return None

    # A token lives 5 minutes: a long `make fuzz` run starts this test with a fresh one.
    with site.replica.client(auth=(USER, PASSWORD)) as u:
        site.bearer = ok(u.get("/auth/token", params={"scope": f"repository:{REPO}:pull"}))["token"]
    original = decoded(site.bearer)

    @profile(120)
    @given(pair=bearer_pulls(site))
    def one(pair: tuple[Request, str]) -> None:
        req, _ = pair
        resp = exchange(site, req, "nobody GET /v2/")
        if resp is None or is_server_refusal(resp):  # a header value the server refused
            return
        token = req.headers[0][1].decode("latin-1")[len("Bearer ") :]
        if token == site.bearer and jwt_claims(token)["exp"] > time.time():
            assert resp.status == 200, resp.body[:300]
        elif token == site.bearer:  # expired meanwhile (past the 60 s leeway: refused)
            assert resp.status in (200, 401), resp.body[:300]
        else:
            assert resp.status == 401, (resp.status, token, decoded(token) == original)

    one()
    site.assert_intact()


def test_the_listings_page_over_every_record(site: Site) -> None:
    """After the fuzzing: the users listing pages over exactly the users in the store."""
    found = with_store(site.replica.data_dir, site.replica.etcd_client_port, read_accounts)
    listed: list[str] = []
    with site.replica.client() as c:
        last: str | None = None
        while True:
            doc = ok(c.get("/api/v0/users", params={"n": 3, **({"last": last} if last else {})}))
            listed += [u["name"] for u in doc["users"]]
            if not doc["more"]:
                break
            last = doc["last"]
    assert listed == sorted(found.users)
