"""Start, stop and destroy a replica in the background, by its data directory."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from moorage.cluster.processes import alive, cmdline, read_pid, terminate, wait_ports_free
from moorage.config import DataDir, ReplicaConfig
from moorage.errors import MoorageError
from moorage.pki.trust import client_context, trust_data_dir
from moorage.storage.s3location import is_s3

#: The supervisor's pid file name: cluster.supervisor's SUPERVISOR_PID, repeated rather than
#: imported (that module imports asyncio, ~0.05 s of CPU at every `stop`, `start`, `destroy`);
#: tests/test_layers.py checks the two are equal.
SUPERVISOR_PID = "moorage"


class LifecycleError(MoorageError):
    """A replica could not be started, stopped or destroyed."""


def running_pid(data_dir: DataDir) -> int | None:
    """The supervisor's pid if this data directory's replica is running."""
    pid = read_pid(data_dir.pid_file(SUPERVISOR_PID))
    if pid is None or not alive(pid) or str(data_dir.path) not in cmdline(pid):
        return None
    return pid


def ping(url: str, timeout: float = 2.0, writable: bool = False) -> tuple[int, dict[str, object]]:
    query = "?writable=1" if writable else ""
    try:
        ctx = client_context() if url.startswith("https:") else None
        with urllib.request.urlopen(f"{url}/_ping{query}", timeout=timeout, context=ctx) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read())
        except ValueError:
            return exc.code, {}
    except (OSError, ValueError) as exc:
        return 0, {"error": str(exc)}


def start_background(
    data_dir: DataDir,
    admin_password: str | None = None,
    timeout: float = 120.0,
    wait: bool = True,
    healthy: bool = True,
) -> subprocess.Popen[bytes]:
    """Start `moorage run` detached; by default return once `/_ping` answers 200.

    With `healthy=False`, return once the API answers at all (a replica of a stopped
    cluster cannot be healthy before enough of its peers are started too).
    """
    config = data_dir.load()
    data_dir.make_dirs()
    env = dict(os.environ)
    env.pop("MOORAGE_ADMIN_PASSWORD", None)
    if admin_password is not None:
        env["MOORAGE_ADMIN_PASSWORD"] = admin_password
    log_path = data_dir.log_dir / "moorage.log"
    with open(log_path, "ab") as log:
        # Where this run's lines begin: a failure shows only them, never an earlier run's
        # (which could read as if the replica had started).
        offset = log.tell()
        proc = subprocess.Popen(
            [sys.executable, "-m", "moorage", "run", "--data-dir", str(data_dir.path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    proc.log_offset = offset  # type: ignore[attr-defined]
    if wait:
        wait_healthy(config, proc, log_path, timeout, answering_is_enough=not healthy)
    return proc


def wait_healthy(
    config: ReplicaConfig,
    proc: subprocess.Popen[bytes] | None,
    log_path: Path,
    timeout: float,
    answering_is_enough: bool = False,
) -> None:
    trust_data_dir(config.data_dir)  # its HTTPS certificate chains to its cluster CA
    offset = getattr(proc, "log_offset", 0)
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    last: object = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise LifecycleError(
                f"the replica exited with code {proc.returncode}:\n{_tail(log_path, offset)}\n"
                f"(full log: {log_path})"
            )
        status, doc = ping(config.url)
        if status == 200 and doc.get("healthy") is True:
            return
        if answering_is_enough and status and time.monotonic() - started > 10:
            return
        last = doc.get("error") or f"HTTP {status}"
        time.sleep(0.2)
    raise LifecycleError(
        f"the replica did not become healthy within {timeout:.0f} s ({last}); see {log_path}"
    )


def _tail(path: Path, offset: int = 0, lines: int = 15) -> str:
    """The last `lines` lines of the log written from `offset` on (this run's)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Started:
    config: ReplicaConfig
    pid: int
    already: bool
    healthy: bool
    error: str | None


def start_many(dirs: list[DataDir], timeout: float = 90.0) -> list[Started]:
    """Start the replicas of `dirs` together (each detached, none waiting for the others).

    One replica: returns once its API answers (a replica of a stopped cluster cannot be
    healthy alone). Several: returns once all are healthy, or, after `timeout`, once all
    answer (too few of the cluster's replicas were given to form a quorum); a replica that
    exits fails the command with the lines its run wrote to its log."""
    configs = [d.load() for d in dirs]  # every directory is checked before any starts
    procs: dict[int, subprocess.Popen[bytes]] = {}
    pids: list[int] = []
    already: list[bool] = []
    for i, d in enumerate(dirs):
        pid = running_pid(d)
        if pid is None:
            procs[i] = start_background(d, wait=False)
            pid = procs[i].pid
        pids.append(pid)
        already.append(i not in procs)
    if len(dirs) == 1:
        if 0 in procs:
            log = dirs[0].log_dir / "moorage.log"
            wait_healthy(configs[0], procs[0], log, timeout, answering_is_enough=True)
    else:
        _wait_all(dirs, configs, procs, timeout)
    out = []
    for i, config in enumerate(configs):
        status, doc = ping(config.url)
        ok = status == 200 and doc.get("healthy") is True
        err = None if ok else str(doc.get("error") or f"HTTP {status}")
        out.append(Started(config, pids[i], already[i], ok, err))
    return out


def _wait_all(
    dirs: list[DataDir],
    configs: list[ReplicaConfig],
    procs: dict[int, subprocess.Popen[bytes]],
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        answers = []
        for i, config in enumerate(configs):
            proc = procs.get(i)
            if proc is not None and proc.poll() is not None:
                log = dirs[i].log_dir / "moorage.log"
                raise LifecycleError(
                    f"the replica in {dirs[i].path} exited with code {proc.returncode}:\n"
                    f"{_tail(log, getattr(proc, 'log_offset', 0))}\n(full log: {log})"
                )
            answers.append(ping(config.url))
        if all(st == 200 and doc.get("healthy") is True for st, doc in answers):
            return
        if time.monotonic() > deadline:
            if all(st for st, _ in answers):
                return  # they run, but too few to form a quorum: the caller says so
            raise LifecycleError(
                f"the replicas did not answer within {timeout:.0f} s; see DATA_DIR/log/moorage.log"
            )
        time.sleep(0.3)


def stop(data_dir: DataDir, timeout: float = 60.0) -> bool:
    """Stop every process of the replica by pid; True if something was running."""
    config = data_dir.load() if data_dir.exists() else None
    stopped = False
    pid = running_pid(data_dir)
    if pid is not None:
        terminate(pid, timeout)
        stopped = True
    # Anything left behind (a killed supervisor's etcd or API workers).
    for pid_file in sorted(data_dir.run_dir.glob("*.pid")):
        pid = read_pid(pid_file)
        if pid is not None and alive(pid) and str(data_dir.path) in cmdline(pid):
            terminate(pid, timeout)
            stopped = True
        pid_file.unlink(missing_ok=True)
    if config is not None:
        ports = [
            (config.http_host, config.http_port),
            ("127.0.0.1", config.etcd_client_port),
            (config.etcd_host, config.etcd_peer_port),
        ]
        if not wait_ports_free(ports, timeout):
            raise LifecycleError(
                f"the replica's processes are gone but its ports are still in use: {ports}"
            )
    return stopped


def destroy(data_dir: DataDir) -> list[str]:
    """Stop the replica and delete its local state; blob storage is never touched."""
    if not data_dir.path.exists():
        return []
    storage = None
    if data_dir.exists():
        with contextlib.suppress(MoorageError):
            spec = data_dir.load().storage
            storage = None if is_s3(spec) else Path(spec).resolve()
    stop(data_dir)
    removed = []
    for path in (
        data_dir.etcd_dir,
        data_dir.tls_dir,
        data_dir.run_dir,
        data_dir.log_dir,
        data_dir.config_file,
        data_dir.restoring,
    ):
        if storage is not None and (path == storage or path in storage.parents):
            continue
        if path.is_dir():
            shutil.rmtree(path)
            removed.append(str(path))
        elif path.exists():
            path.unlink()
            removed.append(str(path))
    with contextlib.suppress(OSError):
        data_dir.path.rmdir()  # only if nothing (such as blobs) is left in it
    return removed
