"""The CLI's admin client on a replica that takes a request and never answers (scale probe D4):
a request that is not safe to send twice (a POST such as `policy apply`) is not sent again
to the next `--existing` replica once it may have been received (a read timeout, a
connection closed after sending): the user is told its outcome is unknown and how to check.
What certainly never left (connection refused), and idempotent methods, go on to the next.

Local HTTP servers in threads of this process, with short timeouts."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from harness.process import moorage

from moorage.recovery.client import AdminClient, ClusterUnreachable, OutcomeUnknown


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, mode: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        #: "silent": reads the request, never answers; "close": reads it, closes the
        #: connection; "answer": a JSON answer; "plan": answers a dry run, closes on the apply.
        self.mode = mode
        self.seen: list[tuple[str, str, Any]] = []
        self.stop = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.server.seen.append((self.command, self.path, body))
        mode = self.server.mode
        if mode == "plan":
            mode = "answer" if isinstance(body, dict) and body.get("dry_run") else "close"
        if mode == "silent":
            self.server.stop.wait(30)
            self.close_connection = True
            return
        if mode == "close":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        doc = {"ok": True, "would_delete": [_DOOMED], "deleted": [], "skipped": []}
        out = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = _handle


_DOOMED = {
    "repo": "ns/app",
    "tag": "old",
    "digest": "sha256:" + "0" * 64,
    "pushed_at": 0,
    "rule": "ns",
}


@contextmanager
def _servers(*modes: str) -> Iterator[list[_Server]]:
    servers = [_Server(mode) for mode in modes]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    try:
        yield servers
    finally:
        for s in servers:
            s.stop.set()
            s.shutdown()
            s.server_close()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed


def _client(*urls: str, timeout: float = 0.5) -> AdminClient:
    return AdminClient(list(urls), "admin", "pw", timeout=timeout)


def test_post_not_resent_after_a_read_timeout() -> None:
    with _servers("silent", "answer") as (silent, good):
        started = time.monotonic()
        with pytest.raises(OutcomeUnknown) as caught:
            _client(silent.url, good.url).call(
                "POST", "/api/v0/policies/apply", {"dry_run": False}, if_unknown="CHECK-THIS"
            )
        assert time.monotonic() - started < 10
        assert [p for _, p, _ in silent.seen] == ["/api/v0/policies/apply"]
        assert good.seen == []  # not started a second time on the next replica
    message = str(caught.value)
    assert "POST /api/v0/policies/apply" in message
    assert "outcome is unknown" in message
    assert "NOT sent to another replica" in message
    assert message.endswith("CHECK-THIS")


def test_post_not_resent_after_the_connection_closed_after_sending() -> None:
    with _servers("close", "answer") as (closing, good):
        with pytest.raises(OutcomeUnknown) as caught:
            _client(closing.url, good.url).call("POST", "/api/v0/gc", {"grace": 0})
        assert len(closing.seen) == 1
        assert good.seen == []
    assert "moorage audit" in str(caught.value)  # the default advice: how to check


def test_post_goes_to_the_next_replica_when_it_never_left() -> None:
    with _servers("answer") as (good,):
        doc = _client(_closed_port_url(), good.url).call("POST", "/api/v0/gc", {"grace": 0})
        assert doc["ok"] is True
        assert [(m, p) for m, p, _ in good.seen] == [("POST", "/api/v0/gc")]


def test_idempotent_requests_go_to_the_next_replica_after_a_timeout() -> None:
    with _servers("silent", "answer") as (silent, good):
        client = _client(silent.url, good.url)
        assert client.call("GET", "/api/v0/gc")["ok"] is True
        # A POST that only reads (a dry run) may say it is safe to send again.
        body = {"dry_run": True}
        assert client.call("POST", "/api/v0/policies/apply", body, idempotent=True)["ok"]
        assert [m for m, _, _ in good.seen] == ["GET", "POST"]
        assert len(silent.seen) == 2


def test_nothing_answers_at_all_is_still_unreachable() -> None:
    with pytest.raises(ClusterUnreachable):
        _client(_closed_port_url(), _closed_port_url()).call("POST", "/api/v0/gc", {})


def test_read_timeout_of_one_call() -> None:
    """A call may wait longer than the client's timeout (policy apply's real run does)."""
    with _servers("silent") as (silent,):
        started = time.monotonic()
        with pytest.raises(OutcomeUnknown):
            _client(silent.url, timeout=0.3).call("POST", "/x", {}, read_timeout=1.5)
        assert 1.4 < time.monotonic() - started < 10


def test_policy_apply_cli_says_the_outcome_is_unknown_and_how_to_check() -> None:
    """The plan is answered; the apply's connection breaks after sending: the CLI does not
    send the apply to the next replica, and says how to see what is left."""
    with _servers("plan", "answer") as (flaky, other):
        existing = f"{flaky.url},{other.url}"
        out = moorage(
            "policy", "apply", "ns/app", "--yes", "--existing", existing, check=False, timeout=60
        )
        assert out.returncode == 1, out
        bodies = [b for _, _, b in flaky.seen]
        assert bodies == [{"dry_run": True, "on": "ns/app"}, {"dry_run": False, "on": "ns/app"}]
        assert other.seen == []
    assert "outcome is unknown" in out.stderr
    assert "moorage policy apply ns/app --dry-run" in out.stderr
    assert "retention.delete" in out.stderr
