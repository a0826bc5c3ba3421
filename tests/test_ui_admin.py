"""The web UI's Administration pages against one real replica (`moorage install`): users,
organizations and teams, grants, access tokens, garbage collection, backups and webhooks.

Every change is a form POSTed with the session's CSRF token (httpx here, as a browser sends
it), and each test checks the registry itself afterwards through the admin API, `/v2/` or
the CLI, and that the audit log says `via=ui`. Refusals: no CSRF token, a non-admin, bad
input (a 400 page), a replica that cannot accept writes (503). The last test visits every
page in Chromium with axe-core and takes docs/screenshots/admin.png.
"""

from __future__ import annotations

import html
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser import axe_clean, chromium, sign_in
from tests.cluster import AUTH, Cluster, Node, cluster_of, free_port
from tests.test_webhooks import Receiver, serve

SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
BOB = ("bob", "bob-password-1234")
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
ADMIN_GETS = [
    "/ui/admin",
    "/ui/admin/users",
    "/ui/admin/orgs",
    "/ui/admin/grants",
    "/ui/admin/storage",
    "/ui/admin/backups",
    "/ui/admin/webhooks",
    "/ui/tokens?all=1",
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster_of(1, tmp_path_factory.mktemp("uiadmin")) as c:
        yield c


@pytest.fixture(scope="module")
def node(cluster: Cluster) -> Node:
    return cluster.nodes[0]


class Browser:
    """A signed-in session as a browser holds it: the cookie, and the CSRF token its pages
    carry in every form."""

    def __init__(self, node: Node, user: tuple[str, str]) -> None:
        self.http = httpx.Client(base_url=node.url, timeout=60)
        form = self.http.get("/ui/signin")
        token = _CSRF.search(form.text)
        assert token, form.text
        r = self.http.post(
            "/ui/signin",
            data={"csrf": token.group(1), "username": user[0], "password": user[1]},
        )
        assert r.status_code == 303, r.text
        page = self.http.get("/ui/tokens")
        found = _CSRF.search(page.text)
        assert found, page.text
        self.csrf = found.group(1)

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path)

    def post(
        self, path: str, form: dict[str, str] | None = None, csrf: bool = True, **fields: str
    ) -> httpx.Response:
        data = {**(form or {}), **fields}
        if csrf:
            data["csrf"] = self.csrf
        return self.http.post(path, data=data)

    def close(self) -> None:
        self.http.close()


@pytest.fixture(scope="module")
def ui(node: Node) -> Iterator[Browser]:
    b = Browser(node, AUTH)
    yield b
    b.close()


@pytest.fixture(scope="module")
def bob(node: Node, ui: Browser) -> Iterator[Browser]:
    """A user who is no cluster admin."""
    r = ui.post("/ui/admin/users", name=BOB[0], password=BOB[1])
    assert r.status_code == 303, r.text
    b = Browser(node, BOB)
    yield b
    b.close()


def api(node: Node, method: str, path: str, **kwargs: Any) -> Any:
    with node.client() as c:
        r = c.request(method, path, **kwargs)
    assert r.status_code == 200, r.text
    return r.json()


def text(r: httpx.Response) -> str:
    """A page's text as a person reads it (tags dropped, entities decoded, spaces folded)."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", r.text)).split())


def audited(node: Node, action: str, target: str) -> dict[str, Any]:
    """The audit event of `action` on `target` (the log is written in batches: waits)."""
    deadline = time.monotonic() + 30
    while True:
        events = api(node, "GET", "/api/v0/audit", params={"since": "10m", "action": action})
        found = [e for e in events["events"] if e["target"] == target]
        if found:
            return dict(found[-1])
        assert time.monotonic() < deadline, f"no {action} of {target} in the audit log"
        time.sleep(0.2)


def users(node: Node) -> dict[str, dict[str, Any]]:
    return {u["name"]: u for u in api(node, "GET", "/api/v0/users")["users"]}


def v2_status(node: Node, user: tuple[str, str]) -> int:
    return httpx.get(f"{node.url}/v2/", auth=user, timeout=30).status_code


def test_a_non_admin_gets_403_pages_and_no_admin_link(node: Node, bob: Browser) -> None:
    start = bob.get("/ui/repositories")
    assert start.status_code == 200
    assert "/ui/admin" not in start.text
    assert 'href="/ui/tokens"' in start.text  # every user has their own tokens
    for path in ADMIN_GETS:
        r = bob.get(path)
        assert r.status_code == 403, path
        assert "for cluster admins" in text(r) or "only a cluster admin" in text(r), path
    r = bob.post("/ui/admin/users", name="mallory", password="mallory-password-1")
    assert r.status_code == 403
    r = bob.get("/ui/tokens?user=admin")  # someone else's tokens: the API's refusal
    assert r.status_code == 403
    assert "mallory" not in users(node)


def test_a_change_without_the_session_csrf_token_is_refused(node: Node, ui: Browser) -> None:
    r = ui.post("/ui/admin/users", csrf=False, name="carol", password="carol-password-1")
    assert r.status_code == 403
    assert "CSRF" in r.text
    r = ui.http.post("/ui/admin/orgs", data={"name": "nope", "csrf": "forged"})
    assert r.status_code == 403
    anonymous = httpx.post(f"{node.url}/ui/admin/users", data={"name": "carol"}, timeout=30)
    assert anonymous.status_code == 303  # to the sign-in form
    assert "carol" not in users(node)
    assert "nope" not in api(node, "GET", "/api/v0/orgs")["orgs"]


def test_users_create_disable_enable_reset_and_delete(node: Node, ui: Browser) -> None:
    carol = ("carol", "carol-password-1234")
    r = ui.post("/ui/admin/users", name=carol[0], password=carol[1])
    assert r.status_code == 303
    page = ui.get(r.headers["location"])
    assert "User carol created." in text(page)
    assert users(node)["carol"] == {"name": "carol", "admin": False, "disabled": False}
    assert audited(node, "user.add", "user:carol")["detail"]["via"] == "ui"
    assert v2_status(node, carol) == 200
    session = Browser(node, carol)  # carol's own UI session, from before the disable
    assert session.get("/ui/tokens").status_code == 200

    assert ui.post("/ui/admin/users/disable", name="carol").status_code == 303
    assert users(node)["carol"]["disabled"] is True
    assert v2_status(node, carol) != 200
    assert ui.post("/ui/admin/users/enable", name="carol").status_code == 303
    assert users(node)["carol"]["disabled"] is False
    assert v2_status(node, carol) == 200  # her password works again...
    # ...but the session made before the disable stays ended (it goes to the sign-in page)
    ended = session.get("/ui/tokens")
    assert ended.status_code == 303 or "/ui/signin" in str(ended.url), ended.status_code
    session.close()
    Browser(node, carol).close()  # signing in again works

    confirm = ui.get("/ui/admin/users/passwd?name=carol")
    assert "Reset the password of carol?" in text(confirm)
    r = ui.post("/ui/admin/users/passwd", name="carol", password="")
    assert r.status_code == 200  # the generated password, shown this once
    shown = re.search(r'<code id="secret">([^<]+)</code>', r.text)
    assert shown
    assert r.headers["cache-control"] == "no-store"
    assert v2_status(node, (carol[0], html.unescape(shown.group(1)))) == 200
    assert v2_status(node, carol) == 401
    assert audited(node, "user.passwd", "user:carol")["detail"]["via"] == "ui"

    confirm = ui.get("/ui/admin/users/delete?name=carol")
    assert "Delete user carol?" in text(confirm)
    assert "carol" in users(node)  # asking changes nothing
    r = ui.post("/ui/admin/users/delete", name="carol")
    assert r.status_code == 303
    assert "User carol deleted." in text(ui.get(r.headers["location"]))
    assert "carol" not in users(node)


def test_the_user_list_is_paged(node: Node, ui: Browser) -> None:
    with node.client() as c:
        for i in range(50):
            body = {"name": f"pager-{i:02d}", "password": "pager-password-1"}
            assert c.post("/api/v0/users", json=body).status_code == 200
    first = ui.get("/ui/admin/users")
    link = re.search(r'href="(/ui/admin/users\?after=[^"]+)">Next page<', first.text)
    assert link, "a full page links to the next one"
    second = ui.get(html.unescape(link.group(1)))
    names = re.findall(r"<tr>\s*<td>([a-z0-9-]+)</td>", first.text + second.text)
    assert {f"pager-{i:02d}" for i in range(50)} <= set(names)
    assert len(names) == len(set(names))  # no row on both pages


def test_organizations_teams_and_members(node: Node, ui: Browser, bob: Browser) -> None:
    r = ui.post("/ui/admin/orgs", name="acme")
    assert r.status_code == 303
    assert "Organization acme created." in text(ui.get(r.headers["location"]))
    assert ui.post("/ui/admin/teams/add", org="acme", team="devs").status_code == 303
    r = ui.post("/ui/admin/teams/add-member", org="acme", team="devs", user="bob")
    assert r.status_code == 303
    teams = api(node, "GET", "/api/v0/teams", params={"org": "acme"})["teams"]
    assert teams == [{"org": "acme", "team": "devs", "members": ["bob"]}]
    page = text(ui.get("/ui/admin/org?name=acme"))
    assert "devs" in page
    assert "Remove bob from team devs" in ui.get("/ui/admin/org?name=acme").text
    r = ui.post("/ui/admin/teams/remove-member", org="acme", team="devs", user="bob")
    assert r.status_code == 303
    teams = api(node, "GET", "/api/v0/teams", params={"org": "acme"})["teams"]
    assert teams[0]["members"] == []
    assert "Delete team acme/devs?" in text(ui.get("/ui/admin/teams/delete?org=acme&team=devs"))
    assert ui.post("/ui/admin/teams/delete", org="acme", team="devs").status_code == 303
    assert api(node, "GET", "/api/v0/teams", params={"org": "acme"})["teams"] == []
    assert audited(node, "team.delete", "team:acme/devs")["detail"]["via"] == "ui"
    assert "Delete organization acme?" in text(ui.get("/ui/admin/orgs/delete?name=acme"))
    assert ui.post("/ui/admin/orgs/delete", name="acme").status_code == 303
    assert "acme" not in api(node, "GET", "/api/v0/orgs")["orgs"]


def test_grants_and_public_repositories(node: Node, ui: Browser, bob: Browser) -> None:
    r = ui.post("/ui/admin/grants", role="write", on="shared", to="user:bob")
    assert r.status_code == 303
    assert "Granted write to user:bob." in text(ui.get(r.headers["location"]))
    grants = api(node, "GET", "/api/v0/grants", params={"on": "shared"})["grants"]
    assert grants == [{"on": "shared", "to": "user:bob", "role": "write"}]
    assert "user:bob" in text(ui.get("/ui/admin/grants"))
    assert audited(node, "grant", "shared")["detail"] == {"to": "user:bob", "role": "write",
                                                          "via": "ui"}  # fmt: skip
    assert ui.post("/ui/admin/grants/revoke", on="shared", to="user:bob").status_code == 303
    assert api(node, "GET", "/api/v0/grants", params={"on": "shared"})["grants"] == []

    assert "is private" in text(ui.get("/ui/admin/grants?on=shared/app"))
    r = ui.post("/ui/admin/grants/public", repo="shared/app", public="true")
    assert r.status_code == 303
    assert "shared/app is public" in text(ui.get(r.headers["location"]))
    anonymous = httpx.get(f"{node.url}/v2/shared/app/tags/list", timeout=30)
    assert anonymous.status_code != 401  # anonymous pulls are let in (no such repository yet)
    assert ui.post("/ui/admin/grants/public", repo="shared/app", public="false").status_code == 303
    assert httpx.get(f"{node.url}/v2/shared/app/tags/list", timeout=30).status_code == 401


def test_bad_input_answers_a_400_page(ui: Browser, bob: Browser) -> None:
    cases = [
        ("/ui/admin/users", {"name": "Not A Name!", "password": "long-enough-1"}, "invalid user"),
        ("/ui/admin/users", {"name": "shorty", "password": "short"}, "8 to 1024"),
        ("/ui/admin/grants", {"role": "owner", "on": "shared", "to": "user:bob"}, "role must"),
        ("/ui/admin/grants", {"role": "read", "on": "shared", "to": "bob"}, "user:NAME"),
        ("/ui/admin/webhooks", {"url": "ftp://x", "event-push": "on"}, "http://"),
        ("/ui/tokens", {"scopes": "registry:catalog:*"}, "bad scope"),
    ]
    for path, form, says in cases:
        r = ui.post(path, form)
        assert r.status_code == 400, (path, r.text)
        assert says in text(r), (path, text(r))
        assert 'role="alert"' in r.text
    assert ui.get("/ui/admin/backups?since=forever").status_code == 400
    assert ui.get("/ui/admin/org?name=nosuch").status_code == 404
    assert ui.post("/ui/admin/users/disable", name="nosuch").status_code == 404
    assert ui.post("/ui/admin/orgs", name="dup").status_code == 303
    assert ui.post("/ui/admin/orgs", name="dup").status_code == 409
    # markup in input comes back escaped, never as markup
    r = ui.post("/ui/admin/grants", role="read", on="shared", to="user:<b>x</b>")
    assert r.status_code == 400
    assert "<b>x</b>" not in r.text


def test_access_tokens_of_a_user_and_of_the_admin(node: Node, ui: Browser, bob: Browser) -> None:
    r = bob.post("/ui/tokens", scopes="repository:bob/app:pull,push", expires="30d")
    assert r.status_code == 200
    secret = re.search(r'<code id="secret">([^<]+)</code>', r.text)
    assert secret
    token = html.unescape(secret.group(1))
    assert v2_status(node, (BOB[0], token)) == 200
    listed = bob.get("/ui/tokens")
    token_id = re.search(r"Revoke token ([0-9a-f]{16})", listed.text)
    assert token_id
    assert token not in listed.text  # shown once, never again
    assert token_id.group(1) in text(ui.get("/ui/tokens?user=bob"))
    assert token_id.group(1) in text(ui.get("/ui/tokens?all=1"))
    r = ui.post("/ui/tokens/revoke", id=token_id.group(1))
    assert r.status_code == 303
    assert f"Token {token_id.group(1)} revoked." in text(ui.get(r.headers["location"]))
    assert v2_status(node, (BOB[0], token)) == 401
    event = audited(node, "token.revoke", f"token:{token_id.group(1)}")
    assert (event["actor"], event["detail"]["via"]) == ("admin", "ui")


def test_garbage_collection_runs_from_the_button(node: Node, ui: Browser) -> None:
    api(node, "POST", "/api/v0/policies", json={"on": "quota", "quota": "1GiB", "keep_last": 3})
    page = text(ui.get("/ui/admin/storage"))
    assert "Last run none" in page
    assert "keep last 3" in page
    assert "1.0 GiB" in page
    assert f"moorage gc --existing {node.url}" in page
    r = ui.post("/ui/admin/gc")
    assert r.status_code == 303
    started = text(ui.get(r.headers["location"]))
    run = re.search(r"Garbage collection (\S+) started\.", started)
    assert run
    deadline = time.monotonic() + 60
    while (last := api(node, "GET", "/api/v0/gc")["last"]) is None or last["run"] != run[1]:
        assert time.monotonic() < deadline, "the collection did not finish"
        time.sleep(0.3)
    assert last["started_by"] == "admin"
    assert f"run {run[1]} by admin" in text(ui.get("/ui/admin/storage"))
    assert audited(node, "gc", "cluster")["detail"]["via"] == "ui"


def test_backups_written_are_listed(
    cluster: Cluster, node: Node, ui: Browser, tmp_path: Path
) -> None:
    assert "The cluster has recorded no backup." in text(ui.get("/ui/admin/backups"))
    out = tmp_path / "nightly.tar"
    doc = json.loads(
        cluster.cli("backup", "--existing", node.url, "--out", str(out), "--json").stdout
    )
    page = text(ui.get("/ui/admin/backups"))
    assert f"revision {doc['revision']}" in page
    shown = rf"admin from 127\.0\.0\.1 {doc['revision']} (\S+ \S+) metadata only nightly\.tar"
    row = re.search(shown, page)
    assert row, page
    size = os.path.getsize(out)
    assert row[1] == (f"{size} B" if size < 1024 else f"{size / 1024:.1f} KiB")


def test_webhooks_add_test_and_remove(node: Node, ui: Browser) -> None:
    receiver = Receiver(free_port())
    server = serve(receiver)
    try:
        form = {"url": receiver.url("/hook"), "event-push": "on", "name": "ci"}
        r = ui.post("/ui/admin/webhooks", form)
        assert r.status_code == 303
        hooks = api(node, "GET", "/api/v0/webhooks")["webhooks"]
        assert [(h["url"], h["events"], h["name"]) for h in hooks] == [
            (receiver.url("/hook"), ["push"], "ci")
        ]
        hook_id = hooks[0]["id"]
        r = ui.post("/ui/admin/webhooks/test", id=hook_id)
        assert r.status_code == 303
        page = ui.get(r.headers["location"])
        assert f"Test event sent to webhook {hook_id}: delivered, HTTP status 200." in text(page)
        assert receiver.wait("/hook", 1)[0].events[0]["action"] == "test"
        assert re.search(r"<td>test</td>\s*<td>delivered</td>\s*<td>200</td>", page.text)
        assert "Remove webhook" in text(ui.get(f"/ui/admin/webhooks/remove?id={hook_id}"))
        assert ui.post("/ui/admin/webhooks/remove", id=hook_id).status_code == 303
        assert api(node, "GET", "/api/v0/webhooks")["webhooks"] == []
        assert audited(node, "webhook.remove", f"webhook {hook_id}")["detail"]["via"] == "ui"
        assert ui.post("/ui/admin/webhooks/test", id=hook_id).status_code == 404
    finally:
        server.shutdown()
        server.server_close()


def test_a_replica_that_cannot_accept_writes_refuses_every_change(
    cluster: Cluster, node: Node, ui: Browser
) -> None:
    # The fence marker that cannot be checked (a symlink loop: stat fails, not "missing")
    # makes the replica refuse to acknowledge writes, as it does when quorum is lost.
    marker = cluster.storage / "fence.json"  # written by emergency repairs only
    assert not marker.exists()
    marker.symlink_to(marker.name)
    try:
        for path, form in [
            ("/ui/admin/users", {"name": "dave", "password": "dave-password-12"}),
            ("/ui/admin/orgs", {"name": "readonly"}),
            ("/ui/admin/gc", {}),
        ]:
            r = ui.post(path, form)
            assert r.status_code == 503, path
            assert "cannot accept changes now" in text(r)
            assert "nothing was changed" in text(r)
        assert ui.get("/ui/admin/users").status_code == 200  # reading goes on
    finally:
        marker.unlink()
    assert "dave" not in users(node)
    assert "readonly" not in api(node, "GET", "/api/v0/orgs")["orgs"]
    assert ui.post("/ui/admin/orgs", name="writable").status_code == 303


def test_every_admin_page_in_a_browser(node: Node) -> None:
    """Each Administration page in Chromium, with the axe-core check; the keyboard reaches
    and sends a form."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        sign_in(page, node, AUTH, "/ui/admin")
        expect(page.get_by_role("heading", name="Administration")).to_be_visible()
        axe_clean(page)
        nav = page.get_by_role("navigation", name="Administration")
        nav.get_by_role("link", name="Users").click()
        expect(page.get_by_role("heading", name="Users")).to_be_visible()
        page.screenshot(path=str(SCREENSHOTS / "admin.png"))
        axe_clean(page)
        pages = [
            *(p for p in ADMIN_GETS[2:] if p != "/ui/tokens?all=1"),
            "/ui/admin/org?name=writable",
            "/ui/tokens",  # with its form (every token: the same table)
            "/ui/admin/users/delete?name=bob",  # the confirmation of every delete
            "/ui/admin/users/passwd?name=bob",
        ]
        for path in pages:
            page.goto(node.url + path)
            expect(page.locator("h1")).to_be_visible()
            axe_clean(page)
        # the keyboard reaches the forms: type a new organization and press Enter
        page.goto(node.url + "/ui/admin/orgs")
        page.get_by_label("Organization name").focus()
        page.keyboard.type("keyboard")
        page.keyboard.press("Enter")
        expect(page.get_by_role("status")).to_have_text("Organization keyboard created.")
        context.close()
