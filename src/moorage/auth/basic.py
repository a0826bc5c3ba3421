"""HTTP Basic authentication against users in the metadata store.

argon2 is deliberately slow (tens of milliseconds), so a successful check is remembered
for a short while, keyed by a salted hash of the exact credentials and the stored hash:
changing a password invalidates the entry at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import secrets
import time

from moorage.auth.base import Authenticator, Identity
from moorage.auth.passwords import verify_password
from moorage.meta.base import MetaStore
from moorage.meta.records import UserRecord

_VERIFIED_TTL = 300.0
_USER_TTL = 5.0
_MAX_ENTRIES = 10000


class BasicAuthenticator(Authenticator):
    def __init__(self, meta: MetaStore) -> None:
        self.meta = meta
        self._salt = secrets.token_bytes(16)
        self._verified: dict[bytes, float] = {}
        self._users: dict[str, tuple[float, UserRecord | None]] = {}

    async def _user(self, name: str) -> UserRecord | None:
        now = time.monotonic()
        cached = self._users.get(name)
        if cached is not None and now - cached[0] < _USER_TTL:
            return cached[1]
        user = await self.meta.get_user(name)
        if len(self._users) > _MAX_ENTRIES:
            self._users.clear()
        self._users[name] = (now, user)
        return user

    async def authenticate(self, authorization: str | None) -> Identity | None:
        if not authorization:
            return None
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        name, sep, password = decoded.partition(":")
        if not sep:
            return None
        user = await self._user(name)
        if user is None:
            return None
        key = hashlib.sha256(
            self._salt + user.password_hash.encode() + b"\0" + decoded.encode()
        ).digest()
        now = time.monotonic()
        seen = self._verified.get(key)
        if seen is not None and now - seen < _VERIFIED_TTL:
            return Identity(user.name, user.role)
        if not await asyncio.to_thread(verify_password, user.password_hash, password):
            return None
        if len(self._verified) > _MAX_ENTRIES:
            self._verified.clear()
        self._verified[key] = now
        return Identity(user.name, user.role)
