"""Start, watch and stop the servers under test: Moorage, Distribution and the client sink."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from harness.process import (
    ADMIN_PASSWORD,
    REPO_ROOT,
    alive,
    free_port,
    log_tail,
    moorage_cmd,
)

DISTRIBUTION_BINARY = "/usr/bin/docker-registry"
_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")


def descendants(root: int) -> list[int]:
    """`root` and every live process below it (Moorage's etcd and API workers included)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def role_of(pid: int, root: int) -> str:
    """What a process of a server's tree is: the root process (Moorage's replica process,
    which serves the API itself with one worker; Distribution's only process), etcd, or a
    forked API worker (`--workers N`)."""
    if pid == root:
        return "main"
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return "other"
    return "etcd" if argv0.endswith(b"etcd") else "API workers"


def _hwm_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


@dataclass
class Server:
    """One server process tree under test."""

    name: str
    url: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    authorization: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    peak_rss: int = 0
    # the peak of each kind of process (role_of; API workers summed), sampled with peak_rss
    peak_by_role: dict[str, int] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)
    verify: ssl.SSLContext | bool = True
    # An HTTPS server whose CA appears once it runs (Moorage's cluster CA, D/tls/ca.crt):
    # verified against this file as soon as it exists.
    ca_file: Path | None = None

    @property
    def tls(self) -> bool:
        return self.url.startswith("https://")

    def start(self) -> None:
        with self.log_path.open("wb") as log:  # closed here even when the binary is missing
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 90.0) -> None:
        headers = {"Authorization": self.authorization} if self.authorization else {}
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.log_tail()}")
            if self.ca_file is not None and self.verify is True:
                if not self.ca_file.exists():
                    time.sleep(0.2)
                    continue
                self.verify = client_context([self.ca_file])
            try:
                status = httpx.get(
                    f"{self.url}/v2/", headers=headers, timeout=2, verify=self.verify
                ).status_code
                if status == 200:
                    self.pids = descendants(self.root_pid)
                    return
                last = f"HTTP {status}"
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise RuntimeError(
            f"{self.name} not ready after {timeout:.0f} s ({last}):\n{self.log_tail()}"
        )

    @property
    def root_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def tree(self) -> list[int]:
        return descendants(self.root_pid) if self.proc is not None else []

    def rss(self) -> int:
        return sum(_rss_bytes(pid) for pid in self.tree())

    def rss_by_role(self) -> dict[str, int]:
        out: dict[str, int] = {}
        root = self.root_pid
        for pid in self.tree():
            role = role_of(pid, root)
            out[role] = out.get(role, 0) + _rss_bytes(pid)
        return out

    def sample_rss(self) -> None:
        """Record one sample in peak_rss and peak_by_role."""
        by_role = self.rss_by_role()
        self.peak_rss = max(self.peak_rss, sum(by_role.values()))
        for role, value in by_role.items():
            self.peak_by_role[role] = max(self.peak_by_role.get(role, 0), value)

    def hwm_sum(self) -> int:
        return sum(_hwm_bytes(pid) for pid in self.tree())

    def cpu_seconds(self) -> float:
        return sum(_cpu_seconds(pid) for pid in self.tree())

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the root pid; SIGKILL to the pids of its tree if it does not exit."""
        if self.proc is None or self.proc.poll() is not None:
            return
        tree = self.tree()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"{self.name} ignored SIGTERM for {timeout:.0f} s; killing", file=sys.stderr)
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.wait()
        for pid in tree:  # children that outlived the parent (etcd runs in its own session)
            deadline = time.monotonic() + 10
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def client_context(ca_files: list[Path]) -> ssl.SSLContext:
    """Verifies servers against `ca_files` only; TLS 1.2 floor as the servers'."""
    ctx = ssl.create_default_context(cafile=str(ca_files[0]))
    for extra in ca_files[1:]:
        ctx.load_verify_locations(cafile=str(extra))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


@dataclass(frozen=True)
class BenchPki:
    """HTTPS runs: Distribution's certificate (127.0.0.1) from a bench CA. Moorage serves its
    own cluster certificate (`run --tls` makes the cluster CA), trusted as a client would
    trust it: its `D/tls/ca.crt`, what `moorage ca export` prints."""

    ca_file: Path
    cert: Path  # Distribution's
    key: Path

    @classmethod
    def make(cls, tmp: Path) -> BenchPki:
        from moorage.pki import create_ca, issue_replica
        from moorage.pki.ca import cert_pem, key_pem

        ca = create_ca("bench")
        dkey, dcert = issue_replica(ca, "distribution", ["127.0.0.1"])
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "bench-ca.crt").write_bytes(cert_pem(ca.cert))
        (tmp / "distribution.crt").write_bytes(cert_pem(dcert))
        (tmp / "distribution.key").write_bytes(key_pem(dkey))
        return cls(tmp / "bench-ca.crt", tmp / "distribution.crt", tmp / "distribution.key")


def moorage(tmp: Path, workers: int | None, tls: bool = False, name: str = "Moorage") -> Server:
    """One replica (`moorage run`) in `tmp/<name>`; with `tls`, HTTPS on loopback (`--tls`)."""
    data_dir = tmp / name.lower().replace(" ", "-")
    port, client_port, peer_port = free_port(), free_port(), free_port()
    argv = [
        *moorage_cmd("run"),
        "--data-dir",
        str(data_dir),
        "--http-addr",
        f"127.0.0.1:{port}",
        "--etcd-client-port",
        str(client_port),
        "--etcd-peer-port",
        str(peer_port),
    ]
    if workers is not None:
        argv += ["--workers", str(workers)]
    if tls:
        argv.append("--tls")
    token = base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
    env = {"MOORAGE_ADMIN_PASSWORD": ADMIN_PASSWORD, "MOORAGE_LOG_LEVEL": "WARNING"}
    env["MOORAGE_TOKEN_TTL"] = "3600"  # `--auth token`: one token outlives any one metric
    env.update({k: v for k, v in os.environ.items() if k.startswith("MOORAGE_")})
    env["MOORAGE_ADMIN_PASSWORD"] = ADMIN_PASSWORD
    return Server(
        name=name,
        url=f"{'https' if tls else 'http'}://127.0.0.1:{port}",
        argv=argv,
        log_path=tmp / f"{data_dir.name}.log",
        env=env,
        authorization=f"Basic {token}",
        ca_file=data_dir / "tls" / "ca.crt" if tls else None,
    )


def bearer_token(server: Server, scopes: list[str]) -> str:
    """A token from Moorage's /auth/token for `scopes` (with its Basic credentials)."""
    headers = {"Authorization": server.authorization} if server.authorization else {}
    resp = httpx.get(
        f"{server.url}/auth/token",
        params={"scope": scopes},
        headers=headers,
        timeout=30,
        verify=server.verify,
    )
    resp.raise_for_status()
    return str(resp.json()["token"])


DISTRIBUTION_CONFIG = """\
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  headers:
    X-Content-Type-Options: [nosniff]
"""


def distribution(tmp: Path, pki: BenchPki | None = None, name: str = "Distribution") -> Server:
    """Distribution in `tmp/<name>`; with `pki`, HTTPS (http.tls) with the bench CA's cert."""
    port = free_port()
    slug = name.lower().replace(" ", "-")
    config = tmp / f"{slug}.yml"
    text = DISTRIBUTION_CONFIG.format(root=tmp / slug, port=port)
    if pki is not None:  # TLS 1.2 floor as Moorage's
        text += f"  tls:\n    certificate: {pki.cert}\n    key: {pki.key}\n    minimumtls: tls1.2\n"
    config.write_text(text)
    return Server(
        name=name,
        url=f"{'https' if pki else 'http'}://127.0.0.1:{port}",
        argv=[DISTRIBUTION_BINARY, "serve", str(config)],
        log_path=tmp / f"{slug}.log",
        verify=client_context([pki.ca_file]) if pki else True,
    )


def sink(tmp: Path) -> Server:
    port = free_port()
    return Server(
        name="sink",
        url=f"http://127.0.0.1:{port}",
        argv=[sys.executable, "-m", "bench.sink", str(port)],
        log_path=tmp / "sink.log",
        env={"PYTHONPATH": str(REPO_ROOT)},
    )


class RssSampler(threading.Thread):
    """Samples the RSS of each server's process tree every `interval` seconds: the peak of
    the sum and the peak of each kind of process."""

    def __init__(self, servers: list[Server], interval: float = 0.1) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.servers = servers
        self.interval = interval
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        for server in self.servers:
            if server.proc is not None and server.proc.poll() is None:
                server.sample_rss()

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        self.sample()
