"""The web UI's session cookie: who signed in, until when, and the CSRF token of the session.

A session is `base64url(JSON) "." base64url(HMAC-SHA256)`, signed with a key derived (HKDF,
its own `info`) from the cluster secret `D/tls/cluster.secret` that every replica holds, so
a session made on one replica is honoured by the others and survives restarts. Nothing is
kept server side: a session ends when it expires (`SESSION_TTL`), when the browser drops it
(sign out), or when the account's password changes or the account is disabled or deleted
(each request checks the account, and the cookie carries a digest of the password hash).

Hazard: the payload is signed, not encrypted; it holds the user name, times, the CSRF
token and a truncated digest of the password hash only, never anything secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

COOKIE = "moorage_session"
SESSION_TTL = 8 * 3600.0
_HKDF_INFO = b"moorage web ui session v1"
_MAX_COOKIE = 2048


@dataclass(frozen=True, slots=True)
class Session:
    user: str
    csrf: str
    issued: float
    expires: float
    password: str  # digest of the account's password hash when the session began


def password_tag(password_hash: str) -> str:
    """A short digest of an account's password hash: a new password ends old sessions."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:24]


def session_key(cluster_secret: bytes) -> bytes:
    if not cluster_secret:
        # No cluster secret (an in-memory store in tests): sessions are this process's own.
        cluster_secret = secrets.token_bytes(32)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(
        cluster_secret
    )


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue(key: bytes, user: str, password_hash: str, now: float | None = None) -> tuple[str, str]:
    """A new session's cookie value and its CSRF token."""
    now = time.time() if now is None else now
    csrf = secrets.token_urlsafe(24)
    doc = {
        "u": user,
        "c": csrf,
        "i": int(now),
        "e": int(now + SESSION_TTL),
        "p": password_tag(password_hash),
    }
    payload = _b64(json.dumps(doc, separators=(",", ":")).encode())
    mac = hmac.new(key, payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(mac)}", csrf


def verify(key: bytes, cookie: str | None, now: float | None = None) -> Session | None:
    """The session a cookie proves, or None (absent, malformed, forged or expired)."""
    if not cookie or len(cookie) > _MAX_COOKIE or not cookie.isascii():
        return None
    payload, dot, mac = cookie.partition(".")
    if not dot:
        return None
    want = hmac.new(key, payload.encode(), hashlib.sha256).digest()
    try:
        if not hmac.compare_digest(want, _unb64(mac)):
            return None
        doc = json.loads(_unb64(payload))
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    user, csrf, issued, expires, pw = (doc.get(k) for k in ("u", "c", "i", "e", "p"))
    if not (isinstance(user, str) and isinstance(csrf, str) and isinstance(pw, str)):
        return None
    if not (isinstance(issued, int) and isinstance(expires, int)):
        return None
    now = time.time() if now is None else now
    if now >= expires:
        return None
    return Session(user, csrf, float(issued), float(expires), pw)


def csrf_ok(session: Session, sent: str | None) -> bool:
    """Whether a form's CSRF field matches its session's token (constant time)."""
    return sent is not None and hmac.compare_digest(session.csrf.encode(), sent.encode())
