"""Fuzzing the garbage collection and policy endpoints of a replica of their own (issue 10).

`POST /api/v0/gc`, `GET /api/v0/gc`, `POST /api/v0/gc/schedule`, `GET/POST
/api/v0/policies` and its `show`, `unset` and `apply`: hypothesis sends JSON objects with the
fields those endpoints read, holding random values (and bodies that are not objects, odd
methods, hostile query strings), byte for byte with tests/test_fuzz.py's `send`. Every answer
must be below 500 and every error a JSON document `{"error", "code"}`; afterwards images the
fuzzer never names (their namespaces are never a policy's target) pull back byte-identical,
whatever collections, schedules, quotas and retention rules it ran or set, and the
replica's log holds no traceback. A replica of its own: collections and quotas here cannot
touch the other fuzz tests' content.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from harness.process import AUTH
from harness.replica import Replica
from hypothesis import given
from hypothesis import strategies as st

from tests.rawhttp import Image, RawResponse, assert_pulls_back, push_image
from tests.test_fuzz import (
    HOSTILE,
    NUMBERS,
    ONE_IN_4,
    ONE_IN_10,
    Request,
    _basic,
    is_server_refusal,
    json_values,
    profile,
    send,
    splice,
)


@dataclass
class Site:
    replica: Replica
    kept: list[Image]
    aimed: list[Image]
    log_start: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def targets(self) -> list[str]:
        """What a policy may be set on: the fuzzer's namespaces and repositories only."""
        return ["fuzzgc", "fuzzgc/app", "fuzzgc/other", "spare", "spare/x/y"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root: Path = tmp_path_factory.mktemp("fuzz-gc")
    replica = Replica(root / "data")
    replica.start()
    try:
        with replica.client() as c:
            kept = [
                push_image(
                    c, f"kept-{secrets.token_hex(4)}/image", "v1", secrets.token_bytes(3000)
                ),
                push_image(c, f"kept-{secrets.token_hex(4)}/other", "stable", b"layer" * 100),
            ]
            # What retention, quotas and collections may act on.
            aimed = [
                push_image(c, "fuzzgc/app", f"v{i}", secrets.token_bytes(500)) for i in range(4)
            ]
            # An unreferenced blob for collections to find (a deleted tag's manifest).
            r = c.delete(f"/v2/fuzzgc/app/manifests/{aimed[0].digest}")
            assert r.status_code == 202, r.text
        yield Site(replica, kept, aimed[1:], replica.log.stat().st_size)
    finally:
        replica.stop()


# -- strategies ------------------------------------------------------------------------------
DURATIONS = st.one_of(
    st.sampled_from(["0", "0s", "1s", "24h", "7d", "1h30m", "-1s", "1x", "", "h", "9" * 400]),
    st.sampled_from(NUMBERS),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.booleans(),
)
SIZES = st.one_of(
    st.sampled_from(["1", "0", "1KB", "50GiB", "1.5MB", "-1", "1e3", "TiB", "9" * 400, "1 GiB"]),
    st.integers(-(2**70), 2**70),
    st.none(),
)
PATTERNS = st.one_of(
    st.lists(st.sampled_from(["v*", "release-?", "*", "[", "", "a" * 300, "\x00"]), max_size=4),
    st.lists(st.text(max_size=12), max_size=3),
)


def targets(site: Site) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(site.targets),
        st.builds(
            splice,
            st.sampled_from(site.targets),
            st.lists(
                st.tuples(st.integers(0, 20), st.sampled_from(HOSTILE)), min_size=1, max_size=2
            ),
        ),
        st.sampled_from(["", "/", "UPPER", "a//b", "-x", "a" * 300, "fuzzgc/", "fuzzgc/App"]),
    )


def fields(site: Site) -> dict[str, st.SearchStrategy[Any]]:
    """Each field the endpoints read, with plausible and hostile values."""
    return {
        "dry_run": st.one_of(st.booleans(), json_values()),
        "grace": DURATIONS,
        "untagged": st.one_of(st.booleans(), json_values()),
        "wait": st.one_of(st.booleans(), st.booleans(), json_values()),
        "interval": DURATIONS,
        "on": st.one_of(targets(site), json_values()),
        "immutable_tags": st.one_of(PATTERNS, json_values()),
        "keep_last": st.one_of(st.integers(-2, 5), st.integers(-(2**70), 2**70), json_values()),
        "keep_days": st.one_of(st.integers(-1, 30), st.floats(), json_values()),
        "keep_tags": st.one_of(PATTERNS, json_values()),
        "quota": SIZES,
        "allow_sparse": st.one_of(st.booleans(), json_values()),
        "settings": st.one_of(
            st.lists(
                st.sampled_from(["immutable_tags", "retention", "quota", "allow_sparse", "x", ""]),
                max_size=5,
            ),
            json_values(),
        ),
    }


ENDPOINTS = {
    "/api/v0/gc": ["dry_run", "grace", "untagged", "wait"],
    "/api/v0/gc/schedule": ["interval", "grace", "untagged", "dry_run"],
    "/api/v0/policies": [
        "on",
        "immutable_tags",
        "keep_last",
        "keep_days",
        "keep_tags",
        "quota",
        "allow_sparse",
    ],
    "/api/v0/policies/unset": ["on", "settings"],
    "/api/v0/policies/apply": ["on", "dry_run"],
}


def requests(site: Site) -> st.SearchStrategy[Request]:
    by_field = fields(site)
    query_values = st.one_of(
        targets(site), st.sampled_from(NUMBERS), st.text(max_size=20).map(lambda t: quote(t))
    )

    @st.composite
    def draw_request(draw: st.DrawFn) -> Request:
        path = draw(st.sampled_from([*ENDPOINTS, "/api/v0/policies/show"]))
        if path == "/api/v0/policies/show" or (
            path in ("/api/v0/gc", "/api/v0/policies") and draw(ONE_IN_4)
        ):
            keys = draw(st.lists(st.sampled_from(["on", "n", "last", "x"]), max_size=3))
            query = "&".join(f"{k}={draw(query_values)}" for k in keys)
            method = (
                b"GET"
                if not draw(ONE_IN_10)
                else draw(st.sampled_from([b"HEAD", b"PUT", b"DELETE"]))
            )
            target = path + (f"?{query}" if query else "")
            body = b""
        else:
            names = ENDPOINTS[path]
            chosen = draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names)))
            doc: Any = {name: draw(by_field[name]) for name in chosen}
            if draw(ONE_IN_10):
                doc[draw(st.text(max_size=8))] = draw(json_values())
            if draw(ONE_IN_10):
                doc = draw(json_values())  # not an object at all
            # A collection that waits takes the lock for its whole run: mostly dry runs.
            if path == "/api/v0/gc" and isinstance(doc, dict) and not draw(ONE_IN_4):
                doc.setdefault("dry_run", True)
            body = json.dumps(doc).encode()
            if draw(ONE_IN_10):
                body = body[: draw(st.integers(0, max(len(body) - 1, 0)))]  # cut short
            method = b"POST" if not draw(ONE_IN_10) else draw(st.sampled_from([b"GET", b"PATCH"]))
            target = path
        headers = [(b"Authorization", _basic(*AUTH)), (b"Content-Length", str(len(body)).encode())]
        if body and not draw(ONE_IN_10):
            headers.append((b"Content-Type", b"application/json"))
        raw = target.encode()
        malformed = any(b < 0x21 or b >= 0x7F for b in raw)  # the HTTP server's to refuse
        return Request(method, raw, headers, body, malformed=malformed)

    return draw_request()


# -- the exchange and its assertions -----------------------------------------------------------
def exchange(site: Site, req: Request) -> RawResponse:
    resp = send(site.replica.port, req)
    assert resp is not None, req
    key = f"{resp.status}"
    site.counts[key] = site.counts.get(key, 0) + 1
    assert resp.status < 500, f"{resp.status} {resp.body[:500]!r} for {req!r}"
    if is_server_refusal(resp):  # granian's own 400, before the application
        assert req.malformed, (resp, req)
        return resp
    if resp.status >= 400 and req.method != b"HEAD":
        assert (resp.header("content-type") or "").startswith("application/json"), (resp, req)
        doc = resp.json()
        assert isinstance(doc, dict), doc
        assert isinstance(doc.get("error"), str), doc
        assert doc["error"], doc
        assert isinstance(doc.get("code"), str), doc
        assert doc["code"], doc
    return resp


def assert_intact(site: Site) -> None:
    with site.replica.client() as c:
        # Whatever the fuzzer started goes on without it: wait for it to end.
        deadline = time.monotonic() + 60
        while c.get("/api/v0/gc").json().get("running") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert c.get("/_ping").json() == {"healthy": True}
        for image in site.kept:
            assert_pulls_back(c, image)
        # No policy anywhere but on the fuzzer's own targets.
        r = c.get("/api/v0/policies", params={"n": 1000})
        assert r.status_code == 200, r.text
        for policy in r.json()["policies"]:
            assert not str(policy["target"]).startswith("kept-"), policy
    with open(site.replica.log, "rb") as fh:
        fh.seek(site.log_start)
        log = fh.read()
    assert b"Traceback" not in log, log[-3000:].decode(errors="replace")


def test_fuzz_gc_and_policy_endpoints(site: Site) -> None:
    @profile(600)
    @given(req=requests(site))
    def one(req: Request) -> None:
        exchange(site, req)

    started = time.monotonic()
    one()
    print(f"fuzz gc/policies: {site.counts} in {time.monotonic() - started:.0f} s")
    assert_intact(site)


def test_collection_after_fuzzing_keeps_what_is_referenced(site: Site) -> None:
    """A real collection (no grace, untagged) after the fuzzing: it deletes only what no
    tag reaches, the kept images and the fuzzer's tagged images that retention left pull."""
    with httpx.Client(base_url=site.replica.url, auth=AUTH, timeout=120) as c:
        c.post("/api/v0/policies/unset", json={"on": "fuzzgc"})
        c.post("/api/v0/policies/unset", json={"on": "fuzzgc/app"})
        deadline = time.monotonic() + 60
        while True:
            r = c.post("/api/v0/gc", json={"grace": 0, "untagged": True})
            if r.status_code != 423 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert r.status_code == 200, r.text
        tags = c.get("/v2/fuzzgc/app/tags/list").json()["tags"]
        for image in site.aimed:
            if image.tag in tags:
                assert_pulls_back(c, image)
        for image in site.kept:
            assert_pulls_back(c, image)
