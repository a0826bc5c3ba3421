"""etcd with mutual TLS, always, on a real 3-replica Moorage cluster (issue 12 items 1, 2, 6):
nothing without a certificate of the cluster's own CA reads or writes any member, or joins
the raft group; joins get their certificate through the cluster from a CSR; `D/tls/` holds
what it should with the right modes; the CA key is stored in etcd only sealed.

The etcdctl and peer mechanics are tests/test_pki_etcd.py's (measured there on a bare etcd)."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from moorage.config import DataDir, ReplicaConfig
from moorage.meta import keys
from moorage.pki import ca as pki
from moorage.pki.files import TlsDir
from tests.cluster import AUTH, Cluster, Node, cluster_of, free_port, moorage
from tests.test_pki_etcd import Member, etcdctl, issue, wait_until


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster_of(3, tmp_path_factory.mktemp("etcdtls")) as c:
        yield c


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> TlsDir:
    """A certificate of ANOTHER CA, with the names a replica's has (127.0.0.1)."""
    return issue(pki.create_ca("someone-else"), tmp_path_factory.mktemp("foreign"), "intruder")


def tls_of(node: Node) -> TlsDir:
    return TlsDir(node.data_dir)


def client_url(node: Node) -> str:
    return f"https://127.0.0.1:{node.etcd_client_port}"


def test_no_member_answers_without_a_cluster_certificate(three: Cluster, foreign: TlsDir) -> None:
    first = three.nodes[0]
    mine = tls_of(first)
    assert etcdctl(client_url(first), "put", "/tls-probe", "v1", tls=mine).returncode == 0
    attempts: dict[str, dict[str, Any]] = {
        "no certificate (trusting the cluster CA)": {"ca": mine.ca_cert},
        "a certificate of another CA": {"tls": foreign},
    }
    # Every refused call waits out etcdctl's 5 s command timeout: all of them run at once
    # (each its own etcdctl process), then the same checks are made on each outcome.
    calls: dict[tuple[str, str, str], Callable[[], subprocess.CompletedProcess[str]]] = {}
    for node in three.nodes:
        url = client_url(node)
        for label, kwargs in attempts.items():
            calls[node.name, label, "read"] = partial(
                etcdctl, url, "get", "/moorage/", "--prefix", **kwargs
            )
            calls[node.name, label, "write"] = partial(
                etcdctl, url, "put", "/tls-probe", "evil", **kwargs
            )
        calls[node.name, "plain", "write"] = partial(
            etcdctl, f"http://127.0.0.1:{node.etcd_client_port}", "put", "/tls-probe", "evil"
        )
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = {key: pool.submit(call) for key, call in calls.items()}
        out = {key: future.result() for key, future in futures.items()}
    for node in three.nodes:
        url = client_url(node)
        for label in attempts:
            read = out[node.name, label, "read"]
            assert read.returncode != 0, (node, label)
            assert "/moorage/" not in read.stdout, (node, label)
            write = out[node.name, label, "write"]
            assert write.returncode != 0, (node, label)
        plain = out[node.name, "plain", "write"]
        assert plain.returncode != 0, node
        # Each member's own certificate works on every member (the cluster CA, 127.0.0.1).
        got = etcdctl(url, "get", "/tls-probe", "--print-value-only", tls=tls_of(node))
        assert got.stdout == "v1\n", (node, got.stderr)


def _members(node: Node) -> list[dict[str, object]]:
    out = etcdctl(client_url(node), "member", "list", "-w", "json", tls=tls_of(node))
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout)["members"])


def test_a_peer_without_a_cluster_certificate_cannot_join(
    three: Cluster, foreign: TlsDir, tmp_path: Path
) -> None:
    """Added as a learner (so the quorum never depends on it), the intruder's etcd is refused
    by the members' peer listeners and never becomes a started member."""
    first = three.nodes[0]
    intruder = Member("intruder", tmp_path / "intruder", foreign)
    added = etcdctl(
        client_url(first), "member", "add", "intruder", "--learner",
        "--peer-urls", intruder.peer_url, "-w", "json", tls=tls_of(first),
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    intruder_id = format(json.loads(added.stdout)["member"]["ID"], "x")
    peers = ",".join(
        f"{m['name']}={m['peerURLs'][0]}"  # type: ignore[index]
        for m in _members(first)
        if m.get("name")
    )
    logs = [n.data_dir / "logs" / "etcd.log" for n in three.nodes]
    marks = {log: log.stat().st_size for log in logs}

    def rejected() -> bool:
        for log, mark in marks.items():
            with open(log, "rb") as fh:
                fh.seek(mark)
                if b"rejected connection" in fh.read():
                    return True
        return False

    intruder.start(f"{peers},intruder={intruder.peer_url}", state="existing")
    try:
        wait_until("a member rejecting the intruder's handshake", rejected)
        assert intruder.proc is not None
        intruder.proc.wait(60)
        assert intruder.proc.returncode != 0
        entry = next(m for m in _members(first) if format(m["ID"], "x") == intruder_id)
        assert not entry.get("name")  # never started as a member
    finally:
        intruder.stop()
        wait_until(
            "the intruder's learner removed",
            lambda: (
                etcdctl(
                    client_url(first), "member", "remove", intruder_id, tls=tls_of(first)
                ).returncode
                == 0
            ),
        )


def _sealed_ca_key(node: Node) -> bytes:
    got = etcdctl(client_url(node), "get", keys.PKI_CA_KEY.decode(), "-w", "json", tls=tls_of(node))
    assert got.returncode == 0, got.stderr
    return base64.b64decode(json.loads(got.stdout)["kvs"][0]["value"])


def test_every_replica_holds_its_own_certificate_of_the_one_cluster_ca(three: Cluster) -> None:
    cas = set()
    for node in three.nodes:
        tls = tls_of(node)
        assert stat.S_IMODE(tls.path.stat().st_mode) == 0o700
        for private in (tls.key, tls.secret):
            assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
        assert not (tls.path / "ca.key.pending").exists()  # stored in etcd on first start
        cert, ca = tls.read_cert(), tls.read_ca()
        assert pki.issued_by(cert, ca)
        assert cert.public_key().public_numbers() == tls.read_key().public_key().public_numbers()  # type: ignore[union-attr]
        summary = pki.summary(cert)
        assert {"127.0.0.1", pki.CLUSTER_SAN} <= set(summary.sans), summary.sans
        assert summary.subject.endswith(node.replica_id)
        cas.add(pki.fingerprint(ca))
    assert len(cas) == 1
    secrets = {tls_of(n).read_secret() for n in three.nodes}
    assert len(secrets) == 1  # handed to each joiner with its certificate
    # The CA key is in etcd only sealed: it opens with the replicas' secret, and nothing
    # under /moorage-pki/ is a plain private key.
    first = three.nodes[0]
    sealed = _sealed_ca_key(first)
    assert b"PRIVATE KEY" not in sealed
    authority = pki.unseal_ca_key(sealed, secrets.pop(), tls_of(first).read_ca())
    assert authority.fingerprint in cas


def test_join_refuses_a_csr_for_other_names_before_changing_anything(three: Cluster) -> None:
    first = three.nodes[0]
    before = len(_members(first))
    key = pki.generate_key()
    replica_id = "abcdef012345"
    body = {
        "replica_id": replica_id,
        "peer_url": f"https://127.0.0.1:{free_port()}",
        "http_addr": f"127.0.0.1:{free_port()}",
        "csr": pki.csr_pem(pki.make_csr(key, replica_id, ["127.0.0.1", "10.9.9.9"])).decode(),
    }
    with httpx.Client(base_url=first.url, auth=AUTH, timeout=30) as c:
        r = c.post("/api/v0/cluster/join", json=body)
        assert r.status_code == 400, r.text
        assert "10.9.9.9" in r.json()["error"]
        for missing in ("csr", "http_addr"):
            r = c.post("/api/v0/cluster/join", json={k: v for k, v in body.items() if k != missing})
            assert r.status_code == 400, (missing, r.text)
        r = c.post("/api/v0/cluster/join", json={**body, "peer_url": "http://127.0.0.1:9"})
        assert r.status_code == 400, r.text
        assert "https://" in r.json()["error"]
    assert len(_members(first)) == before


def test_a_data_directory_made_before_tls_is_refused_with_what_to_do(tmp_path: Path) -> None:
    d = DataDir(tmp_path / "old")
    d.make_dirs()
    config = ReplicaConfig(
        data_dir=str(d.path),
        cluster_id="c" * 32,
        replica_id="0123456789ab",
        http_addr=f"127.0.0.1:{free_port()}",
        storage=str(tmp_path / "blobs"),
        etcd_client_port=free_port(),
        etcd_peer_port=free_port(),
    )
    d.save(config)
    out = moorage("start", "--data-dir", str(d.path), check=False)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "without etcd TLS" in text, text
    assert "moorage backup" in text, text
    assert "moorage restore" in text, text
    assert not d.etcd_dir.exists()  # etcd never started on it


def test_restore_makes_a_new_ca_and_stores_it_sealed(tmp_path: Path) -> None:
    """A restore is a new cluster: a new CA and secret (the backup holds neither), stored in
    the restored etcd on its first start, the old cluster's certificates refused by it."""
    cluster = Cluster(tmp_path)
    try:
        old = cluster.install()
        archive = tmp_path / "b.tar"
        moorage("backup", "--existing", old.url, "--out", str(archive), "--json")
        held = archive.read_bytes()  # an uncompressed tar: its records are readable text
        assert b"password_hash" in held
        assert b"moorage-pki" not in held
        assert b"ca.key" not in held
        moorage("stop", "--data-dir", str(old.data_dir))
        restored = Node(tmp_path, "restored")
        cluster.nodes.append(restored)
        moorage(
            "restore", "--yes", "--in", str(archive), *restored.flags(),
            "--storage", str(cluster.storage), "--json",
        )  # fmt: skip
        new_tls = tls_of(restored)
        assert pki.fingerprint(new_tls.read_ca()) != pki.fingerprint(tls_of(old).read_ca())
        assert not (new_tls.path / "ca.key.pending").exists()
        authority = pki.unseal_ca_key(
            _sealed_ca_key(restored), new_tls.read_secret(), new_tls.read_ca()
        )
        assert pki.issued_by(new_tls.read_cert(), authority.cert)
        refused = etcdctl(client_url(restored), "get", "/moorage/", "--prefix", tls=tls_of(old))
        assert refused.returncode != 0
    finally:
        cluster.shutdown()
