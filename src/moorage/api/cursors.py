"""Opaque catalog cursors: a filtered catalog page never names what it filtered out.

`GET /v2/_catalog` lists, page by page, the repositories the caller may pull: each page of
the catalog is read, then filtered. Its `Link` must continue after the last name *read*
(else a page whose names were all filtered out would lead nowhere), and that name may be
one the caller may not pull. Put there in clear, it would list every repository to anyone
following the links with `n=1`. So when the last name read is not one the page shows, the
`last` of the `Link` is that name sealed (AES-GCM under a key derived from the cluster
secret every replica holds: a cursor works on any replica of the cluster), marked by a
leading `~`, which no repository name starts with. The name is padded to the longest a name
can be before it is sealed: every cursor has one length, which says nothing of the name's. A
`last` that starts with `~` and does not open is refused (400 PAGINATION_NUMBER_INVALID),
never read as a name.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets
from typing import TYPE_CHECKING

from starlette.requests import Request

from moorage.cluster.tls import tls_dir
from moorage.errors import PaginationInvalid
from moorage.oci.names import MAX_NAME_LENGTH

if TYPE_CHECKING:  # cryptography loads at the first sealed cursor
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MARK = "~"
_INFO = b"moorage catalog cursor v1"
_AAD = b"catalog"
_NONCE = 12


def _aead(request: Request) -> AESGCM:
    """This worker's cursor cipher, derived once from the cluster secret (a random key when
    there is none, e.g. an in-memory store in tests: cursors are then this process's own)."""
    found: AESGCM | None = getattr(request.app.state, "catalog_cursor_aead", None)
    if found is None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        secret = b""
        with contextlib.suppress(OSError):
            secret = tls_dir(request.app.state.moorage.config).read_secret()
        secret = secret or secrets.token_bytes(32)
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(secret)
        found = request.app.state.catalog_cursor_aead = AESGCM(key)
    return found


def seal(request: Request, name: str) -> str:
    nonce = os.urandom(_NONCE)
    padded = name.encode().ljust(MAX_NAME_LENGTH + 1, b"\0")  # no name holds a NUL
    sealed = nonce + _aead(request).encrypt(nonce, padded, _AAD)
    return MARK + base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()


def opened(request: Request, last: str | None) -> str | None:
    """The name a `last` stands for: itself, or the name a sealed cursor holds."""
    if last is None or not last.startswith(MARK):
        return last
    from cryptography.exceptions import InvalidTag

    raw = last[len(MARK) :]
    try:
        sealed = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        if len(sealed) <= _NONCE:
            raise ValueError("too short")
        opened = _aead(request).decrypt(sealed[:_NONCE], sealed[_NONCE:], _AAD)
        return opened.rstrip(b"\0").decode()
    except (ValueError, binascii.Error, InvalidTag, UnicodeDecodeError) as exc:
        raise PaginationInvalid(
            "last is not a cursor this cluster issued (follow the Link header of the page "
            "before, or start again without last)"
        ) from exc
