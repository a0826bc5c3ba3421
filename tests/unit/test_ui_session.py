"""The web UI's session and CSRF rules, in process: the cookie's signature and expiry, and
the sign-in flow of a replica's app (no browser; tests/test_ui_browser.py has one)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.web import session as sessions
from tests.unit.app import ADMIN_PASSWORD, InProcessClient, in_process_registry

KEY = sessions.session_key(b"k" * 32)


def test_a_session_verifies_until_it_expires() -> None:
    cookie, csrf = sessions.issue(KEY, "alice", "$argon2id$hash", now=1000.0)
    found = sessions.verify(KEY, cookie, now=1000.0 + sessions.SESSION_TTL - 1)
    assert found is not None
    assert (found.user, found.csrf) == ("alice", csrf)
    assert found.password == sessions.password_tag("$argon2id$hash")
    assert sessions.verify(KEY, cookie, now=1000.0 + sessions.SESSION_TTL) is None


@pytest.mark.parametrize(
    "tamper",
    [
        lambda c: c.replace(c[3], "A" if c[3] != "A" else "B", 1),  # the payload changed
        lambda c: c[:-2] + ("AA" if not c.endswith("AA") else "BB"),  # the signature changed
        lambda c: c.split(".")[0],  # no signature
        lambda c: "",
        lambda c: c + "é",
        lambda c: c * 40,  # over the size bound
        lambda c: c + "=",  # the same signature's bytes, padded: one session, one cookie
        lambda c: c + "==",
    ],
)
def test_a_tampered_session_is_refused(tamper: object) -> None:
    cookie, _ = sessions.issue(KEY, "alice", "h")
    assert callable(tamper)
    assert sessions.verify(KEY, tamper(cookie)) is None


def test_another_key_refuses_the_session() -> None:
    cookie, _ = sessions.issue(KEY, "alice", "h")
    assert sessions.verify(sessions.session_key(b"j" * 32), cookie) is None


def test_csrf_must_match_the_session() -> None:
    cookie, csrf = sessions.issue(KEY, "alice", "h")
    found = sessions.verify(KEY, cookie)
    assert found is not None
    assert sessions.csrf_ok(found, csrf)
    assert not sessions.csrf_ok(found, None)
    assert not sessions.csrf_ok(found, csrf[:-1])


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[InProcessClient]:
    with in_process_registry(tmp_path) as client:
        yield client


def _login_token(ui: InProcessClient, next_page: str = "/ui/") -> str:
    page = ui.get("/ui/signin", params={"next": next_page})
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


def test_basic_credentials_alone_do_not_open_the_ui(ui: InProcessClient) -> None:
    r = ui.get("/ui/repositories")  # the client sends the admin's Basic credentials
    assert r.status_code == 303
    assert r.headers["location"].startswith("/ui/signin?next=")


def test_sign_in_then_post_with_and_without_the_csrf_token(ui: InProcessClient) -> None:
    token = _login_token(ui, "//evil.example/")
    form = {"username": "admin", "password": "wrong", "csrf": token}
    assert ui.post("/ui/signin", data=form).status_code == 401
    token = _login_token(ui, "//evil.example/")
    form = {"username": "admin", "password": ADMIN_PASSWORD, "csrf": token, "next": "//evil/"}
    r = ui.post("/ui/signin", data=form)
    assert r.status_code == 303
    assert r.headers["location"] == "/ui/"  # never another site
    set_cookie = r.headers["set-cookie"]
    assert "HttpOnly" in set_cookie
    assert "SameSite=strict" in set_cookie
    r = ui.get("/ui/repositories")
    assert r.status_code == 200
    assert "No repositories" in r.text
    r = ui.post("/ui/delete-tag", data={"name": "a/b", "tag": "t"})
    assert r.status_code == 403
    assert "CSRF" in r.text
    r = ui.post("/ui/signout", data={"csrf": "stale"})
    assert r.status_code == 403


def _signed_in(ui: InProcessClient) -> None:
    form = {"username": "admin", "password": ADMIN_PASSWORD, "csrf": _login_token(ui)}
    assert ui.post("/ui/signin", data=form).status_code == 303


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/ui/repository?name=Not%20A%20Name", 400),
        ("/ui/repository?name=no/such", 404),
        ("/ui/manifest?name=no/such&ref=latest", 404),
        ("/ui/manifest?name=Bad!&ref=latest", 400),
        ("/ui/delete-tag?name=no/such&tag=bad%20tag", 404),
        ("/ui/delete-tag?name=no/such&tag=v1", 404),
        ("/ui/repositories?after=%00%ff&q=" + "x" * 5000, 200),
    ],
)
def test_bad_input_gets_a_page_that_says_so(ui: InProcessClient, path: str, status: int) -> None:
    _signed_in(ui)
    r = ui.get(path)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
