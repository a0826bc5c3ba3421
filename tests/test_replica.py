"""The replica process: pid files, command lines, single ownership, etcd supervision."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from harness.process import ADMIN_PASSWORD, free_port, moorage_cmd
from harness.replica import Replica


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_new_data_dir_becomes_a_cluster(registry: Replica) -> None:
    # The shared replica was started on a new data directory like any other (a replica of
    # its own would cost a start, ~2-3 s of CPU, for the same facts).
    config = json.loads((registry.data_dir / "moorage.json").read_text())
    assert len(config["replica_id"]) == 12
    int(config["replica_id"], 16)
    assert len(config["cluster_id"]) == 32
    assert config["storage"] == str(registry.data_dir / "blobs")
    assert (registry.data_dir / "etcd" / "member").is_dir()
    pids = registry.pids()
    # One API worker (the default): the replica process serves the API itself, so a
    # replica is two processes, itself and its etcd member.
    assert set(pids) == {"moorage", "etcd", f"api-{pids['moorage']}"}
    for pid in pids.values():
        assert str(registry.data_dir) in _cmdline(pid)
    health = httpx.get(f"{registry.url}/api/v0/health").json()
    assert health["replica_id"] == config["replica_id"]
    assert health["cluster_id"] == config["cluster_id"]


def test_relative_data_dir_is_made_absolute(tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ, MOORAGE_ADMIN_PASSWORD=ADMIN_PASSWORD)
    proc = subprocess.Popen(
        moorage_cmd(
            "run", "--data-dir", "rel", "--http-addr", f"127.0.0.1:{port}",
            "--etcd-client-port", str(free_port()), "--etcd-peer-port", str(free_port()),
        ),
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    r = Replica(tmp_path / "rel")
    r.proc, r.port = proc, port
    try:
        r.wait_healthy()
        for pid in r.pids().values():
            assert str(tmp_path / "rel") in _cmdline(pid)
    finally:
        r.stop()
    assert not r.pids()


def test_second_process_on_same_data_dir_is_refused(registry: Replica) -> None:
    # Only read: a second process on the shared replica's data directory is refused.
    out = subprocess.run(
        moorage_cmd("run", "--data-dir", str(registry.data_dir)),
        capture_output=True, text=True, timeout=60,
        env=dict(os.environ, MOORAGE_ADMIN_PASSWORD=ADMIN_PASSWORD),
    )  # fmt: skip
    assert out.returncode == 1
    assert "already running" in out.stderr
    assert str(registry.pids()["moorage"]) in out.stderr
    assert "Traceback" not in out.stderr
    # The first one is unharmed.
    assert httpx.get(f"{registry.url}/_ping").status_code == 200


def test_conflicting_port_is_a_clear_error(tmp_path: Path, registry: Replica) -> None:
    out = subprocess.run(
        moorage_cmd("run", "--data-dir", str(tmp_path / "d"), "--http-addr", registry.host),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1
    assert "already in use" in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_usage_exits_2(tmp_path: Path) -> None:
    out = subprocess.run(
        moorage_cmd("run", "--data-dir", str(tmp_path / "d"), "--http-addr", "nonsense"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert "HOST:PORT" in out.stderr


def test_etcd_is_restarted_when_it_dies(fresh_replica: Replica) -> None:
    fresh_replica.start()
    blob = b"survives an etcd crash"
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    with fresh_replica.client() as c:
        assert (
            c.post(f"/v2/etcd/crash/blobs/uploads/?digest={digest}", content=blob).status_code
            == 201
        )
    old = fresh_replica.pids()["etcd"]
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = fresh_replica.pids().get("etcd")
        if new and new != old:
            break
        time.sleep(0.1)
    assert new
    assert new != old
    with fresh_replica.client() as c:
        deadline = time.monotonic() + 60
        # /_ping may still say healthy from before the kill for one health check: the
        # blob must come back once etcd is back, a 503 meanwhile is the truth.
        got = c.get(f"/v2/etcd/crash/blobs/{digest}")
        while got.status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
            got = c.get(f"/v2/etcd/crash/blobs/{digest}")
        assert got.content == blob


def test_sigint_stops_everything(fresh_replica: Replica) -> None:
    fresh_replica.start()
    pids = fresh_replica.pids()
    assert fresh_replica.proc is not None
    fresh_replica.proc.send_signal(signal.SIGINT)
    assert fresh_replica.proc.wait(60) == 0
    for pid in pids.values():
        assert (
            not Path(f"/proc/{pid}").exists()
            or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
        )
    assert not fresh_replica.pids()


def _gone(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split()[2] == "Z"
    except (FileNotFoundError, IndexError):
        return True


def test_several_workers_fork_and_a_killed_one_is_replaced(tmp_path: Path) -> None:
    """--workers 2: the API workers are processes forked from the replica process; one that
    dies is replaced and the replica keeps answering."""
    r = Replica(tmp_path / "data", workers=2)
    r.start()
    try:
        # /_ping answers once one worker serves; the other may still be starting (it writes
        # its pid file when it has): wait for both.
        deadline = time.monotonic() + 60
        while True:
            pids = r.pids()
            workers = {pid for name, pid in pids.items() if name.startswith("api-")}
            if len(workers) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(workers) == 2, r.log_tail()
        assert pids["moorage"] not in workers
        victim = workers.pop()
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        now: set[int] = set()
        while time.monotonic() < deadline:
            now = {p for n, p in r.pids().items() if n.startswith("api-") and not _gone(p)}
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.2)
        assert victim not in now, r.log_tail()
        assert len(now) == 2, r.log_tail()
        for _ in range(4):  # both workers answer, whichever takes the connection
            assert httpx.get(f"{r.url}/_ping").status_code == 200
    finally:
        r.stop()


def test_replica_starts_again_after_its_supervisor_is_sigkilled(fresh_replica: Replica) -> None:
    """The replica process dies (as by the OOM killer): it serves the API itself (one
    worker, the default), so nothing keeps the port or the data directory's lock, and the
    replica starts again over the etcd member it left."""
    r = fresh_replica
    r.start()
    blob = b"kept across a supervisor crash"
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    with r.client() as c:
        assert (
            c.post(f"/v2/sup/crash/blobs/uploads/?digest={digest}", content=blob).status_code == 201
        )
    pids = r.pids()
    workers = [pid for name, pid in pids.items() if name.startswith("api-")]
    assert workers
    assert r.proc is not None
    r.proc.kill()
    r.proc.wait()
    r.proc = None
    deadline = time.monotonic() + 30
    while not all(_gone(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(pid) for pid in workers), "API workers outlived their supervisor"
    r.start()
    with r.client() as c:
        assert c.get(f"/v2/sup/crash/blobs/{digest}").content == blob


def test_abandoned_uploads_are_purged(
    fresh_replica: Replica, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload untouched for MOORAGE_UPLOAD_MAX_AGE is deleted (and answers 404 after);
    a fresh upload and committed blobs, however old, stay."""
    monkeypatch.setenv("MOORAGE_UPLOAD_MAX_AGE", "600")
    monkeypatch.setenv("MOORAGE_UPLOAD_PURGE_INTERVAL", "1")
    r = fresh_replica
    r.start()
    blob = b"an old committed blob"
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    uploads = r.data_dir / "blobs" / "uploads"
    hour_ago = time.time() - 3600
    with r.client() as c:
        assert (
            c.post(f"/v2/purge/me/blobs/uploads/?digest={digest}", content=blob).status_code == 201
        )
        old = c.post("/v2/purge/me/blobs/uploads/").headers["Location"]
        assert c.patch(old, content=b"abandoned bytes").status_code == 202
        fresh = c.post("/v2/purge/me/blobs/uploads/").headers["Location"]
        old_file = uploads / old.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
        assert old_file.is_file()
        os.utime(old_file, (hour_ago, hour_ago))
        blob_file = r.data_dir / "blobs" / "blobs" / "sha256" / digest[7:9] / digest[7:]
        os.utime(blob_file, (hour_ago, hour_ago))
        stale_tmp = r.data_dir / "blobs" / "tmp" / "crashed-write"
        stale_tmp.write_bytes(b"left by a crash")
        os.utime(stale_tmp, (hour_ago, hour_ago))
        deadline = time.monotonic() + 30
        while old_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not old_file.exists()
        assert not stale_tmp.exists()
        gone = c.get(old)
        assert gone.status_code == 404
        assert gone.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
        assert c.get(fresh).status_code == 204
        assert c.get(f"/v2/purge/me/blobs/{digest}").content == blob
