"""A Moorage cluster built with the real commands (install, join, start, stop, ...).

Replicas run on loopback, or each in its own network namespace (`NetLab`) so that the
network between them can be cut. Every process is found by pid (the replica's
`D/run/*.pid` files and, with namespaces, `ip netns pids`) and stopped by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from chaos.netns import NetLab, Slot

ADMIN_PASSWORD = "chaos-admin-password"
AUTH = ("admin", ADMIN_PASSWORD)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CommandFailed(AssertionError):
    """A `moorage` command exited with an error."""


class Node:
    """One replica: its data directory, addresses and (optionally) network namespace."""

    def __init__(self, root: Path, name: str, slot: Slot | None = None) -> None:
        self.name = name
        self.data_dir = root / name
        self.slot = slot
        self.host = slot.host if slot is not None else "127.0.0.1"
        self.port = free_port()
        self.etcd_client_port = free_port()
        self.etcd_peer_port = free_port()
        self.replica_id = ""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def prefix(self) -> list[str]:
        return self.slot.prefix() if self.slot is not None else []

    def flags(self) -> list[str]:
        out = [
            "--data-dir", str(self.data_dir), "--http-addr", f"{self.host}:{self.port}",
            "--etcd-client-port", str(self.etcd_client_port),
            "--etcd-peer-port", str(self.etcd_peer_port),
        ]  # fmt: skip
        if self.slot is not None:
            out += ["--etcd-host", self.host]
        return out

    def pids(self) -> list[int]:
        out = []
        for f in (self.data_dir / "run").glob("*.pid"):
            with contextlib.suppress(ValueError, OSError):
                out.append(int(f.read_text()))
        return out

    def signal(self, sig: signal.Signals) -> None:
        # The supervisor first: SIGKILLed after a worker, it could fork a replacement.
        pids = self.pids()
        supervisor = self.data_dir / "run" / "moorage.pid"
        with contextlib.suppress(ValueError, OSError):
            first = int(supervisor.read_text())
            pids.sort(key=lambda p: p != first)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def client(self, timeout: float = 30) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=AUTH, timeout=timeout)

    def __repr__(self) -> str:
        return f"Node({self.name} {self.replica_id or '?'} {self.url})"


class Cluster:
    """Replicas under `root`, sharing the blob storage `root/blobs`."""

    def __init__(self, root: Path, lab: NetLab | None = None) -> None:
        self.root = root
        self.storage = root / "blobs"
        self.lab = lab
        self.nodes: list[Node] = []
        self.retired: list[Node] = []  # replicas taken out (destroyed); still cleaned up
        self._names = 0

    # -- commands ---------------------------------------------------------------------------

    def cli(
        self, *args: str, node: Node | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run `moorage ARGS` (inside `node`'s namespace when it has one)."""
        env = dict(os.environ, MOORAGE_PASSWORD=ADMIN_PASSWORD)
        env.pop("MOORAGE_ADMIN_PASSWORD", None)
        cmd = [*(node.prefix() if node else []), sys.executable, "-m", "moorage", *args]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if check and out.returncode != 0:
            raise CommandFailed(
                f"moorage {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
            )
        return out

    def new_node(self) -> Node:
        slot = self.lab.add() if self.lab is not None else None
        node = Node(self.root, f"r{self._names}", slot)
        self._names += 1
        return node

    def install(self) -> Node:
        node = self.new_node()
        doc = json.loads(
            self.cli(
                "install", *node.flags(), "--storage", str(self.storage),
                "--admin-password", ADMIN_PASSWORD, "--json", node=node,
            ).stdout
        )  # fmt: skip
        node.replica_id = doc["replica_id"]
        self.nodes.append(node)
        return node

    def join(self, via: Node | None = None, attempts: int = 3) -> Node:
        """Join a new replica through `via` (default: the first node); etcd refuses a member
        change for a few seconds after the previous one, so a refusal is retried."""
        node = self.new_node()
        via = via or self.nodes[0]
        last = ""
        for _ in range(attempts):
            out = self.cli(
                "join", "--existing", via.url, *node.flags(), "--json", node=node, check=False
            )
            if out.returncode == 0:
                node.replica_id = json.loads(out.stdout)["replica_id"]
                self.nodes.append(node)
                return node
            last = out.stderr
            self.cli("destroy", "--yes", "--data-dir", str(node.data_dir), node=node, check=False)
            time.sleep(2)
        self.retired.append(node)
        raise CommandFailed(f"join of {node.name} failed: {last}")

    def start(self, node: Node) -> None:
        self.cli("start", "--data-dir", str(node.data_dir), node=node)

    def stop(self, node: Node) -> None:
        node.signal(signal.SIGCONT)
        self.cli("stop", "--data-dir", str(node.data_dir), node=node, check=False, timeout=120)

    def kill(self, node: Node) -> None:
        """SIGKILL every process of the replica (supervisor, API workers, etcd)."""
        node.signal(signal.SIGKILL)
        if self.lab is not None and node.slot is not None:
            self.lab.kill_all(node.slot)

    def destroy(self, node: Node) -> None:
        self.cli("destroy", "--yes", "--data-dir", str(node.data_dir), node=node, check=False)
        self.kill(node)
        if node in self.nodes:
            self.nodes.remove(node)
        self.retired.append(node)

    # -- status -----------------------------------------------------------------------------

    def urls(self, nodes: list[Node] | None = None) -> str:
        return ",".join(n.url for n in (nodes or self.nodes))

    def status(self, nodes: list[Node] | None = None) -> dict[str, Any]:
        out = self.cli("status", "--existing", self.urls(nodes), "--json", timeout=120, check=False)
        # status exits by scenario (0 healthy, 10-14); anything else is a failure.
        if out.returncode not in (0, 10, 11, 12, 13, 14):  # 14: starting
            raise CommandFailed(
                f"moorage status failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
            )
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def wait_status(
        self,
        want: str,
        nodes: list[Node] | None = None,
        timeout: float = 90,
        until: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """Poll status until its scenario is `want` (and `until(doc)` holds)."""
        deadline = time.monotonic() + timeout
        doc: dict[str, Any] = {}
        while True:
            with contextlib.suppress(CommandFailed, ValueError):
                doc = self.status(nodes)
                if doc["scenario"] == want and (until is None or until(doc)):
                    return doc
            if time.monotonic() > deadline:
                raise AssertionError(f"status never became {want}: {json.dumps(doc, indent=1)}")
            time.sleep(0.5)

    def leader(self, nodes: list[Node] | None = None) -> Node:
        doc = self.status(nodes)
        rid = next(r["id"] for r in doc["replicas"] if r["leader"])
        return self.by_id(rid)

    def by_id(self, replica_id: str) -> Node:
        return next(n for n in self.nodes if n.replica_id == replica_id)

    # -- teardown ---------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop every replica by pid, then remove the namespaces (if any). Never raises."""
        for node in [*self.nodes, *self.retired]:
            with contextlib.suppress(Exception):
                if self.lab is not None and node.slot is not None:
                    self.lab.heal(node.slot)
                node.signal(signal.SIGCONT)
                if (node.data_dir / "moorage.json").exists():
                    self.cli(
                        "stop", "--data-dir", str(node.data_dir), node=node, check=False,
                        timeout=60,
                    )  # fmt: skip
            node.signal(signal.SIGKILL)
        if self.lab is not None:
            self.lab.close()
