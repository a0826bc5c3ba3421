"""Processes of the harness: free ports, the `moorage` command, pid files, signals, logs."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ADMIN_PASSWORD = "harness-admin-password"
AUTH = ("admin", ADMIN_PASSWORD)
# `moorage status` exits by scenario: 0 healthy, 10-13 the failure scenarios.
STATUS_EXIT_CODES = {
    "healthy": 0,
    "replicas-unhealthy": 10,
    "quorum-lost": 11,
    "unreachable": 12,
    "all-lost": 13,
    "starting": 14,
}


#: Added to the environment of every process the harness starts (`cli_env`, `Replica.start`).
#: tests/conftest.py puts MOORAGE_TEST_CHEAP_PASSWORDS=1 here (moorage.auth.passwords: argon2
#: at its minimum cost); the benchmarks and `make chaos` leave it empty and log in for real.
EXTRA_ENV: dict[str, str] = {}


class CommandFailed(AssertionError):
    """A `moorage` command exited with an error."""


#: The ports free_port() hands out: below the kernel's ephemeral range (32768-60999 on
#: Linux), so no outgoing connection takes one between free_port() and the server's bind, in
#: one slice per pytest-xdist worker (PYTEST_XDIST_WORKER=gwN), so two workers never hand out
#: the same port. A process starts at an offset of its pid in its slice (a harness process a
#: test starts inherits the test's worker) and walks the slice in order.
PORT_BASE = 10000
PORT_SLICE = 5000
_next_port: int | None = None


def _port_slice() -> tuple[int, int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    low = PORT_BASE + (index % 4) * PORT_SLICE
    return low, low + PORT_SLICE


def free_port() -> int:
    """A port of this process's slice that nothing listens on or was handed out lately."""
    global _next_port
    low, high = _port_slice()
    if _next_port is None or not low <= _next_port < high:
        _next_port = low + (os.getpid() * 7919) % PORT_SLICE
    for _ in range(PORT_SLICE):
        port = _next_port
        _next_port = low if port + 1 >= high else port + 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{high - 1}")


def python() -> str:
    """The repository's virtualenv interpreter when there is one (it has moorage installed)."""
    venv = REPO_ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def moorage_cmd(*args: str) -> list[str]:
    return [python(), "-m", "moorage", *args]


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a `moorage` command: the admin password in MOORAGE_PASSWORD."""
    env = dict(os.environ, MOORAGE_PASSWORD=ADMIN_PASSWORD)
    # `moorage` on PATH as `make install` puts it: status prints commands as `moorage ...`.
    env["PATH"] = f"{Path(python()).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MOORAGE_ADMIN_PASSWORD", None)
    env.update(EXTRA_ENV)
    env.update(extra or {})
    return env


def moorage(
    *args: str,
    check: bool = True,
    timeout: float = 300,
    prefix: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `moorage ARGS` (after `prefix`, e.g. `ip netns exec NS`); raise when it fails."""
    out = subprocess.run(
        [*prefix, *moorage_cmd(*args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(env),
        check=False,
    )
    if check and out.returncode != 0:
        raise CommandFailed(
            f"moorage {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
        )
    return out


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def pid_files(data_dir: Path) -> dict[str, int]:
    """The replica's `run/*.pid` files by name (`moorage`, `etcd`, ...), the supervisor first."""
    files = sorted((data_dir / "run").glob("*.pid"), key=lambda f: (f.stem != "moorage", f.name))
    out: dict[str, int] = {}
    for f in files:
        with contextlib.suppress(ValueError, OSError):
            out[f.stem] = int(f.read_text())
    return out


def signal_pids(pids: Sequence[int], sig: signal.Signals) -> int:
    """Send `sig` to each live pid in order; how many were signalled."""
    sent = 0
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                sent += 1
    return sent


def log_tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""
