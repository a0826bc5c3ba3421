"""cluster/tls.py without processes: a new cluster's D/tls/, the CA stored sealed, a join's CSR
signed through the cluster (only for the join request's own hosts), the joiner's checks."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from moorage.cluster import tls as ctls
from moorage.cluster.replica_config import new_replica_config
from moorage.config import DataDir, ReplicaConfig
from moorage.errors import ConfigError, MoorageError
from moorage.meta import keys
from moorage.meta.etcd import TLS_SERVER_NAME
from moorage.meta.memory import MemoryMetaStore
from moorage.pki import ca as pki


def _config(
    root: Path, name: str, http: str = "127.0.0.1:5000", etcd: str = "127.0.0.1"
) -> ReplicaConfig:
    return new_replica_config(DataDir(root / name), http_addr=http, etcd_host=etcd)


def test_the_client_checks_members_against_the_name_every_certificate_carries() -> None:
    assert TLS_SERVER_NAME == pki.CLUSTER_SAN


def test_replica_hosts_name_http_etcd_and_loopback_once() -> None:
    assert ctls.replica_hosts("10.0.0.2", "10.0.0.2") == ["10.0.0.2", "127.0.0.1"]
    assert ctls.replica_hosts("0.0.0.0", "10.0.0.3") == ["10.0.0.3", "127.0.0.1"]
    assert ctls.replica_hosts("reg.example", "[fd00::1]") == ["reg.example", "fd00::1", "127.0.0.1"]


def test_new_cluster_then_a_join_signed_through_the_cluster(tmp_path: Path) -> None:
    first = _config(tmp_path, "r1", "10.0.0.1:5000", "10.0.0.1")
    fingerprint = ctls.create_cluster_tls(first)
    tls = ctls.tls_dir(first)
    assert stat.S_IMODE(tls.path.stat().st_mode) == 0o700
    pending = tls.path / ctls.PENDING_NAME
    for private in (tls.key, tls.secret, pending):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    assert pki.fingerprint(tls.read_ca()) == fingerprint
    assert set(pki.summary(tls.read_cert()).sans) == {"10.0.0.1", "127.0.0.1", pki.CLUSTER_SAN}
    store = MemoryMetaStore()

    async def scenario() -> None:
        assert await ctls.publish_ca(store, first)
        assert not pending.exists()
        assert not await ctls.publish_ca(store, first)  # once
        stored = await store.get_ca()
        assert stored is not None
        assert b"PRIVATE KEY" not in stored[1]
        assert not any(k.startswith(keys.ROOT) for k in (keys.PKI_CA_CERT, keys.PKI_CA_KEY))

        joiner = _config(tmp_path, "r2", "10.0.0.2:5000", "10.0.0.2")
        csr = ctls.new_csr(joiner)
        hosts = ctls.replica_hosts("10.0.0.2", "10.0.0.2")
        answer = await ctls.sign_join(store, first, joiner.replica_id, csr, hosts)
        assert answer["ca_fingerprint"] == fingerprint
        ctls.write_join_answer(joiner, answer)
        mine = ctls.tls_dir(joiner)
        assert mine.read_secret() == tls.read_secret()
        assert pki.issued_by(mine.read_cert(), tls.read_ca())
        assert set(pki.summary(mine.read_cert()).sans) == {*hosts, pki.CLUSTER_SAN}
        assert ctls.client_tls(joiner).cert == mine.cert.read_bytes()

        # The join request's own hosts only: a CSR asking for more is refused, not trimmed.
        with pytest.raises(pki.CertificateRefused, match=r"10\.0\.0\.2"):
            await ctls.sign_join(store, first, joiner.replica_id, csr, ["10.0.0.9"])
        for bad in ("", "not a csr", 7, "x" * 10_000):
            with pytest.raises(ValueError, match="csr"):
                await ctls.sign_join(store, first, joiner.replica_id, bad, hosts)
        # An answer for another key is not written.
        other = _config(tmp_path, "r3")
        ctls.new_csr(other)
        with pytest.raises(MoorageError, match="not this one's"):
            ctls.write_join_answer(other, answer)
        # A replica whose secret does not open the sealed key cannot sign.
        tls.write_secret(pki.new_cluster_secret())
        with pytest.raises(ctls.ClusterCaUnavailable):
            await ctls.sign_join(store, first, joiner.replica_id, csr, hosts)
        with pytest.raises(ctls.ClusterCaUnavailable):
            await ctls.sign_join(MemoryMetaStore(), first, joiner.replica_id, csr, hosts)

    asyncio.run(scenario())


def test_a_directory_without_tls_is_refused_with_what_to_do(tmp_path: Path) -> None:
    config = _config(tmp_path, "old")
    with pytest.raises(ConfigError, match="without etcd TLS") as err:
        ctls.require_tls(config)
    assert "moorage restore" in str(err.value)
    with pytest.raises(ConfigError, match="without etcd TLS"):
        ctls.client_tls(config)
