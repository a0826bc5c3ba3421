"""Fixtures that run real Moorage replicas (each with its own etcd) on 127.0.0.1.

Every process is started by the test and stopped by pid; data lives under pytest's tmp dirs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ADMIN_PASSWORD = "test-admin-password"
AUTH = ("admin", ADMIN_PASSWORD)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def moorage_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "moorage", *args]


class Replica:
    """A `moorage run` process started by a test."""

    def __init__(self, data_dir: Path, storage: Path | None = None, workers: int = 1) -> None:
        self.data_dir = data_dir.resolve()
        self.storage = storage
        self.workers = workers
        self.port = free_port()
        self.etcd_client_port = free_port()
        self.etcd_peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.data_dir.parent / f"{self.data_dir.name}.out"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> None:
        args = ["run", "--data-dir", str(self.data_dir), "--workers", str(self.workers)]
        if not (self.data_dir / "moorage.json").exists():
            args += ["--http-addr", self.host]
            args += ["--etcd-client-port", str(self.etcd_client_port)]
            args += ["--etcd-peer-port", str(self.etcd_peer_port)]
            if self.storage is not None:
                args += ["--storage", str(self.storage)]
        env = dict(os.environ, MOORAGE_ADMIN_PASSWORD=ADMIN_PASSWORD)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                moorage_cmd(*args), stdout=out, stderr=subprocess.STDOUT, env=env
            )
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"moorage exited: {self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/_ping", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"moorage not healthy in {timeout} s: {self.log.read_text()[-3000:]}")

    def pids(self) -> dict[str, int]:
        out = {}
        for f in (self.data_dir / "run").glob("*.pid"):
            with contextlib.suppress(ValueError, OSError):
                out[f.stem] = int(f.read_text())
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL every process of the replica (supervisor, API workers, etcd)."""
        for pid in self.pids().values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()
        self.proc = None
        time.sleep(0.2)

    def client(
        self, auth: tuple[str, str] | None = AUTH, timeout: float = 60, **kw: object
    ) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=auth, timeout=timeout, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    """One replica shared by the tests that do not restart or kill it."""
    r = Replica(tmp_path_factory.mktemp("shared") / "data")
    r.start()
    yield r
    r.stop()


@pytest.fixture
def client(registry: Replica) -> Iterator[httpx.Client]:
    with registry.client() as c:
        yield c


@pytest.fixture
def fresh_replica(tmp_path: Path) -> Iterator[Replica]:
    """A replica of the test's own, for tests that restart or kill it."""
    r = Replica(tmp_path / "data")
    yield r
    r.kill() if r.proc is not None and r.proc.poll() is None else r.stop()
    for pid in r.pids().values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
