"""Network cuts with Linux network namespaces (needs root and iproute2's `ip`).

A `NetLab` makes a bridge in the root namespace (10.77.K.1/24, K picked unused) and one
network namespace per replica, each attached to the bridge by a veth pair: the replica side
is `eth0` at 10.77.K.(10+i) inside namespace i, the root side is a port of the bridge. The
replicas of different namespaces reach each other over the bridge, and the root namespace
(the test, its clients and the CLI) reaches them all at their 10.77.K.x addresses. Nothing
global is changed: no sysctl, no firewall rule.

A cut takes the bridge port of a namespace down: its packets, and every packet to it, are
dropped silently (like a pulled cable, not a refused connection), so it reaches neither its
peers nor clients, while it still reaches itself (its loopback and its own address). A heal
brings the port back up.

`close()` kills every process left in the namespaces by pid, then deletes the namespaces,
the veth pairs and the bridge; it is safe to call twice and after a failed setup.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"


class NetnsError(RuntimeError):
    """The network namespaces could not be set up (not root, no `ip`, ...)."""


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` command is missing: install iproute2"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed: {out.stderr.strip()}")
    return out


@dataclass(frozen=True)
class Slot:
    """One replica's place: its namespace, its address, the bridge port that cuts it."""

    index: int
    netns: str
    host: str
    port_link: str  # the root-side end of the veth pair, a port of the bridge

    def prefix(self) -> list[str]:
        """Command prefix that runs a program inside this namespace."""
        return ["ip", "netns", "exec", self.netns]


def run_in_netns(netns: str, fn: Callable[[], T]) -> T:
    """Run `fn` in a new thread that has entered `netns` (sockets it opens live there)."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


class NetLab:
    """A bridge and one network namespace per replica; see the module docstring."""

    def __init__(self) -> None:
        reason = netns_unavailable()
        if reason is not None:
            raise NetnsError(reason)
        self.tag = secrets.token_hex(3)[:5]
        self.bridge = f"mrb{self.tag}"
        self.subnet = self._free_subnet()
        self.gateway = f"10.77.{self.subnet}.1"
        self.slots: list[Slot] = []
        self.cut_slots: set[int] = set()
        self._closed = False
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _free_subnet() -> int:
        used = set(int(m) for m in re.findall(r"\b10\.77\.(\d+)\.", _ip("-4", "-o", "addr").stdout))
        free = [k for k in range(1, 255) if k not in used]
        if not free:
            raise NetnsError("no free 10.77.K.0/24 subnet")
        return free[secrets.randbelow(len(free))]

    def add(self) -> Slot:
        """A new namespace attached to the bridge."""
        i = len(self.slots)
        if i > 200:
            raise NetnsError("too many namespaces")
        slot = Slot(
            i, f"moorage-{self.tag}-{i}", f"10.77.{self.subnet}.{10 + i}", f"mrv{self.tag}{i}"
        )
        self.slots.append(slot)  # recorded first, so close() removes a half-made one
        _ip("netns", "add", slot.netns)
        _ip("-n", slot.netns, "link", "set", "lo", "up")
        veth = ["type", "veth", "peer", "name", "eth0", "netns", slot.netns]
        _ip("link", "add", slot.port_link, *veth)
        _ip("-n", slot.netns, "addr", "add", f"{slot.host}/24", "dev", "eth0")
        _ip("-n", slot.netns, "link", "set", "eth0", "up")
        _ip("link", "set", slot.port_link, "master", self.bridge)
        _ip("link", "set", slot.port_link, "up")
        self._check_reachable(slot)
        return slot

    def _check_reachable(self, slot: Slot, timeout: float = 10.0) -> None:
        """A TCP round trip from the root namespace into the new namespace."""
        server = run_in_netns(slot.netns, lambda: _listen(slot.host))
        try:
            port = server.getsockname()[1]
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with socket.create_connection((slot.host, port), timeout=1):
                        return
                except OSError as exc:
                    if time.monotonic() > deadline:
                        raise NetnsError(
                            f"cannot reach {slot.host} in namespace {slot.netns} over bridge "
                            f"{self.bridge}: {exc} (is bridged traffic filtered? see "
                            "net.bridge.bridge-nf-call-iptables and the FORWARD chain)"
                        ) from None
                    time.sleep(0.2)
        finally:
            server.close()

    def cut(self, slot: Slot) -> None:
        """Drop every packet to and from the namespace (its bridge port goes down)."""
        _ip("link", "set", slot.port_link, "down")
        self.cut_slots.add(slot.index)

    def heal(self, slot: Slot) -> None:
        _ip("link", "set", slot.port_link, "up")
        self.cut_slots.discard(slot.index)

    def pids(self, slot: Slot) -> list[int]:
        out = _ip("netns", "pids", slot.netns, check=False)
        return [int(p) for p in out.stdout.split() if p.isdigit()]

    def kill_all(self, slot: Slot, timeout: float = 10.0) -> None:
        """SIGKILL every process inside the namespace, by pid, and wait until they are gone."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids(slot)
            if not pids or time.monotonic() > deadline:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def close(self) -> None:
        """Kill what runs in the namespaces, delete namespaces, veth pairs and the bridge."""
        if self._closed:
            return
        self._closed = True
        for slot in self.slots:
            if os.path.exists(os.path.join(NETNS_DIR, slot.netns)):
                self.kill_all(slot)
            _ip("link", "del", slot.port_link, check=False)
            _ip("netns", "del", slot.netns, check=False)
        _ip("link", "del", self.bridge, check=False)

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _listen(host: str) -> socket.socket:
    s = socket.socket()
    s.bind((host, 0))
    s.listen(1)
    return s
