"""The CLI with paths and ids it cannot use: one line saying what to do, a non-zero exit, never
a traceback, and nothing sent that the input did not mean.

Each `moorage` runs as a real process. `--existing` is a recording HTTP server on 127.0.0.1
that answers like the admin API: what it was asked shows that a webhook id never becomes
more than its own path segment, and that an output file that cannot be written is refused
before the cluster is read at all."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from harness.process import free_port

from moorage.cli.base import Group, path_segment
from tests.cluster import moorage

HOOK_ID = "0123456789ab"
DELIVERY = {
    "webhook": HOOK_ID,
    "action": "test",
    "repository": "",
    "tag": "",
    "digest": "",
    "status": "delivered",
    "delivered": True,
    "status_code": 200,
    "attempts": 1,
    "error": None,
    "finished_at": 1.0,
}


@dataclass
class Api:
    """A stand-in for the admin API: records each request's method and raw path."""

    url: str
    asked: list[tuple[str, str]] = field(default_factory=list)


@pytest.fixture(scope="module")
def api() -> Iterator[Api]:
    port = free_port()
    recorded = Api(f"http://127.0.0.1:{port}")

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            recorded.asked.append((self.command, self.path))
            length = int(self.headers.get("Content-Length", "0"))
            self.rfile.read(length)
            doc: dict[str, Any] = {"removed": HOOK_ID, "url": "http://h/"}
            if self.path.endswith("/test"):
                doc = {"delivery": DELIVERY}
            body = json.dumps(doc).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield recorded
    finally:
        server.shutdown()
        server.server_close()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return moorage(*args, check=False, timeout=120)


def refused(out: subprocess.CompletedProcess[str], code: int, *says: str) -> str:
    """The error line of a refused command (exit `code`, no traceback, saying `says`)."""
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, out.stderr
    for text in says:
        assert text in errors[0], errors[0]
    return errors[0]


# -- ids in request paths -----------------------------------------------------------------
@pytest.mark.parametrize("verb", ["test", "remove", "deliveries"])
@pytest.mark.parametrize("hook_id", ["../gc?", "..", "../../v2/_catalog#", "0123456789AB/x"])
def test_a_webhook_id_that_is_not_one_is_refused_before_any_request(
    api: Api, verb: str, hook_id: str
) -> None:
    before = len(api.asked)
    out = run("webhook", verb, hook_id, "--existing", api.url)
    refused(out, 2, "is not a webhook id (12 hex digits)", "moorage webhook list")
    assert api.asked[before:] == []


def test_a_webhook_id_is_its_own_path_segment(api: Api) -> None:
    before = len(api.asked)
    assert run("webhook", "test", HOOK_ID, "--existing", api.url).returncode == 0
    assert run("webhook", "remove", HOOK_ID, "--existing", api.url).returncode == 0
    assert api.asked[before:] == [
        ("POST", f"/api/v0/webhooks/{HOOK_ID}/test"),
        ("DELETE", f"/api/v0/webhooks/{HOOK_ID}"),
    ]


@pytest.mark.parametrize(
    ("value", "segment"),
    [
        ("../gc?", "..%2Fgc%3F"),
        ("..", "%2E%2E"),
        (".", "%2E"),
        ("a b#c", "a%20b%23c"),
        ("acme/app", "acme%2Fapp"),
        ("v1.2-rc_3~x", "v1.2-rc_3~x"),
        ("ü", "%C3%BC"),
    ],
)
def test_path_segment_escapes_all_that_could_leave_the_segment(value: str, segment: str) -> None:
    assert path_segment(value) == segment


# -- files and directories that cannot be used --------------------------------------------------
def test_backup_into_a_missing_directory_is_refused_before_the_cluster_is_read(
    api: Api, tmp_path: Path
) -> None:
    before = len(api.asked)
    out_file = tmp_path / "missing" / "x.tar"
    out = run("backup", "--existing", api.url, "--out", str(out_file))
    refused(out, 1, f"cannot write --out {out_file}", "does not exist", "create it")
    assert api.asked[before:] == []
    assert not out_file.parent.exists()


def test_backup_where_no_file_can_be_made_is_refused_before_the_cluster_is_read(
    api: Api,
) -> None:
    before = len(api.asked)
    out = run("backup", "--existing", api.url, "--out", "/proc/nope.tar")
    refused(out, 1, "cannot write --out /proc/nope.tar", "choose a directory")
    assert api.asked[before:] == []


def test_ca_export_to_a_file_that_cannot_be_written_is_refused(api: Api, tmp_path: Path) -> None:
    before = len(api.asked)
    refused(run("ca", "export", "--out", "/proc/x.pem", "--existing", api.url), 1, "/proc/x.pem")
    missing = tmp_path / "nowhere" / "ca.pem"
    refused(run("ca", "export", "--out", str(missing), "--existing", api.url), 1, "does not exist")
    assert api.asked[before:] == []


@pytest.mark.parametrize("data_dir", ["/proc", "FILE/data"])
def test_run_in_a_directory_that_cannot_be_made_is_refused(tmp_path: Path, data_dir: str) -> None:
    file = tmp_path / "a-file"
    file.write_text("not a directory")
    where = data_dir.replace("FILE", str(file))
    out = run("run", "--data-dir", where, "--http-addr", f"127.0.0.1:{free_port()}")
    refused(out, 1, f"cannot make a replica in {where}", "choose a --data-dir")


def test_destroy_deletes_nothing_in_a_folder_that_is_no_replica(tmp_path: Path) -> None:
    """Without moorage.json, a folder holding anything but a replica's own folders is not
    destroyed (it deleted the run/, logs/, tls/ and etcd/ of any folder: `--data-dir /`
    planned /run); a half-made one (an install or join that failed before moorage.json) is."""
    fake = tmp_path / "fake"
    for name in ("run", "logs", "tls", "etcd", "other"):
        (fake / name).mkdir(parents=True)
        (fake / name / "keep.txt").write_text("user data")
    for args in (["--yes"], ["--dry-run"]):
        out = run("destroy", "--data-dir", str(fake), *args)
        refused(out, 1, "is not a Moorage data directory", "nothing was deleted")
    assert sorted(p.name for p in fake.iterdir()) == ["etcd", "logs", "other", "run", "tls"]
    assert all((fake / n / "keep.txt").read_text() == "user data" for n in ("run", "etcd"))
    out = run("destroy", "--data-dir", "/", "--dry-run")
    refused(out, 1, "is not a Moorage data directory")
    half = tmp_path / "half"
    for name in ("run", "logs", "tls"):
        (half / name).mkdir(parents=True)
    out = run("destroy", "--data-dir", str(half), "--yes")
    assert out.returncode == 0, out.stderr
    assert not half.exists()


def test_install_on_a_storage_another_cluster_uses_is_refused(tmp_path: Path) -> None:
    """Its garbage collection and the other cluster's would delete each other's blobs: refused
    before anything is made (a stale marker, of a cluster gone for good, is not counted)."""
    storage = tmp_path / "blobs"
    (storage / "probe").mkdir(parents=True)
    marker = storage / "probe" / "present-0123456789abcdef0123456789abcdef@aaaaaaaaaaaa"
    marker.write_text("1\n")
    data = tmp_path / "replica"
    addr = f"127.0.0.1:{free_port()}"
    out = run("install", "--data-dir", str(data), "--storage", str(storage), "--http-addr", addr,
              "--admin-password", "abcdefgh12")  # fmt: skip
    refused(out, 1, "is in use by another cluster", "0123456789abcdef0123456789abcdef")
    assert not data.exists()
    from moorage.cli.replica import _refuse_occupied

    os.utime(marker, (1, 1))  # a cluster long stopped: its marker no longer counts
    _refuse_occupied(str(storage))


def test_install_with_one_port_for_two_listeners_is_refused(tmp_path: Path) -> None:
    """Each port alone is free, so only etcd's start failed (and left a half-made directory):
    refused first, saying which two."""
    port = free_port()
    data = tmp_path / "replica"
    out = run("install", "--data-dir", str(data), "--http-addr", f"127.0.0.1:{free_port()}",
              "--etcd-client-port", str(port), "--etcd-peer-port", str(port),
              "--admin-password", "abcdefgh12")  # fmt: skip
    refused(out, 1, f"the etcd client and etcd peer ports are both {port}")
    out = run("install", "--data-dir", str(data), "--http-addr", f"127.0.0.1:{port}",
              "--etcd-client-port", str(port), "--admin-password", "abcdefgh12")  # fmt: skip
    refused(out, 1, f"the HTTP and etcd client ports are both {port}")
    assert not data.exists()  # nothing was made


def test_a_restore_killed_half_way_is_never_started(tmp_path: Path) -> None:
    """A restore marks its data directory until the store is whole (one interrupted clears
    what it made; one killed leaves the mark): no start serves the partial store behind it,
    and destroy clears it (a probe's Ctrl-C left a directory `status` called a stopped replica
    and `start` served without the backup's accounts)."""
    from moorage.config import DataDir

    data = tmp_path / "restored"
    d = DataDir(data)
    d.make_dirs()
    (data / "tls").mkdir()
    d.restoring.touch()
    for args in (["start", "--data-dir", str(data)], ["run", "--data-dir", str(data)]):
        refused(run(*args), 1, "a restore that was interrupted", "moorage destroy --data-dir")
    out = run("destroy", "--data-dir", str(data), "--yes")
    assert out.returncode == 0, out.stderr
    assert not data.exists()


def test_an_existing_url_that_is_not_one_is_a_usage_error() -> None:
    out = run("status", "--existing", "http://[::1")
    refused(out, 2, "--existing: 'http://[::1' is not a valid URL", "http://127.0.0.1:5000")
    out = run("gc", "--existing", "http://127.0.0.1:1,http://[::1", "--dry-run")
    refused(out, 2, "is not a valid URL")
    out = run("status", "--existing", "http://admin:secret@127.0.0.1:1")
    line = refused(out, 2, "a URL carries no credentials", "--username and --password")
    assert "secret" not in out.stderr, line


def test_an_empty_token_lifetime_is_refused(api: Api) -> None:
    before = len(api.asked)
    for empty in ("", "  "):
        out = run(
            "token", "create", "--existing", api.url, "--scope", "repository:a:pull",
            "--expires", empty,
        )  # fmt: skip
        refused(out, 2, "--expires", "30d", "leave --expires out")
    assert api.asked[before:] == []


# -- the safety net of the top group -------------------------------------------------------
def _group_raising(exc: BaseException) -> click.Group:
    @click.group(cls=Group)
    def top() -> None:
        pass

    @top.command()
    def go() -> None:
        raise exc

    return top


def test_a_path_error_ends_as_one_line_and_other_errors_stay_tracebacks() -> None:
    runner = CliRunner()
    missing = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "/no/such/file")
    result = runner.invoke(_group_raising(missing), ["go"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot use /no/such/file: No such file or directory")
    assert result.output.count("\n") == 1
    # Not a path the user gave, or no path at all: a bug, raised as it is.
    for bug in (
        ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
        OSError(errno.EBADF, "Bad file descriptor", "/x"),
        FileNotFoundError("no file name"),
        KeyError("x"),
    ):
        result = runner.invoke(_group_raising(bug), ["go"])
        assert result.exception is bug
