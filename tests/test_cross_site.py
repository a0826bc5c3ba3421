"""A page on another website cannot make an admin's browser change anything (CSRF).

Browsers send remembered Basic credentials by themselves, so the API refuses, for every
method but GET/HEAD/OPTIONS outside the UI, a request whose `Sec-Fetch-Site` or `Origin`
says another site made it, and on `/api/v0/` a form or plain-text body (moorage.api.cross_site).
Checked with raw requests and with a real Chromium whose HTTP-auth cache holds the admin's
credentials visiting an attacker's page that auto-submits a form.
"""

from __future__ import annotations

import http.server
import threading
import time

import httpx
import pytest
from harness.process import AUTH, free_port
from harness.replica import Replica

from tests.browser import chromium


def _users(registry: Replica) -> set[str]:
    with registry.client() as c:
        r = c.get("/api/v0/users")
        assert r.status_code == 200, r.text
        return {u["name"] for u in r.json()["users"]}


def _add(c: httpx.Client, name: str, **headers: str) -> httpx.Response:
    body = f'{{"name": "{name}", "admin": true}}'
    return c.post("/api/v0/users", content=body, headers=headers)


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Content-Type": "multipart/form-data; boundary=x"},
        {"Content-Type": "application/json", "Origin": "https://evil.example"},
        {"Content-Type": "application/json", "Origin": "null"},
        {"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"},
        {"Content-Type": "application/json", "Sec-Fetch-Site": "same-site"},
    ],
)
def test_forged_admin_requests_are_refused(registry: Replica, headers: dict[str, str]) -> None:
    name = f"forged{abs(hash(tuple(headers.items()))) % 10**8}"
    with registry.client() as c:
        r = _add(c, name, **headers)
        assert r.status_code == 403, r.text
        assert r.json()["code"] == "DENIED"
    assert name not in _users(registry)


def test_the_same_origin_and_clients_without_these_headers_are_served(registry: Replica) -> None:
    origin = registry.url  # a page of the registry itself
    with registry.client() as c:
        assert _add(c, "sameorigin", **{"Content-Type": "application/json"}).status_code == 200
        r = _add(c, "sameorigin2", **{"Content-Type": "application/json", "Origin": origin,
                                      "Sec-Fetch-Site": "same-origin"})  # fmt: skip
        assert r.status_code == 200, r.text
        # Reads are not refused: nothing changes.
        r = c.get("/v2/_catalog", headers={"Origin": "https://evil.example"})
        assert r.status_code == 200
    assert {"sameorigin", "sameorigin2"} <= _users(registry)


def test_a_forged_push_gets_the_oci_envelope(registry: Replica) -> None:
    with registry.client() as c:
        r = c.post("/v2/forged/app/blobs/uploads/", headers={"Origin": "http://evil.example"})
        assert r.status_code == 403
        assert r.json()["errors"][0]["code"] == "DENIED"
        assert c.post("/v2/forged/app/blobs/uploads/").status_code == 202


def test_a_browser_with_remembered_credentials_is_not_used(registry: Replica) -> None:
    port = free_port()
    target = f"{registry.url}/api/v0/users"
    html = (
        '<html><body><form id="f" method="POST" enctype="text/plain" action="' + target + '">'
        '<input name=\'{"name": "browserforged", "admin": true, "x": "\' value=\'"}\'>'
        "</form><script>document.getElementById('f').submit()</script></body></html>"
    ).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with chromium() as browser:
            context = browser.new_context()
            page = context.new_page()
            host = registry.url.split("://", 1)[1]
            r = page.goto(f"http://{AUTH[0]}:{AUTH[1]}@{host}/v2/_catalog?n=1")
            assert r is not None
            assert r.status == 200  # the credentials are now remembered
            evil = context.new_page()
            evil.goto(f"http://localhost:{port}/")
            deadline = time.monotonic() + 30
            while "/api/v0/users" not in evil.url and time.monotonic() < deadline:
                evil.wait_for_timeout(100)
            evil.wait_for_load_state()
            assert "/api/v0/users" in evil.url  # the form was sent...
            assert "DENIED" in evil.content()  # ...and refused
            context.close()
    finally:
        server.shutdown()
        server.server_close()
    assert "browserforged" not in _users(registry)
