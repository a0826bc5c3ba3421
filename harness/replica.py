"""`Replica`: one `moorage run` process started directly (not through `install`/`start`)."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from harness.process import (
    ADMIN_PASSWORD,
    AUTH,
    EXTRA_ENV,
    free_port,
    log_tail,
    moorage_cmd,
    pid_files,
    signal_pids,
)


class Replica:
    """A `moorage run` process, its data directory and its log (`DATA_DIR.out` beside it)."""

    def __init__(
        self,
        data_dir: Path,
        storage: Path | str | None = None,
        workers: int = 1,
        tls: bool = False,
        run_args: Sequence[str] = (),
    ) -> None:
        """`tls`: serve HTTPS (`--tls`) with the replica's cluster certificate (D/tls/, made
        by `run`); `run_args`: more flags of a new replica's `run`."""
        self.data_dir = data_dir.resolve()
        self.storage = storage
        self.workers = workers
        self.tls = tls
        self.run_args = list(run_args)
        self.port = free_port()
        self.etcd_client_port = free_port()
        self.etcd_peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.data_dir.parent / f"{self.data_dir.name}.out"

    @property
    def scheme(self) -> str:
        return "https" if self.tls or "--tls-cert" in self.run_args else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "tls" / "ca.crt"

    def verify(self) -> ssl.SSLContext | bool:
        """What a client of this replica verifies its HTTPS with: the cluster CA (for a
        --tls-cert replica the test passes its own verify= to `client`)."""
        if not self.tls:
            return True
        return ssl.create_default_context(cafile=str(self.ca_file))

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
            if self.tls:
                args.append("--tls")
            args += self.run_args
        env = dict(os.environ, **EXTRA_ENV, MOORAGE_ADMIN_PASSWORD=ADMIN_PASSWORD)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                moorage_cmd(*args), stdout=out, stderr=subprocess.STDOUT, env=env
            )
        if wait:
            self.wait_healthy()

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log, lines)

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"moorage exited: {self.log_tail()}")
            # (`run` writes the cluster CA of a new replica first: wait for it to exist.)
            with contextlib.suppress(httpx.HTTPError, FileNotFoundError):
                resp = httpx.get(f"{self.url}/_ping", timeout=1, verify=self.verify())
                if resp.status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"moorage not healthy in {timeout} s: {self.log_tail()}")

    def pids(self) -> dict[str, int]:
        """The pids of the replica's `run/*.pid` files by name, the supervisor first."""
        return pid_files(self.data_dir)

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
        # The supervisor first: killed after a worker, it could fork a replacement that the
        # pid files read here do not list yet.
        signal_pids(list(self.pids().values()), signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()
        self.proc = None
        time.sleep(0.2)

    def client(
        self, auth: tuple[str, str] | None = AUTH, timeout: float = 60, **kw: Any
    ) -> httpx.Client:
        kw.setdefault("verify", self.verify())
        return httpx.Client(base_url=self.url, auth=auth, timeout=timeout, **kw)
