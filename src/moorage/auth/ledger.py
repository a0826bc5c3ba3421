"""Failed logins shared by the replicas of a cluster, in etcd.

A failure is one key per limit it counts against (account, client address, the pair),
written only when a password check fails — a successful login writes nothing:

    /moorage-auth/failures/<hash of the limit's key>/<unix ms>-<random>    (empty value)

The keys hang on a lease of this process that outlives the window and is replaced every
minute, so they disappear on their own. The ms timestamp in the name makes a window a key
range: counting the failures of the last `window` seconds reads at most `limit` names
(keys only) starting at now - window, and the first of them says when to retry.

Successful logins write one thing: that a client address logged in to an account, once per
process and pair, on a lease of a week (rotated daily):

    /moorage-auth/known/<hash of account and address>    (empty value)

so that every replica exempts that address from the per-address and per-account limits for
that account (auth.throttle), not only the one it logged in through.

The prefixes are outside `/moorage/`, so backups, restores and the newest-data revision never
see these keys. Errors of the store are swallowed here: the limits of this process still
apply, and a store that cannot be read fails the user lookup anyway.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Sequence

from moorage.auth.throttle import KNOWN_CLIENT_TTL, Key
from moorage.errors import StoreUnavailable
from moorage.meta import keys
from moorage.meta.etcd import EtcdCluster
from moorage.meta.keys import prefix_end

log = logging.getLogger("moorage.auth")

FAILURES = keys.AUTH_FAILURES
KNOWN = keys.AUTH_KNOWN
LEASE_ROTATION = 60.0
KNOWN_ROTATION = 86400.0


def _prefix(key: Key) -> bytes:
    digest = hashlib.sha256("\0".join(key).encode()).hexdigest()[:32]
    return FAILURES + digest.encode() + b"/"


def _known_key(account: str, client: str) -> bytes:
    return KNOWN + hashlib.sha256(f"{account}\0{client}".encode()).hexdigest()[:32].encode()


class FailureLedger:
    def __init__(self, store: EtcdCluster, window: float) -> None:
        self.store = store
        self.window = window
        self._lease: int | None = None
        self._lease_at = 0.0
        self._lease_lock = asyncio.Lock()
        self._known_lease: tuple[int, float] | None = None

    async def retry_after(self, keys: Sequence[Key], limits: Sequence[int]) -> list[float]:
        """For each key, seconds until it is under its limit cluster-wide (0 if it is)."""
        now_ms = int(time.time() * 1000)
        since = f"{max(0, now_ms - int(self.window * 1000)):015d}".encode()

        async def one(key: Key, limit: int) -> float:
            prefix = _prefix(key)
            kvs, _ = await self.store._range(
                prefix + since, prefix_end(prefix), limit=limit, keys_only=True
            )
            if len(kvs) < limit:
                return 0.0
            oldest = int(kvs[0].key[len(prefix) :].partition(b"-")[0])
            return max(1.0, (oldest - now_ms) / 1000 + self.window)

        try:
            return list(
                await asyncio.gather(*(one(k, n) for k, n in zip(keys, limits, strict=True)))
            )
        except (StoreUnavailable, ValueError) as exc:
            log.debug("failed-login counts unreadable: %s", exc)
            return [0.0] * len(keys)

    async def record(self, keys: Sequence[Key]) -> None:
        """Count one failure against each key, for every replica to see."""
        name = f"{int(time.time() * 1000):015d}-{secrets.token_hex(4)}".encode()
        try:
            lease = await self._current_lease()
            await asyncio.gather(
                *(self.store.put_with_lease(_prefix(k) + name, b"", lease) for k in keys)
            )
        except StoreUnavailable as exc:
            self._lease = None  # perhaps it expired (a long outage): take a new one next time
            log.debug("failed login not recorded in the store: %s", exc)

    async def _current_lease(self) -> int:
        async with self._lease_lock:
            now = time.monotonic()
            if self._lease is None or now - self._lease_at > LEASE_ROTATION:
                ttl = int(self.window + 2 * LEASE_ROTATION)
                self._lease = await self.store.grant_lease(ttl)
                self._lease_at = now
            return self._lease

    async def known(self, account: str, client: str) -> bool:
        """Whether `client` logged in to `account` through any replica within about a week
        (False when the store cannot say)."""
        try:
            return await self.store._get(_known_key(account, client)) is not None
        except StoreUnavailable as exc:
            log.debug("known login addresses unreadable: %s", exc)
            return False

    async def remember(self, account: str, client: str) -> None:
        """`client` logged in to `account`: for every replica to see (best effort)."""
        try:
            async with self._lease_lock:
                now = time.monotonic()
                if self._known_lease is None or now - self._known_lease[1] > KNOWN_ROTATION:
                    ttl = int(KNOWN_CLIENT_TTL + KNOWN_ROTATION)
                    self._known_lease = (await self.store.grant_lease(ttl), now)
                lease = self._known_lease[0]
            await self.store.put_with_lease(_known_key(account, client), b"", lease)
        except StoreUnavailable as exc:
            self._known_lease = None
            log.debug("known login address not recorded in the store: %s", exc)
