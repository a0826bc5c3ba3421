"""The cluster's PKI wired into a replica: etcd always runs with mutual TLS (DESIGN.md §7).

* A new cluster (`install`, `run` on an empty directory, `restore`): `create_cluster_tls` makes
  the CA, the cluster secret and the first replica's key and certificate, and writes `D/tls/`
  (moorage.pki.files) BEFORE etcd first starts. The CA key, sealed with the cluster secret,
  waits in `D/tls/ca.key.pending` (0600) until the supervisor has stored it in etcd
  (`publish_ca`, keys PKI_CA_CERT / PKI_CA_KEY) and deletes the file.
* A join (and `repair`, which rejoins in place): the joiner makes its key and CSR on its own
  host (`new_csr`; the key never travels); a serving replica signs it (`sign_join`) with the
  CA key it unseals from etcd with its own `D/tls/cluster.secret`, for the hosts of the join
  request's own addresses only, and answers certificate, CA and secret, which the joiner
  writes (`write_join_answer`) before its etcd starts.
* `client_tls` is what every etcd client of a replica presents (meta.etcd.ClientTls).

A data directory made before etcd used TLS has no `D/tls/`: `require_tls` refuses to start it
and says what to do (`legacy_message`); it is not migrated in place (its etcd membership
records plain-http peer URLs that every member would have to change at once).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moorage.config import ReplicaConfig
from moorage.errors import ConfigError, MoorageError
from moorage.meta.etcd_members import ClientTls
from moorage.pki.files import PRIVATE_MODE, TlsDir, write_atomic

if TYPE_CHECKING:  # the store module pulls in records and snapshots; join and install need neither
    from moorage.meta.cluster_store import ClusterStore

LOOPBACK = "127.0.0.1"
PENDING_NAME = "ca.key.pending"
#: A CSR is a few hundred bytes; the admin API bounds the whole body anyway.
MAX_CSR_BYTES = 8192
_UNSPECIFIED = ("", "0.0.0.0", "::")


class ClusterCaUnavailable(MoorageError):
    """This replica cannot sign: the cluster stores no CA, or its secret does not open it."""


def tls_dir(config: ReplicaConfig) -> TlsDir:
    return TlsDir(Path(config.data_dir))


def replica_hosts(http_host: str, etcd_host: str) -> list[str]:
    """The names a replica's certificate carries (besides pki.CLUSTER_SAN): its HTTP host, its
    etcd host (etcd checks a peer's source address against it) and 127.0.0.1 (the local etcd
    client and health checks dial the loopback listener)."""
    out: list[str] = []
    for host in (http_host, etcd_host, LOOPBACK):
        host = host.strip().strip("[]")
        if host not in _UNSPECIFIED and host not in out:
            out.append(host)
    return out


def _pending(config: ReplicaConfig) -> Path:
    return tls_dir(config).path / PENDING_NAME


def ca_pending(config: ReplicaConfig) -> bool:
    """True until the new cluster's CA is stored in etcd (`publish_ca`)."""
    return _pending(config).exists()


def create_cluster_tls(config: ReplicaConfig) -> str:
    """A new cluster's CA, secret and first replica certificate in `D/tls/`; the CA's
    fingerprint. Milliseconds (P-256)."""
    from moorage.pki import ca as pki  # cryptography: loaded when first needed

    tls = tls_dir(config)
    authority = pki.create_ca(config.cluster_id)
    secret = pki.new_cluster_secret()
    hosts = replica_hosts(config.http_host, config.etcd_host)
    key, cert = pki.issue_replica(authority, config.replica_id, hosts)
    tls.write_ca(authority.cert)
    tls.write_secret(secret)
    tls.write_key(key)
    tls.write_cert(cert)
    write_atomic(_pending(config), pki.seal_ca_key(authority, secret), PRIVATE_MODE)
    return authority.fingerprint


def legacy_message(config: ReplicaConfig) -> str:
    return (
        f"{config.data_dir} was made by a Moorage without etcd TLS (it has no tls/ directory "
        "with the cluster certificates), and etcd now always runs with mutual TLS. It is not "
        "converted in place: with the previous Moorage, take a backup (moorage backup "
        "--existing URL --out FILE) and stop the cluster; then, with this one, restore it into "
        "a new data directory (moorage restore --from FILE --data-dir NEW_DIR --http-addr "
        "HOST:PORT) and join the other replicas to it"
    )


def require_tls(config: ReplicaConfig) -> None:
    if not tls_dir(config).exists():
        raise ConfigError(legacy_message(config))


def client_tls(config: ReplicaConfig) -> ClientTls:
    """What this replica's etcd clients present: its certificate, trusting the cluster CA."""
    tls = tls_dir(config)
    try:
        ca, key, cert = tls.client_material()
    except FileNotFoundError:
        raise ConfigError(legacy_message(config)) from None
    return ClientTls(ca=ca, key=key, cert=cert)


async def publish_ca(store: ClusterStore, config: ReplicaConfig) -> bool:
    """Store the new cluster's CA (certificate and sealed key) in etcd, once; True if this
    call stored it. The pending file goes once etcd holds the key (a crash before retries)."""
    from moorage.pki import ca as pki  # cryptography: loaded when first needed

    pending = _pending(config)
    if not pending.exists():
        return False
    tls = tls_dir(config)
    stored = await store.create_ca(pki.cert_pem(tls.read_ca()), pending.read_bytes())
    pending.unlink()
    return stored


def new_csr(config: ReplicaConfig) -> str:
    """A joiner's fresh key (written to its `D/tls/replica.key`, never sent) and the CSR
    (PEM text) that asks for its names."""
    from moorage.pki import ca as pki  # cryptography: loaded when first needed

    key = pki.generate_key()
    tls_dir(config).write_key(key)
    hosts = replica_hosts(config.http_host, config.etcd_host)
    return pki.csr_pem(pki.make_csr(key, config.replica_id, hosts)).decode()


async def sign_join(
    store: ClusterStore,
    config: ReplicaConfig,
    replica_id: str,
    csr: object,
    hosts: list[str],
    renewal: bool = False,
) -> dict[str, Any]:
    """Sign a joiner's CSR for `hosts` (taken from the join request's own addresses; a CSR
    asking for any other name is refused with pki.CertificateRefused, a ValueError), with the
    CA key unsealed by this replica's cluster secret: the join answer's TLS part.

    A join is refused (membership.Refused, a 409) while a CA rotation is in progress: the
    rotation re-issues the certificates of the replicas it listed when it started, and a
    newcomer would keep one the rotation's end stops trusting. A `renewal` is signed."""
    from moorage.pki import ca as pki  # cryptography: loaded when first needed

    if not isinstance(csr, str) or not csr or len(csr) > MAX_CSR_BYTES:
        raise ValueError(f"csr must be a PEM certificate signing request under {MAX_CSR_BYTES} B")
    if not renewal and await store.get_ca_rotation() is not None:
        from moorage.cluster.membership import Refused

        raise Refused(
            "a CA rotation is in progress (moorage certs status shows it); finish it with "
            "'moorage certs rotate --ca --existing URL', then join"
        )
    try:
        request = pki.load_csr(csr.encode())
    except (ValueError, UnicodeEncodeError) as exc:
        raise ValueError(f"csr is not a PEM certificate signing request: {exc}") from None
    tls = tls_dir(config)
    stored = await store.get_ca()
    if stored is None:
        raise ClusterCaUnavailable("the cluster stores no CA (etcd keys /moorage-pki/)")
    try:
        ca_cert = pki.load_cert(stored[0])
        authority = pki.unseal_ca_key(stored[1], tls.read_secret(), ca_cert)
    except (OSError, ValueError) as exc:
        raise ClusterCaUnavailable(
            f"replica {config.replica_id} cannot open the cluster CA key: {exc}"
        ) from None
    cert = pki.sign_csr(authority, request, replica_id, [*hosts, LOOPBACK])
    return {
        "certificate": pki.cert_pem(cert).decode(),
        "ca": pki.cert_pem(ca_cert).decode(),
        "cluster_secret": base64.b64encode(tls.read_secret()).decode(),
        "ca_fingerprint": authority.fingerprint,
    }


def write_join_answer(config: ReplicaConfig, answer: dict[str, Any]) -> None:
    """The joiner writes what the cluster answered (its key is there already), checking that
    the certificate is for its own key and issued by the CA it was given."""
    from moorage.pki import ca as pki  # cryptography: loaded when first needed

    tls = tls_dir(config)
    try:
        ca_cert = pki.load_cert(str(answer["ca"]).encode())
        cert = pki.load_cert(str(answer["certificate"]).encode())
        secret = base64.b64decode(str(answer["cluster_secret"]), validate=True)
    except (KeyError, ValueError, binascii.Error) as exc:
        raise MoorageError(
            f"the cluster's join answer has no usable certificate ({exc}); is the replica "
            "you joined through older than this Moorage? Upgrade it first"
        ) from None
    mine = tls.read_key().public_key().public_numbers()
    if cert.public_key().public_numbers() != mine or not pki.issued_by(cert, ca_cert):  # type: ignore[union-attr]
        raise MoorageError("the cluster's join answer holds a certificate that is not this one's")
    tls.write_ca(ca_cert)
    tls.write_secret(secret)
    tls.write_cert(cert)
