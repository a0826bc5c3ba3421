"""The web UI's session cookie: who signed in, until when, its id and its CSRF token.

A session is `base64url(JSON) "." base64url(HMAC-SHA256)`, signed with a key derived (HKDF,
its own `info`) from the cluster secret `D/tls/cluster.secret` that every replica holds, so
a session made on one replica is honoured by the others and survives restarts. A session
ends when it expires (`SESSION_TTL`), when the account's password changes or the account is
disabled (for good: the digest below counts disables) or deleted (each request checks the
account, and the cookie carries a digest of the password hash), or at sign out: the only
state kept server side is the id of each session signed out, in etcd until the session would
have expired anyway (moorage.meta.ui_sessions; every request that verifies a session reads
it). A cookie without an id (issued before ids existed) is refused: its holder signs in
again.

Hazard: the payload is signed, not encrypted; it holds the user name, times, the session id,
the CSRF token and a truncated digest of the password hash only, never anything secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from moorage.auth.access import password_mark

COOKIE = "moorage_session"
SESSION_TTL = 8 * 3600.0
_HKDF_INFO = b"moorage web ui session v1"
_MAX_COOKIE = 2048
#: A session id: `secrets.token_urlsafe(16)` (128 random bits) as `issue` makes it.
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{22}")
#: How much longer than the session itself a sign out is remembered: a replica whose clock
#: is behind the one that answered the sign out still honours the session's last seconds.
CLOCK_MARGIN = 300


@dataclass(frozen=True, slots=True)
class Session:
    user: str
    sid: str  # the session's random id: what sign out records as ended
    csrf: str
    issued: float
    expires: float
    password: str  # digest of the account's password hash when the session began


def password_tag(password_hash: str, sessions_ended: int = 0) -> str:
    """A short digest of an account's password (of its hash's salt: `password_mark`): a new
    password ends old sessions, and so does a disable (`sessions_ended`); a rehash with
    newer parameters at sign-in does not."""
    return password_mark(password_hash, sessions_ended)[:24]


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


def issue(
    key: bytes, user: str, password_hash: str, now: float | None = None, sessions_ended: int = 0
) -> tuple[str, str]:
    """A new session's cookie value and its CSRF token."""
    now = time.time() if now is None else now
    csrf = secrets.token_urlsafe(24)
    doc = {
        "u": user,
        "s": secrets.token_urlsafe(16),
        "c": csrf,
        "i": int(now),
        "e": int(now + SESSION_TTL),
        "p": password_tag(password_hash, sessions_ended),
    }
    payload = _b64(json.dumps(doc, separators=(",", ":")).encode())
    mac = hmac.new(key, payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(mac)}", csrf


def verify(key: bytes, cookie: str | None, now: float | None = None) -> Session | None:
    """The session a cookie proves, or None (absent, malformed, forged, expired, or without
    a session id). Whether it was signed out is the caller's read (meta.ui_sessions)."""
    if not cookie or len(cookie) > _MAX_COOKIE or not cookie.isascii():
        return None
    payload, dot, mac = cookie.partition(".")
    if not dot:
        return None
    want = hmac.new(key, payload.encode(), hashlib.sha256).digest()
    try:
        # Compared as text: a MAC with padding or other spare bits decodes to the same bytes,
        # and one session has exactly one cookie.
        if not hmac.compare_digest(_b64(want), mac):
            return None
        doc = json.loads(_unb64(payload))
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    user, sid, csrf, issued, expires, pw = (doc.get(k) for k in ("u", "s", "c", "i", "e", "p"))
    if not (isinstance(user, str) and isinstance(csrf, str) and isinstance(pw, str)):
        return None
    if not (isinstance(sid, str) and _SESSION_ID.fullmatch(sid)):
        return None  # no id: a cookie from before sign out recorded ids, refused
    if not (isinstance(issued, int) and isinstance(expires, int)):
        return None
    now = time.time() if now is None else now
    if now >= expires:
        return None
    return Session(user, sid, csrf, float(issued), float(expires), pw)


def remembered_for(session: Session, now: float | None = None) -> int:
    """Seconds a sign out of `session` must be remembered: what is left of it, plus
    CLOCK_MARGIN (never less than that margin)."""
    now = time.time() if now is None else now
    return int(max(0.0, session.expires - now)) + CLOCK_MARGIN


def csrf_ok(session: Session, sent: str | None) -> bool:
    """Whether a form's CSRF field matches its session's token (constant time)."""
    return sent is not None and hmac.compare_digest(session.csrf.encode(), sent.encode())
