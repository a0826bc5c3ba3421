"""pki/ against a real etcd: mutual TLS on the client and peer planes with the cluster's
certificates (issue 12). These tests start bare etcd members themselves and prove the building
blocks: the flags, the aetcd connection, refusals of clients and peers without a cluster
certificate. tests/test_etcd_tls.py checks the same on a real Moorage cluster, reusing the
etcdctl and peer helpers here."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aetcd
import grpc
import pytest
from aetcd import rpc
from harness.process import free_port

from moorage.pki import ca as pki
from moorage.pki.files import TlsDir

ETCD = "etcd"
ETCDCTL = "etcdctl"


def issue(authority: pki.CertificateAuthority, root: Path, name: str) -> TlsDir:
    tls = TlsDir(root)
    key = pki.generate_key()  # on "the replica's host": only the CSR goes to the CA
    csr = pki.load_csr(pki.csr_pem(pki.make_csr(key, name, ["127.0.0.1", "localhost"])))
    tls.write_key(key)
    tls.write_cert(pki.sign_csr(authority, csr, name, ["127.0.0.1", "localhost"]))
    tls.write_ca(authority.cert)
    return tls


@dataclass
class Member:
    name: str
    root: Path
    tls: TlsDir | None
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.peer_port}"

    @property
    def log(self) -> Path:
        return self.root / "etcd.log"

    def start(self, initial_cluster: str | None = None, state: str = "new") -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [
            ETCD, "--name", self.name, "--data-dir", str(self.root / "etcd"),
            "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", initial_cluster or f"{self.name}={self.peer_url}",
            "--initial-cluster-state", state, "--initial-cluster-token", "pki-test",
            "--logger", "zap",
        ]  # fmt: skip
        if self.tls is not None:
            cmd += self.tls.etcd_args()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def etcdctl(
    endpoint: str, *args: str, tls: TlsDir | None = None, ca: Path | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [ETCDCTL, "--endpoints", endpoint, "--dial-timeout", "3s", "--command-timeout", "5s"]
    if ca is not None:
        cmd += ["--cacert", str(ca)]
    if tls is not None:
        cmd += ["--cacert", str(tls.ca_cert), "--cert", str(tls.cert), "--key", str(tls.key)]
    env = {**os.environ, "ETCDCTL_API": "3"}
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=30, env=env)


def wait_until(what: str, check: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def healthy(member: Member, tls: TlsDir | None) -> bool:
    return etcdctl(member.client_url, "endpoint", "health", tls=tls).returncode == 0


@pytest.fixture(scope="module")
def authority() -> pki.CertificateAuthority:
    return pki.create_ca("pki-test")


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> TlsDir:
    """A certificate with the same names, from ANOTHER CA."""
    other = pki.create_ca("someone-else")
    return issue(other, tmp_path_factory.mktemp("foreign"), "m1")


@pytest.fixture(scope="module")
def first(
    tmp_path_factory: pytest.TempPathFactory, authority: pki.CertificateAuthority
) -> Iterator[Member]:
    root = tmp_path_factory.mktemp("m1")
    member = Member("m1", root, issue(authority, root, "m1"))
    member.start()
    try:
        wait_until("etcd m1 healthy", lambda: healthy(member, member.tls))
        yield member
    finally:
        member.stop()


class TlsClient(aetcd.Client):  # type: ignore[misc]
    """aetcd 1.0.0 has no TLS parameter: `connect` always opens `grpc.aio.insecure_channel`.
    This opens a secure channel that presents the replica's certificate, and sets up the
    same stubs aetcd does (Moorage's meta/etcd.py calls the stubs directly)."""

    def __init__(
        self, host: str, port: int, tls: TlsDir, options: dict[str, Any] | None = None
    ) -> None:
        super().__init__(host=host, port=port, options=options)
        ca, key, cert = tls.client_material()
        self._credentials = grpc.ssl_channel_credentials(ca, key, cert)

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        self.channel = grpc.aio.secure_channel(
            f"{self._host}:{self._port}", self._credentials, options=list(self._options.items())
        )
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = aetcd.client.watcher.Watcher(rpc.WatchStub(self.channel), timeout=None)
        self._connected.set()


def test_fingerprint_matches_openssl(authority: pki.CertificateAuthority, tmp_path: Path) -> None:
    pem = tmp_path / "ca.crt"
    pem.write_bytes(pki.cert_pem(authority.cert))
    der = subprocess.run(
        ["openssl", "x509", "-in", str(pem), "-outform", "DER"], capture_output=True, check=True
    ).stdout
    sha = subprocess.run(["sha256sum"], input=der, capture_output=True, check=True).stdout.split()[
        0
    ]
    assert pki.fingerprint(authority.cert) == "sha256:" + sha.decode()
    assert hashlib.sha256(der).hexdigest() == sha.decode()


def test_aetcd_with_the_replica_certificate_reads_and_writes(first: Member) -> None:
    assert first.tls is not None
    tls = first.tls

    async def scenario() -> tuple[bytes, bool]:
        client = TlsClient("127.0.0.1", first.client_port, tls)
        try:
            await client.put(b"pki/aetcd", b"over mTLS")
            got = await client.get(b"pki/aetcd")
            ok, _ = await client.transaction(
                compare=[client.transactions.value(b"pki/aetcd") == b"over mTLS"],
                success=[client.transactions.put(b"pki/txn", b"yes")],
                failure=[],
            )
            return bytes(got.value), bool(ok)
        finally:
            await client.close()

    assert asyncio.run(scenario()) == (b"over mTLS", True)
    assert etcdctl(first.client_url, "get", "pki/txn", "--print-value-only", tls=tls).stdout == (
        "yes\n"
    )


def test_multi_address_target_needs_the_cluster_name(first: Member) -> None:
    """meta/etcd.py dials every member through one `ipv4:a:p,b:p` target; over TLS gRPC checks
    the certificate against that target string unless told which name to expect."""
    assert first.tls is not None
    tls = first.tls
    target = f"ipv4:127.0.0.1:{first.client_port},127.0.0.1"  # two addresses (the same member)

    async def get(options: dict[str, Any] | None) -> bytes:
        client = TlsClient(target, first.client_port, tls, options)
        try:
            got = await client.get(b"pki/aetcd")
            return bytes(got.value)
        finally:
            await client.close()

    with pytest.raises(Exception, match=r"(?i)verification|handshake|certificate"):
        asyncio.run(get(None))
    override = {"grpc.ssl_target_name_override": pki.CLUSTER_SAN}
    assert asyncio.run(get(override)) == b"over mTLS"


def test_aetcd_without_a_certificate_is_refused(first: Member) -> None:
    async def plain() -> None:
        client = aetcd.Client(host="127.0.0.1", port=first.client_port, timeout=3)
        try:
            await client.put(b"pki/plain", b"no")
        finally:
            await client.close()

    with pytest.raises(Exception, match=r"(?i)unavailable|connect|closed|socket"):
        asyncio.run(plain())


def test_etcdctl_without_a_cluster_certificate_can_neither_read_nor_write(
    first: Member, foreign: TlsDir
) -> None:
    assert first.tls is not None
    assert etcdctl(first.client_url, "put", "pki/secret", "v1", tls=first.tls).returncode == 0
    attempts = {
        "no certificate (trusting the CA)": {"ca": first.tls.ca_cert},
        "another CA's certificate": {"tls": foreign},
    }
    # Each refused attempt lasts until etcdctl's dial timeout: run them side by side.
    with ThreadPoolExecutor(max_workers=5) as pool:
        tried = {
            label: (
                pool.submit(etcdctl, first.client_url, "get", "pki/secret", **kwargs),  # type: ignore[arg-type]
                pool.submit(etcdctl, first.client_url, "put", "pki/secret", "evil", **kwargs),  # type: ignore[arg-type]
            )
            for label, kwargs in attempts.items()
        }
        plain_try = pool.submit(
            etcdctl, f"http://127.0.0.1:{first.client_port}", "put", "pki/secret", "evil"
        )
        for label, (read_try, write_try) in tried.items():
            read = read_try.result()
            assert read.returncode != 0, label
            assert "v1" not in read.stdout, label
            write = write_try.result()
            assert write.returncode != 0, label
        plain = plain_try.result()
    assert plain.returncode != 0
    after = etcdctl(first.client_url, "get", "pki/secret", "--print-value-only", tls=first.tls)
    assert after.stdout == "v1\n"


def test_health_check_over_https_with_the_client_context(first: Member) -> None:
    """What cluster/etcd_process.py's etcd_health must become: urllib with the cluster context."""
    assert first.tls is not None
    url = f"{first.client_url}/health"
    with urllib.request.urlopen(url, timeout=10, context=first.tls.client_context()) as resp:
        assert json.loads(resp.read())["health"] == "true"
    no_cert = ssl.create_default_context(cafile=str(first.tls.ca_cert))
    with pytest.raises(OSError, match=r"(?i)certificate|handshake|EOF|reset"):
        urllib.request.urlopen(url, timeout=10, context=no_cert).read()


def test_tls_floor_is_1_2(first: Member) -> None:
    """etcd 3.4 has no --tls-min-version; the cipher-suite list is the floor (see files.py)."""
    assert first.tls is not None

    def handshake(version: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["openssl", "s_client", version, "-cipher", "DEFAULT:@SECLEVEL=0",
             "-connect", f"127.0.0.1:{first.client_port}",
             "-cert", str(first.tls.cert), "-key", str(first.tls.key)],  # type: ignore[union-attr]
            input="", capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    assert "TLSv1.2" in handshake("-tls1_2").stdout
    old = handshake("-tls1_1")
    assert old.returncode != 0
    assert "alert protocol version" in old.stderr
    assert "Cipher is (NONE)" in old.stdout


def members(first: Member) -> list[dict[str, Any]]:
    out = etcdctl(first.client_url, "member", "list", "-w", "json", tls=first.tls)
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout)["members"])


def add_learner(first: Member, joiner: Member) -> str:
    out = etcdctl(
        first.client_url, "member", "add", joiner.name, "--learner",
        "--peer-urls", joiner.peer_url, "-w", "json", tls=first.tls,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return format(json.loads(out.stdout)["member"]["ID"], "x")


def test_peer_from_another_ca_cannot_join_but_a_cluster_peer_can(
    first: Member,
    foreign: TlsDir,
    authority: pki.CertificateAuthority,
    tmp_path: Path,
) -> None:
    """Members are added as learners so that the refused one does not cost the quorum."""
    existing = f"{first.name}={first.peer_url}"
    intruder = Member("intruder", tmp_path / "intruder", foreign)
    intruder_id = add_learner(first, intruder)
    intruder.start(f"{existing},intruder={intruder.peer_url}", state="existing")
    try:
        wait_until(
            "m1 rejecting the intruder's handshake",
            lambda: b"rejected connection" in first.log.read_bytes(),
        )
        # It never becomes a started member (a started member has a name), and exits.
        assert intruder.proc is not None
        intruder.proc.wait(60)
        assert intruder.proc.returncode != 0
        entry = next(m for m in members(first) if format(m["ID"], "x") == intruder_id)
        assert not entry.get("name")
        assert "unknown authority" in intruder.log.read_text() or "bad certificate" in (
            intruder.log.read_text()
        )
    finally:
        intruder.stop()
    assert etcdctl(first.client_url, "member", "remove", intruder_id, tls=first.tls).returncode == 0

    root = tmp_path / "m2"
    friend = Member("m2", root, issue(authority, root, "m2"))
    friend_id = add_learner(first, friend)
    friend.start(f"{existing},m2={friend.peer_url}", state="existing")
    try:
        wait_until(
            "m2 started",
            lambda: any(
                m.get("name") == "m2" for m in members(first) if format(m["ID"], "x") == friend_id
            ),
        )
        wait_until(
            "m2 promoted",
            lambda: (
                etcdctl(first.client_url, "member", "promote", friend_id, tls=first.tls).returncode
                == 0
            ),
        )
        got = etcdctl(friend.client_url, "get", "pki/secret", "--print-value-only", tls=friend.tls)
        assert got.stdout == "v1\n"
        # etcd refuses to remove a voter until the rest has been connected for 5 s.
        wait_until(
            "m2 removed",
            lambda: (
                etcdctl(first.client_url, "member", "remove", friend_id, tls=first.tls).returncode
                == 0
            ),
        )
    finally:
        friend.stop()


def test_cluster_certificate_of_another_address_cannot_join_from_here(
    first: Member, authority: pki.CertificateAuthority, tmp_path: Path
) -> None:
    """etcd checks a peer's source address against its certificate's IP SANs: a stolen
    certificate only works from its own host, and a joiner's etcd host must be the address it
    dials from (multi-homed hosts: the route's source address)."""
    root = tmp_path / "elsewhere"
    tls = TlsDir(root)
    key, cert = pki.issue_replica(authority, "m3", ["10.9.9.9", "node-elsewhere"])
    tls.write_key(key)
    tls.write_cert(cert)
    tls.write_ca(authority.cert)
    stranger = Member("m3", root, tls)
    stranger_id = add_learner(first, stranger)
    stranger.start(f"{first.name}={first.peer_url},m3={stranger.peer_url}", state="existing")
    try:
        assert stranger.proc is not None
        stranger.proc.wait(60)
        assert stranger.proc.returncode != 0
        rejected = [
            line
            for line in first.log.read_text().splitlines()
            if "rejected connection" in line and "10.9.9.9" in line
        ]
        assert rejected
        assert '\\"127.0.0.1\\" does not match' in rejected[0]
        entry = next(m for m in members(first) if format(m["ID"], "x") == stranger_id)
        assert not entry.get("name")
    finally:
        stranger.stop()
    assert etcdctl(first.client_url, "member", "remove", stranger_id, tls=first.tls).returncode == 0
