"""Wiring of the Docker token flow into a replica (issue #9): the signing keys (sealed with
this replica's cluster secret), the token service (service = the cluster id) and the realm
clients are sent to, around the Basic authenticator."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import secrets
from pathlib import Path

from cryptography import x509

from moorage.auth import access_tokens
from moorage.auth.base import Authenticator
from moorage.auth.bearer import BearerAuthenticator, Realm, TokenService
from moorage.auth.signing_keys import SECRET_BYTES, SigningKeys
from moorage.cluster.tls import tls_dir
from moorage.config import ReplicaConfig, is_loopback
from moorage.meta.base import MetaStore
from moorage.pki.ca import load_cert

log = logging.getLogger("moorage.auth")


def _secret(config: ReplicaConfig) -> bytes:
    try:
        secret = tls_dir(config).read_secret()
    except OSError:
        secret = b""
    if len(secret) != SECRET_BYTES:
        # No cluster secret (an in-memory store in tests): keys this process makes are its own.
        log.warning(
            "no cluster secret in %s: token signing keys are process-local", config.data_dir
        )
        return secrets.token_bytes(SECRET_BYTES)
    return secret


def _cert_names(path: Path) -> set[str]:
    try:
        cert = load_cert(path.read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return set()
    names = {str(n).lower() for n in sans.get_values_for_type(x509.DNSName)}
    names |= {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    return names


def realm(config: ReplicaConfig) -> Realm:
    """The names this replica answers to: its HTTP host, its certificate's names and, when it
    listens on loopback or every interface, the loopback names."""
    host = config.http_host
    names = {host.lower()}
    cert = Path(config.tls_cert) if config.tls_cert else tls_dir(config).cert
    names |= _cert_names(cert)
    if host in ("0.0.0.0", "::", "") or is_loopback(host):
        names |= {"localhost", "127.0.0.1", "::1"}
    with contextlib.suppress(ValueError):
        names.add(str(ipaddress.ip_address(host)))
    return Realm(
        scheme="https" if config.https else "http",
        port=config.http_port,
        names=frozenset(names),
        fallback=config.url,
    )


def token_authenticator(
    config: ReplicaConfig, meta: MetaStore, inner: Authenticator
) -> BearerAuthenticator:
    keys = SigningKeys(meta, _secret(config))

    async def token_live(token_id: str) -> bool:
        return await access_tokens.live(meta, token_id)

    service = TokenService(keys, config.cluster_id)
    return BearerAuthenticator(inner, service, realm(config), token_live)
