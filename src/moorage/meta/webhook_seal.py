"""Webhook secrets sealed at rest: AES-256-GCM under a key derived (HKDF-SHA256, its own
label) from the cluster secret `D/tls/cluster.secret` every replica holds, so etcd, its
snapshots and whoever reads its keys see no webhook secret in plain text.

A sealed secret is `base64(b"whs1" + nonce(12) + ciphertext)`, bound to its webhook's id
(the associated data): a sealed value copied onto another webhook does not open.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_HKDF_INFO = b"moorage webhook secret v1"
_VERSION = b"whs1"


class Sealer:
    """Seals and opens webhook secrets with one cluster secret's derived key."""

    def __init__(self, cluster_secret: bytes) -> None:
        if not cluster_secret:
            # No cluster secret (an in-memory store in unit tests): secrets are this
            # process's own, as the web UI's sessions are.
            cluster_secret = secrets.token_bytes(32)
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(
            cluster_secret
        )
        self._aead = AESGCM(key)

    def seal(self, hook_id: str, secret: str) -> str:
        nonce = os.urandom(12)
        body = self._aead.encrypt(nonce, secret.encode(), _VERSION + hook_id.encode())
        return base64.b64encode(_VERSION + nonce + body).decode()

    def open(self, hook_id: str, sealed: str) -> str:
        """The secret; ValueError when it does not open with this cluster secret."""
        try:
            raw = base64.b64decode(sealed, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the sealed webhook secret is not base64") from None
        if not raw.startswith(_VERSION) or len(raw) < len(_VERSION) + 12 + 16:
            raise ValueError("not a sealed webhook secret")
        nonce, body = raw[4:16], raw[16:]
        try:
            plain = self._aead.decrypt(nonce, body, _VERSION + hook_id.encode())
        except InvalidTag:
            raise ValueError(
                "the webhook secret does not open with this replica's cluster secret; "
                "set it again (remove the webhook, add it with --secret)"
            ) from None
        return plain.decode(errors="replace")
