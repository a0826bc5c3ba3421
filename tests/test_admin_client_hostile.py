"""The CLI's admin client against answers no replica gives (a wrong --existing, a proxy, a
hostile host): a clear error, never a traceback, a hang or the host's memory (probe of
2026-12-03). The archive header's own checks: tests/unit/test_archive_header.py."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.process import moorage

from moorage.errors import MoorageError
from moorage.recovery import client
from moorage.recovery.archive import BackupError
from moorage.recovery.backup import fetch_records
from moorage.recovery.backup_sources import SMALL_BYTES, HttpSource, StorageSource
from moorage.recovery.client import AdminClient, ClusterUnreachable, MissingField

ANSWERS: dict[str, Any] = {}


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        mode = self.path.split("/")[1]
        if mode == "trickle":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):
                try:
                    self.wfile.write(b" ")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.5)
            return
        if mode == "huge":
            size = 8 * 1024 * 1024
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            chunk = b" " * (1 << 20)
            try:
                for _ in range(size // len(chunk)):
                    self.wfile.write(chunk)
            except OSError:
                return
            return
        body = json.dumps(ANSWERS[mode]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()  # the listening socket too (else a ResourceWarning later)


def _client(url: str, timeout: float = 30) -> AdminClient:
    return AdminClient([url], "admin", "pw", timeout=timeout)


def test_an_answer_that_is_not_an_object_is_no_answer(server: str) -> None:
    ANSWERS["list"] = [1, 2]
    ANSWERS["str"] = "members"
    for mode in ("list", "str"):
        with pytest.raises(ClusterUnreachable, match="not a Moorage answer"):
            _client(f"{server}/{mode}").call("GET", "/api/v0/cluster/status")


def test_a_missing_field_is_told_not_raised_as_a_key_error(server: str) -> None:
    ANSWERS["empty"] = {}
    doc = _client(f"{server}/empty").call("GET", "/api/v0/cluster/status")
    with pytest.raises(MoorageError, match="answered without 'members'"):
        doc["members"]
    with pytest.raises(KeyError):  # code that expects a KeyError still gets one
        doc["ca"]
    assert str(MissingField("x")) == "x"


def test_a_trickled_or_huge_answer_ends_the_call(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.monotonic()
    # (Under load a pause between two trickled bytes may pass the read timeout first.)
    with pytest.raises(ClusterUnreachable, match=r"in time|[Tt]imeout|timed out"):
        _client(f"{server}/trickle", timeout=1).call("GET", "/x")
    assert time.monotonic() - started < 30  # 2 x the read timeout, not 50 s of trickle
    monkeypatch.setattr(client, "MAX_ANSWER", 1024 * 1024)  # 256 MiB by default
    with pytest.raises(ClusterUnreachable, match="answered more than"):
        _client(f"{server}/huge").call("GET", "/x")


def test_a_page_cursor_that_does_not_move_on_ends_the_backup(server: str) -> None:
    ANSWERS["pages"] = {"cluster_id": "c1", "epoch": 1, "revision": 5, "records": [], "next": "k"}
    ANSWERS["again"] = {**ANSWERS["pages"], "records": [{"kind": "repository", "repo": "a"}]}
    with pytest.raises(BackupError, match="does not move on"):  # the same cursor twice
        fetch_records(_client(f"{server}/again"))


def test_commands_say_an_answer_is_no_replicas(server: str) -> None:
    """`moorage gc --dry-run` against an empty JSON object printed "would free 0 blob(s)"
    and exited 0; `status` against a list, {} or rows without ids was a KeyError traceback."""
    ANSWERS["empty"] = {}
    ANSWERS["list"] = [1, 2]
    ANSWERS["rows"] = {
        "scenario": "healthy",
        "quorum": {"members": 1, "needed": 1, "healthy": 1},
        "replicas": [{"url": "x"}],
    }
    out = moorage("gc", "--dry-run", "--existing", f"{server}/empty", check=False)
    assert out.returncode == 1, out
    assert "answered without 'run'" in out.stderr
    assert "Traceback" not in out.stderr
    for mode in ("list", "empty", "rows"):
        out = moorage("status", "--existing", f"{server}/{mode}", check=False)
        assert out.returncode != 0, out
        assert "not a Moorage" in out.stdout + out.stderr, out
        assert "Traceback" not in out.stderr, out.stderr


def test_a_small_item_answered_huge_is_refused_not_held(server: str, tmp_path: Path) -> None:
    """A backup reads items recorded as at most 1 MiB whole: an answer (or a blob file) of
    8 MiB for one is refused as it streams, never read into memory whole."""
    digest = "sha256:" + "0" * 64
    source = HttpSource(_client(f"{server}/huge"), revision=1)
    try:
        with pytest.raises(BackupError, match="more than 1048576 bytes for blob"):
            source.small("blob", "a/b", digest)
    finally:
        source.close()
    stored = StorageSource(tmp_path)
    path = stored.layout.blob(digest)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x" * (SMALL_BYTES + 1))
    with pytest.raises(BackupError, match="corrupt record or blob"):
        stored.small("blob", "a/b", digest)
    path.unlink()
    path.write_bytes(b"x" * SMALL_BYTES)
    assert stored.small("blob", "a/b", digest) == b"x" * SMALL_BYTES
