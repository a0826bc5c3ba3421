"""The replica process's hold on its data directory and its etcd member.

`supervise` is the part of `moorage run` below the HTTP server (`moorage.server` runs it
around the server). It

1. takes an exclusive lock on `D/run/replica.lock` (a second process on the same data
   directory is refused),
2. starts the replica's etcd member as a child in its own session and waits until it
   answers,
3. creates the cluster record and the admin account on first start,
4. hands over to the caller, which serves the API; its `EtcdWatchdog` restarts etcd if it
   dies, once the caller starts it,
5. when the caller is done (SIGTERM/SIGINT stopped the API), stops etcd.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from moorage.cluster.processes import read_pid
from moorage.config import DataDir, ReplicaConfig
from moorage.errors import ConfigError, MoorageError, StoreUnavailable

if TYPE_CHECKING:
    from moorage.cluster.etcd_process import EtcdProcess

# The etcd process, its TLS and client are imported where used: `moorage stop`, `start` and
# `destroy` import this module (`SUPERVISOR_PID`) and need none of them (the etcd client and
# the x509 code cost ~0.1 s of every such command's start).

log = logging.getLogger("moorage.supervisor")
SUPERVISOR_PID = "moorage"
ETCD_RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0)
MAX_ETCD_RESTARTS = 8
#: How long a start waits for its etcd member to answer before serving anyway.
SERVING_WAIT = 15.0
#: ... unless that long fewer than a quorum of its members' peer listeners answer: then
#: the member cannot answer before more replicas start (a stopped cluster started one
#: replica at a time), and waiting longer only delays the API that says so.
NO_QUORUM_GRACE = 3.0
PEER_PROBE_TIMEOUT = 0.5


class ReplicaBusy(MoorageError):
    """Another process already runs this data directory."""


@contextlib.contextmanager
def replica_lock(data_dir: DataDir) -> Iterator[IO[str]]:
    data_dir.run_dir.mkdir(parents=True, exist_ok=True)
    fh = open(data_dir.lock_file, "a+")  # noqa: SIM115
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = read_pid(data_dir.pid_file(SUPERVISOR_PID))
            who = f" (pid {pid})" if pid else ""
            raise ReplicaBusy(
                f"another Moorage process{who} is already running on {data_dir.path}; "
                f"stop it first (moorage stop --data-dir {data_dir.path})"
            ) from None
        yield fh
    finally:
        fh.close()


def _members_up(etcd: EtcdProcess) -> tuple[int, int] | None:
    """(voting members whose peer listener accepts a connection, voting members), the
    members as the local member's own peer listener lists them (it serves `/members` before
    the member can answer clients); None when that list cannot be read."""
    config = etcd.config
    try:
        with urllib.request.urlopen(
            f"{config.etcd_peer_url}/members", timeout=1.0, context=etcd.context()
        ) as resp:
            members = json.loads(resp.read())
        urls = [
            str(m["peerURLs"][0]) for m in members if m.get("peerURLs") and not m.get("isLearner")
        ]
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
    up = 0
    for url in urls:
        if url == config.etcd_peer_url:
            up += 1
            continue
        parsed = urllib.parse.urlsplit(url)
        try:
            with socket.create_connection(
                (parsed.hostname or "", parsed.port or 0), PEER_PROBE_TIMEOUT
            ):
                up += 1
        except (OSError, ValueError):
            continue
    return up, len(urls)


def wait_serving(etcd: EtcdProcess, timeout: float = SERVING_WAIT) -> None:
    """Until the local etcd member answers clients (a learner catching up or a member
    without quorum answers too); raise `StoreUnavailable` after `timeout`, or sooner once
    fewer than a quorum of its members have been reachable for `NO_QUORUM_GRACE` seconds,
    or at once if etcd exits."""
    from moorage.cluster.etcd_process import etcd_answers

    start = time.monotonic()
    deadline = start + timeout
    short_since: float | None = None
    why = "no answer"
    while time.monotonic() < deadline:
        if etcd_answers(etcd.config.etcd_client_port, etcd.context()):
            return
        if not etcd.alive():
            raise etcd.exit_error()
        counted = _members_up(etcd)
        now = time.monotonic()
        if counted is not None and counted[0] < counted[1] // 2 + 1:
            short_since = now if short_since is None else short_since
            why = f"{counted[0]} of its {counted[1]} etcd members reachable, no quorum"
            if now - short_since >= NO_QUORUM_GRACE:
                raise StoreUnavailable(f"etcd cannot answer yet: {why}")
        else:
            short_since = None
        time.sleep(0.1)
    raise StoreUnavailable(f"etcd did not answer within {timeout:.0f} s ({why})")


class EtcdWatchdog(threading.Thread):
    """Restarts the etcd child whenever it exits, until stopped."""

    def __init__(self, etcd: EtcdProcess, give_up: Callable[[], None] | None = None) -> None:
        super().__init__(name="etcd-watchdog", daemon=True)
        self.etcd = etcd
        self.give_up = give_up
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        failures = 0
        while not self.stopping.wait(0.5):
            with self.lock:
                if self.stopping.is_set() or self.etcd.alive():
                    failures = 0
                    continue
                code = self.etcd.proc.returncode if self.etcd.proc else None
                log.error("etcd exited (code %s); restarting it", code)
                if failures >= MAX_ETCD_RESTARTS or self.etcd.removed_from_cluster():
                    log.error(
                        "etcd keeps exiting (removed from the cluster?); stopping this "
                        "replica: see %s",
                        self.etcd.data_dir.log_dir / "etcd.log",
                    )
                    if self.give_up is not None:
                        self.give_up()
                    return
                time.sleep(ETCD_RESTART_BACKOFF[min(failures, len(ETCD_RESTART_BACKOFF) - 1)])
                failures += 1
                try:
                    self.etcd.start()
                    self.etcd.wait_ready(timeout=30, serving_only=True)
                    log.info("etcd is back")
                except MoorageError as exc:
                    log.error("etcd restart failed: %s", exc)

    def stop(self) -> None:
        self.stopping.set()
        with self.lock:
            self.etcd.stop()


@contextlib.contextmanager
def supervise(
    data_dir: DataDir, config: ReplicaConfig, admin_password: str | None
) -> Iterator[EtcdWatchdog]:
    """Steps 1-3 and 5 of the module docstring around the caller's block, which gets the
    etcd watchdog to start once it serves (and to tell how to stop serving if etcd cannot
    be kept running)."""
    from moorage.cluster.etcd_process import EtcdProcess
    from moorage.cluster.fence import check_fence
    from moorage.cluster.first_start import bootstrap_in_child
    from moorage.cluster.tls import ca_pending, require_tls

    with replica_lock(data_dir):
        pid_file = data_dir.pid_file(SUPERVISOR_PID)
        pid_file.write_text(f"{os.getpid()}\n")
        check_fence(config)  # a stale replica must not even start its etcd member
        require_tls(config)  # made before etcd used TLS: say what to do
        etcd = EtcdProcess(data_dir, config)
        watchdog = EtcdWatchdog(etcd)
        try:
            etcd.start()
            if admin_password is not None or ca_pending(config):
                etcd.wait_ready()
                bootstrap_in_child(config, admin_password)  # keeps gRPC out of this process
            else:
                # A joining member is a learner until promoted, a member without quorum has
                # no leader: serve anyway, /_ping tells the truth until the store is healthy.
                try:
                    wait_serving(etcd)
                except StoreUnavailable as exc:
                    if not etcd.alive():
                        raise
                    # A restarted member serves nothing until it reaches a quorum (the
                    # other replicas are starting too): serve, /_ping says why.
                    log.warning("etcd is not serving yet (%s); waiting for its peers", exc)
            yield watchdog
        finally:
            watchdog.stop()
            for stale in data_dir.run_dir.glob("api-*.pid"):
                stale.unlink(missing_ok=True)
            # At the process's exit, not now: `moorage stop` and `destroy` find the process by
            # this file and wait for it; removed now, a replica stopping by itself (removed
            # from its cluster) was still running when `destroy` returned (a test saw it).
            atexit.register(_unlink_if_ours, pid_file, os.getpid())


def _unlink_if_ours(pid_file: Path, pid: int) -> None:
    """Remove the supervisor's pid file unless another start rewrote it meanwhile."""
    with contextlib.suppress(OSError, ValueError):
        if int(pid_file.read_text()) == pid:
            pid_file.unlink()


_ANY_HOST = {"", "0.0.0.0", "::", "[::]"}


def check_http_addr(config: ReplicaConfig) -> None:
    from moorage.cluster.processes import port_free

    listens = [
        (config.http_host, config.http_port, "HTTP"),
        ("127.0.0.1", config.etcd_client_port, "etcd client"),
        (config.etcd_host, config.etcd_peer_port, "etcd peer"),
    ]
    for i, (host, port, what) in enumerate(listens):  # each alone is free: then etcd fails
        for other, other_port, other_what in listens[i + 1 :]:
            if port == other_port and (host == other or {host, other} & _ANY_HOST):
                raise ConfigError(
                    f"the {what} and {other_what} ports are both {port}; give each its own "
                    "(--http-addr / --etcd-client-port / --etcd-peer-port)"
                )
    for host, port, what in listens:
        if not port_free(host, port):
            raise ConfigError(
                f"{what} port {host}:{port} is already in use; choose another "
                f"(--http-addr / --etcd-client-port / --etcd-peer-port)"
            )
