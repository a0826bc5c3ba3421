"""The keys that sign the registry's tokens (ES256, P-256), shared by every replica through
etcd (issue #9; DESIGN.md §7).

* Each key is stored once, under its key id (the RFC 7638 thumbprint of its public key),
  with its private part SEALED with the cluster secret (`D/tls/cluster.secret`, the secret
  that seals the CA key): AES-256-GCM under a key derived with HKDF-SHA256 (its own `info`,
  so the two uses never share a key), the key id as associated data (a sealed key cannot be
  moved under another id). A backup or a read-only etcd leak yields public keys only.
* Several keys are active at once: tokens are signed by the newest; a token verifies with
  any key younger than `rotation + VERIFY_GRACE` (the longest a refresh token lives), so
  a rotation never invalidates a token that was just issued.
* A new key is made when the newest is older than the rotation period (30 days;
  `MOORAGE_TOKEN_KEY_ROTATION` seconds overrides it) by the first replica that signs after
  that, or at once by `moorage token-keys rotate`. The marker key `TOKEN_KEY_NEWEST` guards
  the transaction, so concurrent replicas make one key, not one each.
* A replica picks up keys other replicas made without a restart: it re-reads the set when
  a token names a key id it does not know (at most once per `REREAD_INTERVAL`, whatever
  the number of forged key ids sent at it: later ones wait for the next re-read), and
  before signing it reads the newest key's id (one small key) and re-reads the set when
  that changed (or its copy is older than `REFRESH_INTERVAL`).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from moorage.auth import jwt
from moorage.errors import RecordCorrupt, StoreUnavailable
from moorage.meta.base import MetaStore
from moorage.meta.records import SigningKeyRecord

log = logging.getLogger("moorage.auth")

DAY = 86400.0
DEFAULT_ROTATION = 30 * DAY
#: How long a key keeps verifying after the rotation period ends: the longest a token it
#: signed may live (refresh tokens, moorage.auth.bearer.REFRESH_TTL).
VERIFY_GRACE = 30 * DAY
#: At most this many keys are read (and kept: a rotation deletes the oldest beyond it).
MAX_KEYS = 16
REREAD_INTERVAL = 1.0
REFRESH_INTERVAL = 60.0
SECRET_BYTES = 32
_SEAL_VERSION = b"MJK1"
_HKDF_INFO = b"moorage jwt signing key seal v1"


class SigningKeysUnavailable(RuntimeError):
    """No key can sign: the stored newest key does not open with this replica's secret."""


def rotation_period() -> float:
    raw = os.environ.get("MOORAGE_TOKEN_KEY_ROTATION", "")
    try:
        return max(1.0, float(raw)) if raw else DEFAULT_ROTATION
    except ValueError:
        return DEFAULT_ROTATION


def _aead(secret: bytes) -> AESGCM:
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"the cluster secret must be {SECRET_BYTES} bytes")
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(secret)
    return AESGCM(derived)


def seal(key: ec.EllipticCurvePrivateKey, kid: str, secret: bytes) -> str:
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    nonce = os.urandom(12)
    sealed = _SEAL_VERSION + nonce + _aead(secret).encrypt(nonce, der, _SEAL_VERSION + kid.encode())
    return base64.b64encode(sealed).decode()


def unseal(record: SigningKeyRecord, secret: bytes) -> ec.EllipticCurvePrivateKey:
    """The private key of `record`; ValueError when it does not open with `secret` or is
    not the key its id names."""
    raw = base64.b64decode(record.sealed, validate=True)
    if not raw.startswith(_SEAL_VERSION) or len(raw) < len(_SEAL_VERSION) + 12 + 16:
        raise ValueError("not a sealed Moorage signing key")
    nonce, body = raw[4:16], raw[16:]
    try:
        der = _aead(secret).decrypt(nonce, body, _SEAL_VERSION + record.kid.encode())
    except InvalidTag as exc:
        raise ValueError("the signing key does not open with this cluster secret") from exc
    key = serialization.load_der_private_key(der, password=None)
    if (
        not isinstance(key, ec.EllipticCurvePrivateKey)
        or jwt.key_id(key.public_key()) != record.kid
    ):
        raise ValueError("the sealed key is not the key its id names")
    return key


def new_record(secret: bytes, now: float) -> tuple[SigningKeyRecord, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    public = jwt.public_jwk(key.public_key())
    kid = jwt.jwk_thumbprint(public)
    return SigningKeyRecord(kid, now, public, seal(key, kid, secret)), key


@dataclass(frozen=True, slots=True)
class _Key:
    record: SigningKeyRecord
    public: ec.EllipticCurvePublicKey


class SigningKeys:
    """This replica's copy of the cluster's signing keys."""

    def __init__(self, meta: MetaStore, secret: bytes, rotation: float | None = None) -> None:
        self.meta = meta
        self._secret = secret
        self.rotation = rotation_period() if rotation is None else rotation
        self._keys: dict[str, _Key] = {}
        self._newest: str | None = None
        self._newest_revision = 0
        self._private: tuple[str, ec.EllipticCurvePrivateKey] | None = None
        self._loaded_at = -1e18
        self._reread_at = -1e18
        self._loading: asyncio.Future[None] | None = None

    # -- reading ----------------------------------------------------------------------------
    def _trusted(self, record: SigningKeyRecord, now: float) -> bool:
        return now - record.created_at < self.rotation + VERIFY_GRACE

    async def load(self) -> None:
        """Re-read the key set (one read however many callers ask at once)."""
        if self._loading is None:
            self._loading = asyncio.ensure_future(self._load())
            self._loading.add_done_callback(self._loaded)
        await asyncio.shield(self._loading)

    def _loaded(self, future: asyncio.Future[None]) -> None:
        self._loading = None
        if not future.cancelled():
            future.exception()  # retrieved even if every waiter went away

    async def _load(self) -> None:
        newest, revision, raws = await self.meta.signing_keys(MAX_KEYS)
        found: dict[str, _Key] = {}
        now = time.time()
        for raw in raws:
            try:
                record = SigningKeyRecord.decode(raw)
                public = jwt.public_key_from_jwk(record.jwk)
                if jwt.key_id(public) != record.kid:
                    raise RecordCorrupt(f"key {record.kid[:64]!r} is not its thumbprint")
            except (RecordCorrupt, ValueError, KeyError) as exc:
                log.warning("skipped a signing key record: %s", exc)
                continue
            if self._trusted(record, now):
                found[record.kid] = _Key(record, public)
        self._keys = found
        self._newest, self._newest_revision = newest, revision
        self._loaded_at = time.monotonic()

    def public_key(self, kid: str) -> ec.EllipticCurvePublicKey | None:
        """The trusted key with this id in this replica's copy (no I/O)."""
        key = self._keys.get(kid)
        if key is None or not self._trusted(key.record, time.time()):
            return None
        return key.public

    async def find(self, kid: str) -> ec.EllipticCurvePublicKey | None:
        """The trusted key with this id. An unknown id makes this replica re-read the key
        set (another replica may have made a key), at most once per REREAD_INTERVAL: a
        request that comes sooner waits for the next re-read, so a flood of forged ids
        costs the store one read per interval and a real new key is never refused."""
        key = self.public_key(kid)
        if key is not None:
            return key
        wait = self._reread_at + REREAD_INTERVAL - time.monotonic()
        if wait > 0 and self._loading is None:
            await asyncio.sleep(wait)
            key = self.public_key(kid)  # found by a re-read made meanwhile
            if key is not None:
                return key
        if self._loading is None and time.monotonic() - self._reread_at >= REREAD_INTERVAL:
            self._reread_at = time.monotonic()
        elif self._loading is None:
            return None  # another waiter's re-read just ended without it
        try:
            await self.load()  # joins a re-read under way
        except StoreUnavailable as exc:  # unknown for now: the token is refused (401)
            log.warning("cannot re-read the token signing keys: %s", exc)
        return self.public_key(kid)

    # -- signing ----------------------------------------------------------------------------
    async def signer(self) -> tuple[str, ec.EllipticCurvePrivateKey]:
        """(kid, private key) of the newest key, making one first when there is none or the
        newest is older than the rotation period."""
        if time.monotonic() - self._loaded_at >= REFRESH_INTERVAL:
            await self.load()
        else:
            # One small read: a rotation on another replica (or worker) signs from now on.
            try:
                if await self.meta.newest_signing_key() != self._newest:
                    await self.load()
            except StoreUnavailable as exc:
                log.warning("cannot check for a newer token signing key: %s", exc)
        newest = self._keys.get(self._newest or "")
        if newest is None or time.time() - newest.record.created_at >= self.rotation:
            await self.load()  # another replica may have rotated already
            newest = self._keys.get(self._newest or "")
            if newest is None or time.time() - newest.record.created_at >= self.rotation:
                try:
                    await self.rotate()
                except StoreUnavailable:
                    if newest is None:
                        raise
                    # No quorum (read-only): the old key signs on until a rotation can be
                    # stored; tokens must keep coming for pulls.
                    log.warning("cannot store a new token signing key now; the old one signs")
                else:
                    newest = self._keys.get(self._newest or "")
                if newest is None:
                    raise SigningKeysUnavailable("no signing key after a rotation")
        if self._private is None or self._private[0] != newest.record.kid:
            try:
                self._private = (newest.record.kid, unseal(newest.record, self._secret))
            except ValueError as exc:
                raise SigningKeysUnavailable(
                    f"the newest token signing key cannot be used: {exc}; run "
                    "'moorage token-keys rotate' on a replica of this cluster"
                ) from exc
        return self._private

    async def rotate(self) -> str:
        """Make a new key the newest (the previous ones keep verifying); its kid. When
        another replica rotated at the same moment, its key is the newest instead."""
        await self.load()
        record, key = new_record(self._secret, time.time())
        keep = sorted(self._keys.values(), key=lambda k: k.record.created_at, reverse=True)
        live = {k.record.kid for k in keep[: MAX_KEYS - 1]}  # room for the new one
        _, _, raws = await self.meta.signing_keys(MAX_KEYS)
        retire = []  # expired keys, and the oldest beyond MAX_KEYS
        for raw in raws:
            try:
                kid = SigningKeyRecord.decode(raw).kid
            except RecordCorrupt:
                continue
            if kid not in live:
                retire.append(kid)
        if await self.meta.add_signing_key(
            record.kid, record.encode(), self._newest_revision, retire
        ):
            log.info("new token signing key %s", record.kid)
            await self.load()
            self._private = (record.kid, key)
            return record.kid
        await self.load()  # another replica rotated at the same moment: its key it is
        if self._newest is None:
            raise SigningKeysUnavailable("could not store a new signing key")
        return self._newest

    async def listing(self) -> list[dict[str, object]]:
        """The keys (ids, public keys, age; never a private part), newest first."""
        await self.load()
        out: list[dict[str, object]] = []
        for key in sorted(self._keys.values(), key=lambda k: k.record.created_at, reverse=True):
            out.append(
                {
                    "kid": key.record.kid,
                    "created_at": key.record.created_at,
                    "verifies_until": key.record.created_at + self.rotation + VERIFY_GRACE,
                    "signing": key.record.kid == self._newest,
                    "jwk": {**key.record.jwk, "kid": key.record.kid, "alg": jwt.ALG, "use": "sig"},
                }
            )
        return out
