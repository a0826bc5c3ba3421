"""The cluster's PKI (DESIGN.md §7): CA, replica certificates, `D/tls/` files.

Layer: beside storage and meta (it imports only `cryptography` and the standard library).
`moorage.cluster.tls` wires it into replicas (etcd's mutual TLS); docs/tls.md has the rest.

The names re-exported here load their module (and `cryptography`, ~0.15 s of CPU) on first
use: `moorage.pki.trust` is imported by every command that makes an HTTPS client, and most
of them never touch x509.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    """`from moorage.pki import X`: X from its module, imported now."""
    if name not in __all__:
        raise AttributeError(f"module 'moorage.pki' has no attribute {name!r}")
    module = importlib.import_module("moorage.pki.files" if name == "TlsDir" else "moorage.pki.ca")
    return getattr(module, name)
