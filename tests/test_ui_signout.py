"""Signing out of the web UI ends the session for every replica, not only in the browser.

A session cookie is signed, not stored: sign out records its id as ended in etcd
(moorage.meta.ui_sessions) before it answers, and every request whose cookie verifies reads
that key. Checked here:

- on one replica (the shared `registry`): a copy of the cookie taken before sign out is
  refused afterwards (pages redirect to sign in, the JSON endpoint answers 401, a form post
  changes nothing), another session of the same account goes on, a fresh sign-in works;
  the ended id is kept on a lease of its own that ends with the session;
- cookies without a session id (the format before ids, signed with the cluster's real key)
  and forged ones are refused;
- in a 2-replica cluster, a sign out answered by one replica is refused by the other on the
  very next request, both ways;
- in process: when the store cannot be read the page is refused (503, the UI's error page,
  fail closed), and a sign out that cannot be recorded says so and keeps the cookie.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from aetcd import rpc
from harness.replica import Replica

from moorage.cluster.tls import client_tls
from moorage.config import DataDir
from moorage.errors import StoreUnavailable
from moorage.meta import keys
from moorage.meta.base import KV
from moorage.meta.etcd import EtcdCluster
from moorage.meta.memory import MemoryMetaStore
from moorage.pki.files import TlsDir
from moorage.web import session as sessions
from tests.cluster import AUTH, Cluster, cluster_of
from tests.unit import app as in_process

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
Verify = ssl.SSLContext | bool


def _csrf(html: str) -> str:
    found = _CSRF.search(html)
    assert found, html[:500]
    return found.group(1)


@contextmanager
def sign_in(url: str, verify: Verify, user: tuple[str, str] = AUTH) -> Iterator[httpx.Client]:
    """A browser signed in as `user` (its cookie jar holds the session)."""
    with httpx.Client(base_url=url, timeout=60, verify=verify) as client:
        form = client.get("/ui/signin")
        r = client.post(
            "/ui/signin",
            data={"username": user[0], "password": user[1], "csrf": _csrf(form.text)},
        )
        assert r.status_code == 303, r.text[:500]
        yield client


def cookie_of(client: httpx.Client) -> str:
    value = client.cookies.get(sessions.COOKIE)
    assert value, client.cookies
    return value


def replay(url: str, verify: Verify, cookie: str) -> httpx.Client:
    """Another client that sends a copy of `cookie` with every request."""
    headers = {"Cookie": f"{sessions.COOKIE}={cookie}"}
    return httpx.Client(base_url=url, timeout=60, verify=verify, headers=headers)


def sign_out(client: httpx.Client) -> httpx.Response:
    csrf = _csrf(client.get("/ui/tokens").text)
    return client.post("/ui/signout", data={"csrf": csrf})


def assert_signed_in(client: httpx.Client) -> None:
    r = client.get("/ui/admin/users")
    assert r.status_code == 200, r.text[:500]
    assert client.get("/ui/cluster.json").status_code == 200


def assert_refused(client: httpx.Client, csrf: str = "") -> None:
    """Pages send `client` to sign in, the JSON endpoint answers 401, a form does nothing."""
    r = client.get("/ui/admin/users")
    assert r.status_code == 303, r.text[:500]
    assert r.headers["location"].startswith("/ui/signin?next="), r.headers
    assert client.get("/ui/cluster.json").status_code == 401
    if csrf:
        form = {"csrf": csrf, "name": "after-signout", "password": "after-signout-1234"}
        r = client.post("/ui/admin/users", data=form)
        assert r.status_code == 303, r.text[:500]
        assert r.headers["location"].startswith("/ui/signin?next=")


def payload_of(cookie: str) -> dict[str, Any]:
    raw = cookie.partition(".")[0]
    doc: dict[str, Any] = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    return doc


def signed(key: bytes, doc: dict[str, Any]) -> str:
    """`doc` as a session cookie signed with `key` (as moorage.web.session signs one)."""

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    payload = b64(json.dumps(doc, separators=(",", ":")).encode())
    return f"{payload}.{b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())}"


def users(replica: Replica) -> list[str]:
    with replica.client() as c:
        return [u["name"] for u in c.get("/api/v0/users").json()["users"]]


# -- one replica ---------------------------------------------------------------------------


def test_a_copied_cookie_is_refused_after_sign_out(registry: Replica) -> None:
    verify = registry.verify()
    with sign_in(registry.url, verify) as browser:
        cookie = cookie_of(browser)
        csrf = _csrf(browser.get("/ui/tokens").text)
        with replay(registry.url, verify, cookie) as copy:
            assert_signed_in(copy)
            r = sign_out(browser)
            assert r.status_code == 303, r.text[:500]
            assert r.headers["location"] == "/ui/signin"
            dropped = [c for c in r.headers.get_list("set-cookie") if sessions.COOKIE in c]
            assert dropped, r.headers  # the browser drops it...
            assert "max-age=0" in dropped[0].lower()
            # ... and refused by the replica, whoever still holds a copy.
            assert_refused(copy, csrf)
            assert "after-signout" not in users(registry)
            again = copy.post("/ui/signout", data={"csrf": csrf})  # nothing left to end
            assert again.status_code == 303
            assert again.headers["location"].startswith("/ui/signin?next=")
    with sign_in(registry.url, verify) as fresh:
        assert_signed_in(fresh)
        assert sign_out(fresh).status_code == 303
        assert_refused(fresh)


def test_signing_out_ends_that_session_only(registry: Replica) -> None:
    verify = registry.verify()
    with sign_in(registry.url, verify) as one, sign_in(registry.url, verify) as other:
        assert payload_of(cookie_of(one))["s"] != payload_of(cookie_of(other))["s"]
        assert sign_out(one).status_code == 303
        assert_signed_in(other)
        with replay(registry.url, verify, cookie_of(other)) as copy:
            assert_signed_in(copy)
        assert sign_out(other).status_code == 303


def test_cookies_without_a_session_id_and_forged_ones_are_refused(registry: Replica) -> None:
    verify = registry.verify()
    key = sessions.session_key(TlsDir(registry.data_dir).read_secret())
    with sign_in(registry.url, verify) as browser:
        doc = payload_of(cookie_of(browser))
        assert set(doc) == {"u", "s", "c", "i", "e", "p"}
        # The cluster's key signs what the replica issued: re-signed unchanged, it still holds.
        with replay(registry.url, verify, signed(key, doc)) as same:
            assert_signed_in(same)
        old = {k: v for k, v in doc.items() if k != "s"}  # a cookie from before session ids
        bad_ids = [{**doc, "s": s} for s in ("", "x", 7, None, "a" * 200, "../" * 8)]
        other_key = sessions.session_key(b"another cluster's secret")
        forged = [signed(other_key, {**doc, "s": "A" * 22}), signed(other_key, old)]
        for cookie in [signed(key, old), *(signed(key, d) for d in bad_ids), *forged]:
            with replay(registry.url, verify, cookie) as copy:
                assert_refused(copy)
        assert sign_out(browser).status_code == 303


def test_the_ended_id_is_kept_on_a_lease_that_ends_with_the_session(registry: Replica) -> None:
    with sign_in(registry.url, registry.verify()) as browser:
        doc = payload_of(cookie_of(browser))
        assert sign_out(browser).status_code == 303
    config = DataDir(registry.data_dir).load()

    async def lease() -> tuple[int, int]:
        store = EtcdCluster(config.store_endpoints, tls=client_tls(config))
        try:
            found = await store._read(rpc.RangeRequest(key=keys.ui_signed_out(doc["s"])))
            assert len(found.kvs) == 1
            assert int(found.kvs[0].lease) != 0
            ttl = await store._call(
                "leasestub.LeaseTimeToLive", rpc.LeaseTimeToLiveRequest(ID=found.kvs[0].lease)
            )
            return int(ttl.TTL), int(ttl.grantedTTL)
        finally:
            await store.close()

    left, granted = asyncio.run(lease())
    lifetime = doc["e"] - time.time()
    assert lifetime - 60 < granted <= lifetime + sessions.CLOCK_MARGIN + 1
    assert 0 < left <= granted


# -- a cluster of two replicas -------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster_of(2, tmp_path_factory.mktemp("ui-signout")) as c:
        yield c


def test_a_sign_out_on_one_replica_is_refused_by_the_other_at_once(cluster: Cluster) -> None:
    a, b = cluster.nodes
    for here, there in ((a, b), (b, a), (a, b)):
        with sign_in(here.url, here.verify()) as browser:
            cookie = cookie_of(browser)
            csrf = _csrf(browser.get("/ui/tokens").text)
            with replay(there.url, there.verify(), cookie) as copy:
                assert_signed_in(copy)  # one session, honoured by every replica
                assert sign_out(browser).status_code == 303
                assert_refused(copy, csrf)  # the very next request, on the other replica
            with replay(here.url, here.verify(), cookie) as copy:
                assert_refused(copy)
    with cluster.nodes[0].client() as c:
        names = [u["name"] for u in c.get("/api/v0/users").json()["users"]]
    assert "after-signout" not in names
    for node in (a, b):
        with sign_in(node.url, node.verify()) as fresh:
            assert_signed_in(fresh)


# -- when the store cannot be read or written (in process, the in-memory store) -------------


_DOWN = "the metadata store (etcd) is unavailable: test"


def test_an_unreadable_store_refuses_the_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    get = MemoryMetaStore._get

    async def unreadable(store: MemoryMetaStore, key: bytes) -> KV | None:
        if key.startswith(keys.UI_SIGNED_OUT):
            raise StoreUnavailable(_DOWN)
        return await get(store, key)

    async def unwritable(store: MemoryMetaStore, key: bytes, value: bytes, lease: int) -> None:
        raise StoreUnavailable(_DOWN)

    with in_process.in_process_registry(tmp_path) as ui:
        form = ui.get("/ui/signin")
        login = {"username": "admin", "password": in_process.ADMIN_PASSWORD}
        assert ui.post("/ui/signin", data={**login, "csrf": _csrf(form.text)}).status_code == 303
        csrf = _csrf(ui.get("/ui/tokens").text)
        with monkeypatch.context() as m:  # fail closed: the UI's error page, never a 500
            m.setattr(MemoryMetaStore, "_get", unreadable)
            r = ui.get("/ui/repositories")
            assert r.status_code == 503, r.text[:500]
            assert r.headers["content-type"].startswith("text/html")
            assert "cannot check the session now" in r.text
            assert ui.get("/ui/cluster.json").status_code == 503
            assert ui.post("/ui/signout", data={"csrf": csrf}).status_code == 503
        assert ui.get("/ui/repositories").status_code == 200  # readable again
        with monkeypatch.context() as m:  # a sign out not recorded is not acknowledged
            m.setattr(MemoryMetaStore, "put_with_lease", unwritable)
            r = ui.post("/ui/signout", data={"csrf": csrf})
            assert r.status_code == 503, r.text[:500]
            assert "not signed out" in r.text
            assert sessions.COOKIE not in r.headers.get("set-cookie", "")  # the browser keeps it
        assert ui.get("/ui/repositories").status_code == 200  # so the session still works
        r = ui.post("/ui/signout", data={"csrf": csrf})
        assert r.status_code == 303
        assert ui.get("/ui/repositories").status_code == 303
