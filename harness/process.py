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


class CommandFailed(AssertionError):
    """A `moorage` command exited with an error."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
