"""Access tokens as Basic passwords: `docker login -u robot+ci -p mrg_…` (podman, skopeo,
oras the same).

`TokenAuthenticator` wraps the password authenticator: a Basic credential whose password
starts with `mrg_` is checked here (one etcd read of the token's record and a SHA-256, no
argon2), everything else goes to the wrapped authenticator unchanged.

* Every use reads the token's record (a linearizable read; concurrent uses of one token
  share it), so a revoked token is refused at once on every replica; an expired one too.
  During a quorum loss the read falls back to this member's copy (pulls keep working).
* A token whose secret does not match (a forged id or secret, or the wrong user name) is a
  failed login: counted in the per-address and per-(account, address) limits of passwords,
  across the cluster (the wrapped authenticator's `throttle` and `ledger`), and refused with
  429 past them. Not per account: a 256-bit secret is never guessed, so such a limit would
  only let anyone who knows a robot's name lock it out of every new address (CI runners).
  A valid but expired token is no guess and is not counted.
* The last use is written at most once a minute per token and process, in the background.
* The identity carries the `Principal`: kind "robot" or "token", `limit` = the scope.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from typing import Any

from moorage.auth import access_tokens
from moorage.auth.access import Principal
from moorage.auth.base import Authenticator
from moorage.auth.basic import MAX_NAME, _client_key, parse_basic
from moorage.auth.throttle import LoginThrottle
from moorage.errors import LoginThrottled, StoreUnavailable
from moorage.meta.base import MetaStore

log = logging.getLogger("moorage.auth")

TOUCH_EVERY = 60.0  # seconds between two last-use writes of one token (per process)
_MAX_TOUCHED = 10000


def as_principal(principal: Principal) -> Principal:
    """What an authenticator answered: a token's principal carries its limit already."""
    return principal


def _user_admin(user: Any) -> bool:
    admin = getattr(user, "admin", None)
    return bool(admin) if isinstance(admin, bool) else getattr(user, "role", "") == "admin"


class TokenAuthenticator(Authenticator):
    def __init__(self, inner: Authenticator, meta: MetaStore) -> None:
        self.inner = inner
        self.meta = meta
        found = getattr(inner, "throttle", None)
        self.throttle: LoginThrottle = (
            found if isinstance(found, LoginThrottle) else LoginThrottle()
        )
        self.ledger: Any = getattr(inner, "ledger", None)
        self._lookups: dict[str, asyncio.Future[access_tokens.Checked | None]] = {}
        self._touched: dict[str, float] = {}
        self._background: set[asyncio.Task[None]] = set()

    @property
    def challenge(self) -> str:  # type: ignore[override]  # the wrapped one's, even if it changes
        return self.inner.challenge

    async def authenticate(
        self, authorization: str | None, client: str | None = None
    ) -> Principal | None:
        parsed = parse_basic(authorization)
        if parsed is None or not access_tokens.looks_like_token(parsed[1]):
            return await self.inner.authenticate(authorization, client)
        name, token, _ = parsed
        if len(name) > MAX_NAME:
            return None
        peer = _client_key(client)
        now = time.monotonic()
        wait = self.throttle.retry_after(name, peer, now, token=True)
        if wait:
            raise _refuse(wait)
        if self.ledger is not None and not self.throttle.known(name, peer, now):
            await self._check_cluster(name, peer)  # an address new to this account
        checked = await self._lookup(name, token)
        if checked is None:
            await self._failed(name, peer)
            log.info("access token login refused for %r from %s", name[:80], peer)
            return None
        record = checked.record
        if checked.refusal is not None:
            log.info("access token %s refused: %s", record.id, checked.refusal)
            return None
        admin = checked.user is not None and _user_admin(checked.user)
        self.throttle.remember(name, peer, time.monotonic())
        self._touch(record.id, client or "")
        principal = Principal(
            record.owner,
            "robot" if record.robot else "token",
            admin=admin,
            limit=access_tokens.limit_of(record),
            token_id=record.id,
        )
        return principal

    async def _lookup(self, name: str, token: str) -> access_tokens.Checked | None:
        """The check of a token; one store read however many requests carry it at once."""
        key = f"{name}\0{token}"
        lookup = self._lookups.get(key)
        if lookup is None:
            lookup = asyncio.ensure_future(access_tokens.check(self.meta, name, token))
            self._lookups[key] = lookup
            lookup.add_done_callback(functools.partial(self._looked_up, key))
        return await asyncio.shield(lookup)

    def _looked_up(self, key: str, lookup: asyncio.Future[Any]) -> None:
        self._lookups.pop(key, None)
        if not lookup.cancelled():
            lookup.exception()  # retrieved even if every request waiting for it went away

    async def _failed(self, name: str, peer: str) -> None:
        reservation = self.throttle.reserve(name, peer, time.monotonic(), token=True)
        self.throttle.failed(reservation)
        if self.ledger is not None:
            await self.ledger.record(reservation.keys)

    async def _check_cluster(self, name: str, peer: str) -> None:
        """Refuse when the failures all replicas recorded put this attempt over a limit."""
        keys = list(self.throttle.limiting(name, peer, time.monotonic(), token=True))
        try:
            waits = await self.ledger.retry_after(keys, [self.throttle.limit(k) for k in keys])
        except StoreUnavailable:
            return  # this process's limits still apply
        if max(waits, default=0.0) > 0:
            now = time.monotonic()
            for key, wait in zip(keys, waits, strict=True):
                if wait > 0:
                    self.throttle.block(key, now + wait)
            raise _refuse(math.ceil(max(waits)))

    def _touch(self, token_id: str, client: str) -> None:
        """Write the last use in the background, at most once a minute per token."""
        now = time.monotonic()
        last = self._touched.get(token_id)
        if last is not None and now - last < TOUCH_EVERY:
            return
        if len(self._touched) > _MAX_TOUCHED:
            self._touched.clear()
        self._touched[token_id] = now
        task = asyncio.ensure_future(self._write_use(token_id, client))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _write_use(self, token_id: str, client: str) -> None:
        try:
            await access_tokens.touch(self.meta, token_id, client)
        except Exception as exc:  # a lost last-use stamp must not fail anything
            log.warning("could not record the use of access token %s: %s", token_id, exc)


def _refuse(retry_after: int) -> LoginThrottled:
    return LoginThrottled(
        f"too many failed logins for this account or from this address: retry in {retry_after} s",
        retry_after=retry_after,
    )
