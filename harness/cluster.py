"""A Moorage cluster built with the real commands (install, join, start, stop, ...).

Replicas run on loopback, or each in its own network namespace (`NetLab`) so that the
network between them can be cut. Every process is found by pid (the replica's
`D/run/*.pid` files and, with namespaces, `ip netns pids`) and stopped by pid.

With `tls` (always in namespaces, whose addresses are not loopback) the replicas serve HTTPS
with their cluster certificates, and every client trusts only the cluster CA as
`moorage ca export` writes it (`Cluster.ca_file`): the CLI through MOORAGE_CA_FILE, the HTTP
clients of `Node.client()` through `Node.verify()`.
"""

from __future__ import annotations

import contextlib
import json
import signal
import ssl
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from harness.netns import NetLab, Slot
from harness.process import (
    AUTH,
    STATUS_EXIT_CODES,
    CommandFailed,
    alive,
    free_port,
    log_tail,
    moorage,
    pid_files,
    signal_pids,
)


class Node:
    """One replica: its data directory, addresses and (optionally) network namespace."""

    def __init__(
        self,
        root: Path,
        name: str,
        slot: Slot | None = None,
        tls: bool = False,
        ca_file: Path | None = None,
    ) -> None:
        """`tls`: serve HTTPS (implied in a namespace); `ca_file`: the CA its clients trust."""
        self.name = name
        self.data_dir = root / name
        self.slot = slot
        self.host = slot.host if slot is not None else "127.0.0.1"
        self.tls = tls or slot is not None
        self.ca_file = ca_file if ca_file is not None else self.data_dir / "tls" / "ca.crt"
        self.port = free_port()
        self.etcd_client_port = free_port()
        self.etcd_peer_port = free_port()
        self.replica_id = ""

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def verify(self) -> ssl.SSLContext | bool:
        """What a client of this replica verifies its HTTPS with: only `ca_file`."""
        if not self.tls:
            return True
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def prefix(self) -> list[str]:
        return self.slot.prefix() if self.slot is not None else []

    def flags(self) -> list[str]:
        out = [
            "--data-dir", str(self.data_dir), "--http-addr", f"{self.host}:{self.port}",
            "--etcd-client-port", str(self.etcd_client_port),
            "--etcd-peer-port", str(self.etcd_peer_port),
        ]  # fmt: skip
        if self.slot is not None:
            # A non-loopback address serves HTTPS with the cluster certificate by default.
            out += ["--etcd-host", self.host]
        elif self.tls:
            out.append("--tls")
        return out

    def pids(self) -> list[int]:
        """The pids of the replica's `run/*.pid` files, the supervisor first."""
        return list(pid_files(self.data_dir).values())

    def signal(self, sig: signal.Signals) -> int:
        """Send `sig` to the replica's live processes; how many were signalled."""
        # The supervisor first: SIGKILLed after a worker, it could fork a replacement.
        return signal_pids(self.pids(), sig)

    def kill(self) -> int:
        """SIGKILL every process of the replica listed in its pid files; how many."""
        return self.signal(signal.SIGKILL)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.data_dir / "logs" / "moorage.log", lines)

    def client(self, timeout: float = 30) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=AUTH, timeout=timeout, verify=self.verify())

    def __repr__(self) -> str:
        return f"Node({self.name} {self.replica_id or '?'} {self.url})"


class Cluster:
    """Replicas under `root`, sharing the blob storage `root/blobs` (or the S3 prefix `s3`).

    `env` is added to every command's environment; `node_class` makes the nodes; `tls`
    (always with namespaces) makes them serve HTTPS, trusted through `ca_file`."""

    node_class: type[Node] = Node

    def __init__(
        self,
        root: Path,
        lab: NetLab | None = None,
        env: Mapping[str, str] | None = None,
        tls: bool = False,
        s3: str | None = None,
    ) -> None:
        """`s3`: blob storage in S3 (a `--storage s3://...` value; the credentials in `env`
        or this process's environment) instead of the directory `root/blobs`."""
        self.root = root
        self.storage = root / "blobs"  # the directory (unused with `s3`)
        self.s3 = s3
        #: What `install`, `join` and `restore` take as --storage.
        self.storage_arg = s3 if s3 is not None else str(self.storage)
        self.lab = lab
        self.tls = lab is not None or bool(tls)  # namespaces' addresses always serve HTTPS
        self.ca_file = root / "ca.crt"  # what `moorage ca export` wrote; clients trust only it
        self.ca_fingerprint = ""  # of the CA in ca_file
        self.env = dict(env or {})
        self.nodes: list[Node] = []
        self.retired: list[Node] = []  # replicas taken out (destroyed); still cleaned up
        self._names = 0

    # -- commands ---------------------------------------------------------------------------

    def cli(
        self, *args: str, node: Node | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run `moorage ARGS` (inside `node`'s namespace when it has one)."""
        prefix = node.prefix() if node else []
        return moorage(*args, check=check, timeout=timeout, prefix=prefix, env=self.env)

    def new_node(self) -> Node:
        slot = self.lab.add() if self.lab is not None else None
        node = self.node_class(self.root, f"r{self._names}", slot, self.tls, self.ca_file)
        self._names += 1
        return node

    def trust(self, node: Node) -> str:
        """Trust the CA of `node`'s cluster from now on (after install or restore): written
        to `ca_file` by `moorage ca export`, given to every later command as MOORAGE_CA_FILE.
        Its fingerprint."""
        self.root.mkdir(parents=True, exist_ok=True)
        out = self.cli(
            "ca", "export", "--data-dir", str(node.data_dir), "--out", str(self.ca_file), "--json"
        )
        self.env["MOORAGE_CA_FILE"] = str(self.ca_file)
        self.ca_fingerprint = str(json.loads(out.stdout)["fingerprint"])
        return self.ca_fingerprint

    def install(self) -> Node:
        node = self.new_node()
        doc = json.loads(
            self.cli(
                "install", *node.flags(), "--storage", self.storage_arg,
                "--admin-password", AUTH[1], "--json", node=node,
            ).stdout
        )  # fmt: skip
        node.replica_id = doc["replica_id"]
        self.nodes.append(node)
        if self.tls:
            self.trust(node)
        return node

    def join(self, via: Node | None = None, unsafe: bool = False, attempts: int = 3) -> Node:
        """Join a new replica through `via` (default: the first node); etcd refuses a member
        change for a few seconds after the previous one, so a refusal is retried."""
        node = self.new_node()
        errors: list[str] = []
        for _ in range(attempts):
            out = self.join_raw(node, via, unsafe)
            if out.returncode == 0:
                node.replica_id = json.loads(out.stdout)["replica_id"]
                self.nodes.append(node)
                return node
            errors.append(f"exit {out.returncode}: {out.stderr.strip()}")
            self.cli("destroy", "--yes", "--data-dir", str(node.data_dir), node=node, check=False)
            time.sleep(2)
        self.retired.append(node)
        raise CommandFailed(f"join of {node.name} failed:\n" + "\n".join(errors))

    def join_raw(
        self, node: Node, via: Node | None = None, unsafe: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """One `moorage join` of `node` through `via`, whatever its outcome."""
        via = via or self.nodes[0]
        extra = ["--unsafe-join"] if unsafe else []
        if self.s3 is not None:  # each host names the bucket (a filesystem join finds it)
            extra += ["--storage", self.s3]
        return self.cli(
            "join", "--existing", via.url, *node.flags(), "--json", *extra, node=node, check=False
        )

    def start(self, node: Node) -> None:
        self.cli("start", "--data-dir", str(node.data_dir), node=node)

    def stop(self, node: Node) -> None:
        node.signal(signal.SIGCONT)
        self.cli("stop", "--data-dir", str(node.data_dir), node=node, check=False, timeout=120)

    def kill(self, node: Node) -> None:
        """SIGKILL every process of the replica (supervisor, API workers, etcd)."""
        node.kill()
        if self.lab is not None and node.slot is not None:
            self.lab.kill_all(node.slot)

    def kill_and_wait(self, *nodes: Node, timeout: float = 10) -> None:
        """SIGKILL every process of `nodes` (a majority lost at once) and wait until none is
        left; TimeoutError if one outlives `timeout`."""
        pids = [pid for node in nodes for pid in node.pids()]
        for node in nodes:
            self.kill(node)
        if not wait_dead(pids, timeout):
            raise TimeoutError(f"processes {pids} of {nodes} outlived SIGKILL")

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
        """`moorage status --json` of `nodes` (default: all); its exit code must match the
        scenario it reports."""
        out = self.cli("status", "--existing", self.urls(nodes), "--json", timeout=120, check=False)
        if out.returncode not in STATUS_EXIT_CODES.values():
            raise CommandFailed(
                f"moorage status failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
            )
        doc: dict[str, Any] = json.loads(out.stdout)
        # A plain AssertionError, not CommandFailed: wait_status must not retry past it.
        assert out.returncode == STATUS_EXIT_CODES[doc["scenario"]], (out.returncode, doc)
        return doc

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
                if not self._not_yet(want, nodes or self.nodes):
                    doc = self.status(nodes)
                    if doc["scenario"] == want and (until is None or until(doc)):
                        return doc
            if time.monotonic() > deadline:
                raise AssertionError(f"status never became {want}: {json.dumps(doc, indent=1)}")
            time.sleep(0.5)

    def _not_yet(self, want: str, nodes: list[Node]) -> bool:
        """Whether `moorage status` of `nodes` would surely not report `want` yet: the first
        replica that answers (asked in order, as status asks them) reports another scenario.

        Its admin API's scenario is what status prints (status adds only local facts, with
        --data-dir). One request from this process instead of a `moorage status` process
        (~0.5 s of CPU) every half second of a wait; any other answer leaves it to status."""
        for node in nodes:
            try:
                resp = httpx.get(
                    f"{node.url}/api/v0/cluster/status", auth=AUTH, timeout=5, verify=node.verify()
                )
                scenario = resp.json().get("scenario") if resp.status_code == 200 else None
            except (httpx.HTTPError, ValueError, AttributeError):
                continue  # as status: the next replica
            if resp.status_code == 503:
                continue
            return scenario is not None and scenario != want
        return False

    def leader(self, nodes: list[Node] | None = None) -> Node:
        doc = self.status(nodes)
        rid = next(r["id"] for r in doc["replicas"] if r["leader"])
        return self.by_id(rid)

    def by_id(self, replica_id: str) -> Node:
        return next(n for n in self.nodes if n.replica_id == replica_id)

    # -- teardown ---------------------------------------------------------------------------

    def shutdown(self) -> None:
        """SIGKILL every replica by pid, then remove the namespaces (if any). Never raises.

        Teardown needs no graceful stop (the data is thrown away): one `moorage stop` per
        replica, run one after the other, cost a second or more each, for nothing."""
        nodes = [*self.nodes, *self.retired]
        pids: list[int] = []
        for node in nodes:
            with contextlib.suppress(Exception):
                if self.lab is not None and node.slot is not None:
                    self.lab.heal(node.slot)
                pids += node.pids()
            with contextlib.suppress(Exception):
                self.kill(node)
        wait_dead(pids, 10)
        if self.lab is not None:
            self.lab.close()


def wait_dead(pids: list[int], timeout: float) -> bool:
    """Whether every one of `pids` is gone within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
