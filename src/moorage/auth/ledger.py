"""Failed logins shared by the replicas of a cluster, in etcd.

A failure is one key per limit it counts against (account, client address, the pair),
written only when a password check fails — a successful login writes nothing:

    /moorage-auth/failures/<hash of the limit's key>/<unix ms>-<random>    (empty value)

The keys hang on a lease of this process that outlives the window and is replaced every
minute, so they disappear on their own. The ms timestamp in the name makes a window a key
range: counting the failures of the last `window` seconds reads at most `limit` names
(keys only) starting at now - window, and the first of them says when to retry.

The prefix is outside `/moorage/`, so backups, restores and the newest-data revision never
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

from moorage.auth.throttle import Key
from moorage.errors import StoreUnavailable
from moorage.meta import keys
from moorage.meta.etcd import EtcdCluster
from moorage.meta.keys import prefix_end

log = logging.getLogger("moorage.auth")

FAILURES = keys.AUTH_FAILURES
LEASE_ROTATION = 60.0


def _prefix(key: Key) -> bytes:
    digest = hashlib.sha256("\0".join(key).encode()).hexdigest()[:32]
    return FAILURES + digest.encode() + b"/"


class FailureLedger:
    def __init__(self, store: EtcdCluster, window: float) -> None:
        self.store = store
        self.window = window
        self._lease: int | None = None
        self._lease_at = 0.0
        self._lease_lock = asyncio.Lock()

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
