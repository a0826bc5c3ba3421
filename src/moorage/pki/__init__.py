"""The cluster's PKI (DESIGN.md §7): CA, replica certificates, `D/tls/` files.

Layer: beside storage and meta (it imports only `cryptography` and the standard library).
`moorage.cluster.tls` wires it into replicas (etcd's mutual TLS); docs/tls.md has the rest.
"""

from moorage.pki.ca import (
    CLUSTER_SAN,
    REPLICA_DAYS,
    WARN_DAYS,
    CertificateAuthority,
    CertificateRefused,
    CertSummary,
    SealError,
    create_ca,
    fingerprint,
    generate_key,
    issue_replica,
    make_csr,
    new_cluster_secret,
    seal_ca_key,
    sign_csr,
    summary,
    unseal_ca_key,
)
from moorage.pki.files import TlsDir

__all__ = [
    "CLUSTER_SAN",
    "REPLICA_DAYS",
    "WARN_DAYS",
    "CertSummary",
    "CertificateAuthority",
    "CertificateRefused",
    "SealError",
    "TlsDir",
    "create_ca",
    "fingerprint",
    "generate_key",
    "issue_replica",
    "make_csr",
    "new_cluster_secret",
    "seal_ca_key",
    "sign_csr",
    "summary",
    "unseal_ca_key",
]
