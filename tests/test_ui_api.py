"""The web UI over HTTP, without a browser, against one real replica (module-scoped):

- the Repositories list reads only what the viewer may pull (its namespaces, repositories
  granted to it or its teams, public ones) in name order and in pages; a search by prefix
  and a search by substring (bounded: the replica runs with a small scan budget, so the
  search is followed through its "Search further" links);
- deleting a manifest by digest: confirmation, CSRF, the tags that point to it go, the
  referrers stay exactly as after the registry's DELETE, audited `via=ui`, refused without
  the delete role;
- the Cluster page's event stream: `text/event-stream`, admins only, ends by itself;
- the session and sign-in cookies carry `Secure` over HTTPS and not over plain HTTP;
- a fuzz of `/ui/` (hypothesis; FUZZ_EXAMPLES): hostile paths, query strings, forms and
  cookies never get a 5xx or a traceback and change nothing stored.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from harness.process import AUTH
from harness.replica import Replica
from hypothesis import given
from hypothesis import strategies as st

from moorage.web import session as sessions
from tests import rawhttp
from tests.oci import MT_OCI_EMPTY, MT_OCI_IMAGE, blob_post_put, manifest_put, oci_digest
from tests.test_fuzz import profile

PASSWORD = "ui-api-password-1234"
SCAN_BUDGET = 12  # the replica's MOORAGE_UI_SCAN_BUDGET: searches stop early and go on
#: Repositories pushed: (name, whether `reader` may pull it, and why).
REPOS = {
    "alpha/a1": True,  # grant read on the namespace alpha
    "alpha/a2": True,
    "alpha": True,  # the namespace's own repository
    "alphabet/x": False,  # another namespace that merely starts with "alpha"
    "beta/one": True,  # grant read on this repository
    "beta/two": False,
    "gamma/pub": True,  # public
    "gamma/priv": False,
    "delta/t1": True,  # grant to a team reader is in
    "reader/mine": True,  # the user's own namespace
    **{f"many/r{i:03d}": False for i in range(42)},  # with the others, more than a page
}


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    old = os.environ.get("MOORAGE_UI_SCAN_BUDGET")
    os.environ["MOORAGE_UI_SCAN_BUDGET"] = str(SCAN_BUDGET)
    os.environ["MOORAGE_UI_STREAM_LIFETIME"] = "3"
    r = Replica(tmp_path_factory.mktemp("ui-api") / "data")
    try:
        r.start()
    finally:
        del os.environ["MOORAGE_UI_STREAM_LIFETIME"]
        if old is None:
            del os.environ["MOORAGE_UI_SCAN_BUDGET"]
        else:
            os.environ["MOORAGE_UI_SCAN_BUDGET"] = old
    yield r
    r.stop()


def _config_blob(c: httpx.Client, repo: str) -> str:
    digest = oci_digest(b"{}")
    blob_post_put(c, repo, digest, b"{}")
    return digest


def _manifest(config: str, note: str, subject: tuple[str, int] | None = None) -> bytes:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_IMAGE,
        "config": {"mediaType": MT_OCI_EMPTY, "digest": config, "size": 2},
        "layers": [],
        "annotations": {"note": note},
    }
    if subject is not None:
        doc["artifactType"] = "application/vnd.example.sig"
        doc["subject"] = {"mediaType": MT_OCI_IMAGE, "digest": subject[0], "size": subject[1]}
    return json.dumps(doc).encode()


def _push(c: httpx.Client, repo: str, tag: str, note: str = "") -> tuple[str, bytes]:
    body = _manifest(_config_blob(c, repo), note or f"{repo}:{tag}")
    digest = oci_digest(body)
    manifest_put(c, repo, tag, digest, body)
    return digest, body


@pytest.fixture(scope="module")
def content(replica: Replica) -> None:
    with replica.client() as c:
        for name in REPOS:
            _push(c, name, "v1")
        for user in ("reader", "nobody", "deleter"):
            r = c.post("/api/v0/users", json={"name": user, "password": PASSWORD})
            assert r.status_code < 300, r.text
        assert c.post("/api/v0/orgs", json={"name": "org"}).status_code < 300
        assert c.post("/api/v0/teams", json={"org": "org", "team": "t"}).status_code < 300
        member = {"org": "org", "team": "t", "user": "reader"}
        assert c.post("/api/v0/teams/add-member", json=member).status_code < 300
        for on, to, role in (
            ("alpha", "user:reader", "read"),
            ("beta/one", "user:reader", "read"),
            ("delta", "team:org/t", "read"),
            ("ui", "user:deleter", "admin"),
            ("ui", "user:reader", "read"),
        ):
            r = c.post("/api/v0/grants", json={"on": on, "to": to, "role": role})
            assert r.status_code < 300, r.text
        r = c.post("/api/v0/repositories/public", json={"repo": "gamma/pub", "public": True})
        assert r.status_code < 300, r.text


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html[:500]
    return match.group(1)


@contextmanager
def signed_in(replica: Replica, user: str, password: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=replica.url, timeout=60, verify=replica.verify()) as client:
        page = client.get("/ui/signin")
        form = {"username": user, "password": password, "csrf": _csrf(page.text)}
        r = client.post("/ui/signin", data=form)
        assert r.status_code == 303, r.text[:500]
        yield client


@pytest.fixture(scope="module")
def admin(replica: Replica) -> Iterator[httpx.Client]:
    with signed_in(replica, *AUTH) as c:
        yield c


@pytest.fixture(scope="module")
def reader(replica: Replica, content: None) -> Iterator[httpx.Client]:
    with signed_in(replica, "reader", PASSWORD) as c:
        yield c


_LINK = re.compile(r'<li><a href="/ui/repository\?name=[^"]+">([^<]+)</a></li>')
_MORE = re.compile(r'href="(/ui/repositories\?[^"]*after=[^"]+)">(Next page|Search further)<')


def listed(client: httpx.Client, path: str) -> tuple[list[str], int]:
    """Every repository a listing shows, following its links to the end: (names, pages)."""
    names: list[str] = []
    pages = 0
    while True:
        r = client.get(path)
        assert r.status_code == 200, r.text[:500]
        pages += 1
        assert pages < 200, path
        shown = _LINK.findall(r.text)
        assert len(shown) <= 50
        names += shown
        more = _MORE.search(r.text)
        if more is None:
            return names, pages
        path = more.group(1).replace("&amp;", "&")


def test_the_list_shows_what_the_viewer_may_pull_in_order_and_in_pages(
    replica: Replica, admin: httpx.Client, reader: httpx.Client
) -> None:
    everything, pages = listed(admin, "/ui/repositories")
    assert everything == sorted(REPOS)
    assert pages == 2  # 52 names: a page of 50 and the rest
    mine, _ = listed(reader, "/ui/repositories")
    assert mine == sorted(n for n, ok in REPOS.items() if ok)
    # the same as the registry's catalog, which filters every name through the policy
    with replica.client(auth=("reader", PASSWORD)) as c:
        assert c.get("/v2/_catalog").json()["repositories"] == mine
    with signed_in(replica, "nobody", PASSWORD) as nobody:  # a public repository only
        assert listed(nobody, "/ui/repositories") == (["gamma/pub"], 1)
        text = nobody.get("/ui/repositories?q=alpha").text
        assert "No repositories starting with “alpha” that you may pull" in text


def test_a_search_by_prefix_reads_a_key_range(admin: httpx.Client, reader: httpx.Client) -> None:
    assert listed(admin, "/ui/repositories?q=alpha")[0] == ["alpha", "alpha/a1", "alpha/a2",
                                                            "alphabet/x"]  # fmt: skip
    assert listed(reader, "/ui/repositories?q=alpha")[0] == ["alpha", "alpha/a1", "alpha/a2"]
    assert listed(reader, "/ui/repositories?q=gam")[0] == ["gamma/pub"]
    assert listed(admin, "/ui/repositories?q=many/r0")[0] == [f"many/r{i:03d}" for i in range(42)]
    assert listed(admin, "/ui/repositories?q=many/r04")[0] == ["many/r040", "many/r041"]
    r = reader.get("/ui/repositories?q=one")
    assert "No repositories starting with “one” that you may pull" in r.text
    assert "match=contains" in r.text  # the page offers the substring search


def test_a_substring_search_is_bounded_and_goes_on(
    admin: httpx.Client, reader: httpx.Client
) -> None:
    names, pages = listed(admin, "/ui/repositories?q=r04&match=contains")
    assert names == [f"many/r{i:03d}" for i in range(40, 42)]
    assert pages > len(REPOS) // SCAN_BUDGET - 1  # each request read at most the budget
    first = admin.get("/ui/repositories?q=r04&match=contains")
    assert "Search further" in first.text
    assert "Searched 12 names" in first.text
    assert listed(reader, "/ui/repositories?q=a&match=contains")[0] == sorted(
        n for n, ok in REPOS.items() if ok and "a" in n
    )


def _delete_form(client: httpx.Client, name: str, digest: str) -> dict[str, str]:
    r = client.get("/ui/delete-manifest", params={"name": name, "digest": digest})
    assert r.status_code == 200, r.text[:500]
    assert f"Delete manifest {digest} of {name}?" in r.text
    assert "every tag that points to it" in r.text
    return {"csrf": _csrf(r.text.split("<main", 1)[1]), "name": name, "digest": digest}


def _signed_pair(c: httpx.Client, repo: str) -> tuple[str, str]:
    """An image tagged t1 and t2, and a signature that refers to it: (image, signature)."""
    digest, body = _push(c, repo, "t1", "doomed")
    manifest_put(c, repo, "t2", digest, body)
    _push(c, repo, "keep", "kept")
    sig = _manifest(oci_digest(b"{}"), "sig", (digest, len(body)))
    manifest_put(c, repo, oci_digest(sig), oci_digest(sig), sig)
    return digest, oci_digest(sig)


def test_delete_a_manifest_by_digest_like_the_registry_does(
    replica: Replica, admin: httpx.Client, content: None
) -> None:
    with replica.client() as c:
        digest, sig = _signed_pair(c, "ui/doomed")
        api_digest, _ = _signed_pair(c, "ui/api-doomed")
        assert api_digest == digest
    page = admin.get("/ui/manifest", params={"name": "ui/doomed", "ref": "t1"})
    assert "Delete this manifest" in page.text
    form = _delete_form(admin, "ui/doomed", digest)
    for bad in ({**form, "csrf": "forged"}, {k: v for k, v in form.items() if k != "csrf"}):
        r = admin.post("/ui/delete-manifest", data=bad)
        assert r.status_code == 403
        assert "CSRF" in r.text
    with replica.client() as c:
        assert c.head(f"/v2/ui/doomed/manifests/{digest}").status_code == 200
    r = admin.post("/ui/delete-manifest", data=form)
    assert r.status_code == 303, r.text[:500]
    assert r.headers["location"] == f"/ui/repository?name=ui%2Fdoomed&deleted={quote(digest)}"
    assert f"Manifest {digest} deleted." in admin.get(r.headers["location"]).text
    with replica.client() as c:
        assert c.delete(f"/v2/ui/api-doomed/manifests/{digest}").status_code == 202
        for repo in ("ui/doomed", "ui/api-doomed"):
            for ref in (digest, "t1", "t2"):
                assert c.head(f"/v2/{repo}/manifests/{ref}").status_code == 404
            assert c.head(f"/v2/{repo}/manifests/keep").status_code == 200
            assert c.head(f"/v2/{repo}/manifests/{sig}").status_code == 200
        ui_refs = c.get(f"/v2/ui/doomed/referrers/{digest}")
        api_refs = c.get(f"/v2/ui/api-doomed/referrers/{digest}")
        assert ui_refs.status_code == api_refs.status_code
        assert ui_refs.json() == api_refs.json()
        # deletes reach the audit log in batches (every 0.1 s): wait for this one
        deadline = time.monotonic() + 30
        while True:
            query: dict[str, str | int] = {"action": "delete", "limit": 50}
            events = c.get("/api/v0/audit", params=query).json()["events"]
            mine = [e for e in events if e.get("target") == f"ui/doomed@{digest}"]
            if mine or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert len(mine) == 1, events
    assert json.dumps(mine[0]).count('"via": "ui"') == 1
    assert mine[0]["actor"] == AUTH[0]
    # gone now: the confirmation says so
    r = admin.get("/ui/delete-manifest", params={"name": "ui/doomed", "digest": digest})
    assert r.status_code == 404


def test_deleting_a_manifest_needs_the_delete_role(
    replica: Replica, reader: httpx.Client, content: None
) -> None:
    with replica.client() as c:
        digest, _ = _push(c, "ui/kept", "v1")
    page = reader.get("/ui/manifest", params={"name": "ui/kept", "ref": "v1"})
    assert page.status_code == 200
    assert "Delete this manifest" not in page.text
    r = reader.get("/ui/delete-manifest", params={"name": "ui/kept", "digest": digest})
    assert r.status_code == 403
    assert "you may not delete manifests in ui/kept" in r.text
    csrf = _csrf(page.text)
    form = {"csrf": csrf, "name": "ui/kept", "digest": digest}
    assert reader.post("/ui/delete-manifest", data=form).status_code == 403
    with signed_in(replica, "nobody", PASSWORD) as nobody:
        form["csrf"] = _csrf(nobody.get("/ui/repositories").text)
        r = nobody.post("/ui/delete-manifest", data=form)
        assert r.status_code == 404  # as if it did not exist
        bad = nobody.get("/ui/delete-manifest", params={"name": "ui/kept", "digest": "sha256:x"})
        assert bad.status_code == 404
        assert "invalid sha256 digest: expected 64 lowercase hex characters" in bad.text
    with replica.client() as c:
        assert c.head(f"/v2/ui/kept/manifests/{digest}").status_code == 200


def test_the_cluster_event_stream(replica: Replica, admin: httpx.Client, content: None) -> None:
    with admin.stream("GET", "/ui/cluster.events") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert "default-src 'self'" in r.headers["content-security-policy"]
        events = []
        for line in r.iter_lines():  # the replica ends the stream after 3 s (lifetime)
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
        assert events, "no event before the stream ended"
        assert events[0]["scenario"] == "healthy"
        assert events[0]["replica"] == events[-1]["replica"]
    with signed_in(replica, "reader", PASSWORD) as reader_client:
        assert reader_client.get("/ui/cluster.events").status_code == 403
    with httpx.Client(base_url=replica.url) as anonymous:
        assert anonymous.get("/ui/cluster.events").status_code == 401


def _set_cookies(r: httpx.Response) -> dict[str, str]:
    return {h.split("=", 1)[0]: h for h in r.headers.get_list("set-cookie")}


def test_cookies_are_secure_over_tls_only(replica: Replica, tmp_path: Path) -> None:
    tls = Replica(tmp_path / "tls", tls=True)
    tls.start()
    try:
        for r_, secure in ((tls, True), (replica, False)):
            with httpx.Client(base_url=r_.url, verify=r_.verify()) as c:
                page = c.get("/ui/signin")
                login = _set_cookies(page)["moorage_login"]
                form = {"username": AUTH[0], "password": AUTH[1], "csrf": _csrf(page.text)}
                session = _set_cookies(c.post("/ui/signin", data=form))["moorage_session"]
                for cookie in (login, session):
                    attrs = [a.strip().lower() for a in cookie.split(";")]
                    assert ("secure" in attrs) is secure, cookie
                    assert "httponly" in attrs, cookie
                    assert "samesite=strict" in attrs, cookie
                signout_csrf = _csrf(c.get("/ui/repositories").text)
                gone = _set_cookies(c.post("/ui/signout", data={"csrf": signout_csrf}))
                attrs = [a.strip().lower() for a in gone["moorage_session"].split(";")]
                assert ("secure" in attrs) is secure
    finally:
        tls.stop()


# -- the fuzz ----------------------------------------------------------------------------------

PAGES = [
    "", "signin", "signout", "cluster", "cluster.json", "repositories",
    "repository", "manifest", "delete-tag", "delete-manifest", "static/ui.js", "static/x",
]  # fmt: skip
FIELDS = ["page", "q", "n", "last", "after", "name", "ref", "tag", "digest", "match", "next",
          "csrf", "username", "password"]  # fmt: skip
HOSTILE = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["", "..", "../../etc/passwd", "%00", "\x00", "ui/doomed", "alpha", "sha256:" + "0" * 64,
         "-1", "99999999999999999999", "<script>", "a" * 5000, "é/ü", "//evil", "\\\\x",
         "contains", "%ff%fe", "ui/kept", "v1"]
    ),
)  # fmt: skip


def _cookie_kinds(valid: str) -> st.SearchStrategy[str | None]:
    mac = valid.partition(".")[2]
    other_key = sessions.session_key(secrets.token_bytes(32))
    other, _ = sessions.issue(other_key, AUTH[0], "x")  # another cluster's (or replica's) key
    forged_doc = base64.urlsafe_b64encode(
        json.dumps({"u": "admin", "c": "x", "i": 0, "e": 2**40, "p": "x"}).encode()
    ).decode()
    return st.one_of(
        st.none(),
        st.just(valid),
        st.just(valid[: len(valid) // 2]),
        st.just(f"{forged_doc}.{mac}"),
        st.just(other),
        st.just(valid + "A" * 3000),
        st.text(max_size=60).map(lambda t: t.encode("utf-8", "replace").hex()),
    )


def _snapshot(replica: Replica) -> Any:
    """What a request could change: the catalog, every tag's digest, users and grants."""
    with replica.client() as c:
        repos = c.get("/v2/_catalog", params={"n": 1000}).json()["repositories"]
        tags = {}
        for repo in repos:
            for tag in c.get(f"/v2/{repo}/tags/list").json().get("tags") or []:
                tags[f"{repo}:{tag}"] = c.head(f"/v2/{repo}/manifests/{tag}").headers.get(
                    "docker-content-digest"
                )
        users = c.get("/api/v0/users").json()
        grants = c.get("/api/v0/grants").json()
    return repos, tags, users, grants


@pytest.fixture(scope="module")
def fuzz_state(replica: Replica, admin: httpx.Client, content: None) -> Iterator[dict[str, Any]]:
    before = _snapshot(replica)
    yield {"session": admin.cookies["moorage_session"]}
    assert _snapshot(replica) == before


@profile(60)
@given(data=st.data())
def test_fuzz_ui(replica: Replica, fuzz_state: dict[str, Any], data: st.DataObject) -> None:
    method = data.draw(st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"DELETE"]))
    page = data.draw(st.sampled_from(PAGES))
    tail = data.draw(st.one_of(st.just(""), HOSTILE.map(lambda t: quote(t, safe="/%"))))
    params = data.draw(st.dictionaries(st.sampled_from(FIELDS), HOSTILE, max_size=4))
    query = "&".join(f"{quote(k)}={quote(v, safe='%')}" for k, v in params.items())
    target = f"/ui/{page}{tail}" + (f"?{query}" if query else "")
    headers: list[tuple[bytes, bytes]] = []
    cookie = data.draw(_cookie_kinds(fuzz_state["session"]))
    if cookie is not None:
        headers.append((b"Cookie", f"{sessions.COOKIE}={cookie}; moorage_login=x".encode()))
    body = b""
    if method == b"POST":
        form = data.draw(st.dictionaries(st.sampled_from(FIELDS), HOSTILE, max_size=5))
        body = "&".join(f"{quote(k)}={quote(v)}" for k, v in form.items()).encode()
        if data.draw(st.booleans()):
            body += b"&name=" + b"x" * 20000  # over the form limit
        headers += [
            (b"Content-Type", b"application/x-www-form-urlencoded"),
            (b"Content-Length", str(len(body)).encode()),
        ]
    resp = rawhttp.request(replica.port, method, target.encode(), headers, body, auth=False)
    assert resp is not None
    assert resp.status < 500, (target, resp.status, resp.body[:500])
    assert b"Traceback" not in resp.body
