"""HTTP Basic authentication against users in the metadata store.

argon2 is deliberately slow (about 20 ms of CPU and 19 MiB per check), so:

* a successful check is remembered for a while, keyed by a salted hash of the exact
  credentials and valid only while the user's stored hash is unchanged (changing a
  password invalidates it at once);
* checks run on a small executor of their own (`PasswordVerifier`), one run per distinct
  credential however many requests carry it at once;
* an unknown user's password is checked against a dummy hash of the same cost, so that
  the answer's timing does not tell which accounts exist;
* a hash made with older parameters is made again with today's after a successful check
  (`needs_rehash`), in the background, only if the user's hash has not changed meanwhile;
* failed attempts are limited per account and client address (`LoginThrottle`), across
  the cluster (`FailureLedger`): past the limits a login is refused with LoginThrottled
  (429 and Retry-After) before any password check.

Any header value gives an identity, None (401), LoginThrottled (429) or, when the user
cannot be looked up and the credential was not verified recently, StoreUnavailable (503).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import hashlib
import ipaddress
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client import Counter

from moorage.auth.access import ANONYMOUS, Principal, account_mark
from moorage.auth.base import Authenticator
from moorage.auth.ledger import FailureLedger
from moorage.auth.passwords import needs_rehash
from moorage.auth.policy import AccessView
from moorage.auth.throttle import LoginThrottle, Reservation
from moorage.auth.verifier import PasswordVerifier
from moorage.errors import LoginThrottled, StoreUnavailable
from moorage.meta.accounts import Accounts
from moorage.meta.base import MetaStore
from moorage.meta.etcd import EtcdCluster
from moorage.meta.records import UserRecord

log = logging.getLogger(__name__)
K = TypeVar("K")

_VERIFIED_TTL = 300.0
_USER_TTL = 5.0
_MAX_ENTRIES = 10000
MAX_HEADER = 8192  # longer Authorization headers are refused unread
MAX_NAME = 256  # no user has a longer name: refused unread (and not counted)

_EMPTY_BASIC = frozenset({"Basic Og==", "basic Og=="})  # base64 of ":"

THROTTLED = Counter(
    "moorage_auth_logins_throttled_total", "logins refused by the failed-login limits"
)


@dataclass(frozen=True, slots=True)
class _Verified:
    at: float
    password_hash: str
    identity: Principal


@dataclass(frozen=True)
class _Attempt:
    """One login's password check: whose, from where, and what it is checked against."""

    name: str
    peer: str
    client: str | None
    user: UserRecord | None
    known: bool  # the address logged in to the account before (the ledger knows it)
    password_hash: str
    cache_key: bytes


def parse_basic(authorization: str | None) -> tuple[str, str, str] | None:
    """(name, password, "name:password") from a Basic header, or None if it is not one."""
    if not authorization or len(authorization) > MAX_HEADER:
        return None
    scheme, _, encoded = authorization.strip().partition(" ")
    encoded = encoded.strip()
    if scheme.lower() != "basic" or not encoded or not encoded.isascii():
        return None
    try:
        decoded = base64.b64decode(encoded, validate=True).decode()
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        return None
    name, sep, password = decoded.partition(":")
    if not sep or not name:
        return None
    return name, password, decoded


def _forget(table: dict[K, asyncio.Task[bool]], key: K, task: asyncio.Task[bool]) -> None:
    """A check's task is done: off its table of running ones (`_checking`, `_flows`)."""
    if table.get(key) is task:
        del table[key]
    if not task.cancelled():
        task.exception()  # retrieved even if every request waiting for it went away


def _client_key(client: str | None) -> str:
    """What failures are counted against: the IPv4 address, or the IPv6 /64 (one host
    usually has a whole /64 to pick addresses from)."""
    if not client:
        return "unknown"
    if ":" in client:
        try:
            return str(ipaddress.IPv6Network(f"{client}/64", strict=False))
        except ValueError:
            return client
    return client


def _identity(user: UserRecord) -> Principal:
    """Who a user's credentials prove to be, disabled or not."""
    return Principal(
        user.name,
        "user",
        admin=bool(user.admin),
        mark=account_mark(user),
    )


def _principal(user: UserRecord) -> Principal | None:
    """A user's principal; None for a disabled account (it proves nothing: a 401)."""
    return None if user.disabled else _identity(user)


class BasicAuthenticator(Authenticator):
    def __init__(
        self,
        meta: MetaStore,
        throttle: LoginThrottle | None = None,
        verifier: PasswordVerifier | None = None,
        on_login: Callable[[str, str | None, bool], Awaitable[None]] | None = None,
        view: AccessView | None = None,
        rehash: bool = False,
    ) -> None:
        self.meta = meta
        # Whether a hash of older parameters is made again at a successful check (a replica's
        # API: True; tests of the checks themselves keep their users' hashes as given).
        self.rehash = rehash
        # Told of every password check that ran (name, client address, ok): the audit log.
        self.on_login = on_login
        # Accounts cached under an etcd watch (auth.policy): a disabled, deleted or
        # re-passworded account is seen at once; without one, looked up per _USER_TTL.
        self.view = view
        self.throttle = throttle or LoginThrottle()
        self.verifier = verifier or PasswordVerifier()
        # Failures are shared through etcd when there is one (see moorage.auth.ledger).
        self.ledger = (
            FailureLedger(meta, self.throttle.window) if isinstance(meta, EtcdCluster) else None
        )
        self._salt = secrets.token_bytes(16)
        self._verified: dict[bytes, _Verified] = {}
        self._users: dict[str, tuple[float, UserRecord | None]] = {}
        self._lookups: dict[str, asyncio.Future[UserRecord | None]] = {}
        self._rehashing: dict[str, asyncio.Task[None]] = {}
        self._checking: dict[bytes, asyncio.Task[bool]] = {}
        self._flows: dict[tuple[bytes, str], asyncio.Task[bool]] = {}

    async def _user(self, name: str) -> UserRecord | None:
        if self.view is not None:
            return await self.view.user(name)
        now = time.monotonic()
        cached = self._users.get(name)
        if cached is not None and now - cached[0] < _USER_TTL:
            return cached[1]
        # One store read however many requests need the same user at once.
        lookup = self._lookups.get(name)
        if lookup is None:
            lookup = asyncio.ensure_future(self.meta.get_user(name))
            self._lookups[name] = lookup
            lookup.add_done_callback(functools.partial(self._looked_up, name))
        user = await asyncio.shield(lookup)
        if len(self._users) > _MAX_ENTRIES:
            self._users.clear()
        self._users[name] = (now, user)
        return user

    def _looked_up(self, name: str, lookup: asyncio.Future[UserRecord | None]) -> None:
        self._lookups.pop(name, None)
        if not lookup.cancelled():
            lookup.exception()  # retrieved even if every request waiting for it went away

    def _refuse(self, retry_after: int) -> LoginThrottled:
        THROTTLED.inc()
        return LoginThrottled(
            "too many failed logins for this account or from this address: "
            f"retry in {retry_after} s",
            retry_after=retry_after,
        )

    async def authenticate(
        self, authorization: str | None, client: str | None = None
    ) -> Principal | None:
        if authorization is None or not authorization.strip():
            return ANONYMOUS
        parsed = parse_basic(authorization)
        if parsed is None:
            # containers/image (skopeo, podman) without credentials answers a Basic
            # challenge with an empty name and password: anonymous, as distribution has it.
            return ANONYMOUS if authorization.strip() in _EMPTY_BASIC else None
        name, password, decoded = parsed
        if len(name) > MAX_NAME:  # no such user can exist: nothing to look up or count
            return None
        peer = _client_key(client)
        now = time.monotonic()
        wait = self.throttle.retry_after(name, peer, now)
        if wait and await self._known_elsewhere(name, peer, now):
            wait = self.throttle.retry_after(name, peer, now)
        if wait:
            raise self._refuse(wait)
        cache_key = hashlib.sha256(self._salt + decoded.encode()).digest()
        hit = self._verified.get(cache_key)
        if hit is not None and now - hit.at >= _VERIFIED_TTL:
            hit = None
        try:
            user = await self._user(name)
        except StoreUnavailable:
            if hit is not None:  # verified recently: the store's outage does not log it out
                return hit.identity
            raise
        if user is not None:
            if hit is not None and hit.password_hash == user.password_hash:
                self.throttle.remember(name, peer, now)  # as good as a successful check
                return _principal(user)
            password_hash = user.password_hash
        else:
            password_hash = await self.verifier.dummy_hash()
        check_key = hashlib.sha256(
            self._salt + password_hash.encode() + b"\0" + decoded.encode()
        ).digest()
        running = self._checking.get(check_key)
        if running is not None:
            # The same credential is being checked for another request: share its result
            # (and its failure, already counted once).
            ok = await asyncio.shield(running)
        else:
            flow = (check_key, peer)
            checking = self._flows.get(flow)
            if checking is None:
                # One check per credential and address at a time, from its reading of the
                # cluster's counts on: every request of a burst that finds no verification
                # (the first ones, or all those in flight when it expires) waits for it. Each
                # read the counts itself before: a replica at ~250 pushes/s with one credential
                # sent ~600 reads of the failure ledger in one second when its verification
                # expired, each taking ~350 ms under that load.
                checking = asyncio.create_task(
                    self._check(
                        name, peer, check_key, password_hash, password, cache_key, user, client
                    )
                )
                self._flows[flow] = checking
                checking.add_done_callback(functools.partial(_forget, self._flows, flow))
            ok = await asyncio.shield(checking)
        if not ok or user is None:
            return None
        if self.rehash and needs_rehash(password_hash) and name not in self._rehashing:
            task = asyncio.create_task(self._rehash(name, password_hash, password))
            self._rehashing[name] = task
            task.add_done_callback(lambda _: self._rehashing.pop(name, None))
        return _principal(user)

    async def _rehash(self, name: str, old: str, password: str) -> None:
        """Store a hash of the password just verified with today's parameters, unless the
        user's hash changed meanwhile (a new password wins). Best effort: a failure leaves
        the old hash, which still verifies, for the next login."""
        try:
            new = await self.verifier.rehash(password, old)

            def change(user: UserRecord) -> UserRecord:
                if user.password_hash != old:
                    return user
                return dataclasses.replace(user, password_hash=new)

            await Accounts(self.meta).change_user(name, change)
        except Exception:  # best effort: logged, tried again at the next login
            log.warning("could not store a new hash for user %s", name, exc_info=True)

    async def _check(
        self,
        name: str,
        peer: str,
        check_key: bytes,
        password_hash: str,
        password: str,
        cache_key: bytes,
        user: UserRecord | None,
        client: str | None,
    ) -> bool:
        """Whether the password is right: checked here, or shared with a check of the same
        credential that started while this one read the cluster's counts."""
        known = self.throttle.known(name, peer, time.monotonic())
        if self.ledger is not None:
            known = known or await self._known_elsewhere(name, peer, time.monotonic())
            await self._check_cluster(name, peer)
            hit = self._verified.get(cache_key)
            if hit is not None and hit.password_hash == password_hash:
                return True  # verified while this one read the cluster's counts
            running = self._checking.get(check_key)
            if running is not None:
                # Started while this one read the cluster's counts (a client's burst of
                # parallel requests with one credential): share it, reserving nothing, or
                # the burst's own pending checks would trip the account's limit.
                return await asyncio.shield(running)
        now = time.monotonic()
        wait = self.throttle.retry_after(name, peer, now)  # again: lookups awaited
        if wait:
            raise self._refuse(wait)
        priority = -1 if self.throttle.known(name, peer, now) else self.throttle.failures(peer, now)
        reservation = self.throttle.reserve(name, peer, now)
        # A task of its own, listed until its result is remembered: a client that hangs up
        # does not stop the check (it counts, or hanging up would be a way to have passwords
        # checked without limit), and no request of a burst finds neither the check nor its
        # result and runs a second one.
        run = asyncio.create_task(
            self._run_check(
                _Attempt(name, peer, client, user, known, password_hash, cache_key),
                check_key,
                password,
                priority,
                reservation,
            )
        )
        self._checking[check_key] = run
        run.add_done_callback(functools.partial(_forget, self._checking, check_key))
        return await asyncio.shield(run)

    async def _run_check(
        self,
        attempt: _Attempt,
        check_key: bytes,
        password: str,
        priority: int,
        reservation: Reservation,
    ) -> bool:
        try:
            ok = await self.verifier.verify(check_key, attempt.password_hash, password, priority)
        except BaseException:
            self.throttle.cancelled(reservation)
            raise
        user = attempt.user
        if ok and user is not None:
            self.throttle.succeeded(reservation, time.monotonic())
            # Remembered for a disabled account too (its password is right: no argon2 run
            # per request), which every request still refuses from the account's record.
            if len(self._verified) > _MAX_ENTRIES:
                self._verified.clear()
            self._verified[attempt.cache_key] = _Verified(
                time.monotonic(), attempt.password_hash, _identity(user)
            )
            if self.ledger is not None and not attempt.known:
                await self.ledger.remember(attempt.name, attempt.peer)
        else:
            self.throttle.failed(reservation)
            if self.ledger is not None:
                await self.ledger.record(reservation.keys)
        if self.on_login is not None:
            await self.on_login(attempt.name, attempt.client, ok and user is not None)
        return ok and user is not None

    async def _known_elsewhere(self, name: str, peer: str, now: float) -> bool:
        """Whether `peer` logged in to `name` through another replica (or before this
        process started): then it is known here too, held to the pair's limit only."""
        if self.ledger is None or self.throttle.known(name, peer, now):
            return False
        if not await self.ledger.known(name, peer):
            return False
        self.throttle.remember(name, peer, now)
        return True

    async def _check_cluster(self, name: str, peer: str) -> None:
        """Refuse if the failures all replicas recorded put this attempt over a limit; the
        refusal is remembered here, so that the next attempts are refused unread."""
        assert self.ledger is not None
        keys = list(self.throttle.limiting(name, peer, time.monotonic()))
        waits = await self.ledger.retry_after(keys, [self.throttle.limit(k) for k in keys])
        if max(waits, default=0.0) > 0:
            now = time.monotonic()
            for key, wait in zip(keys, waits, strict=True):
                if wait > 0:
                    self.throttle.block(key, now + wait)
            raise self._refuse(math.ceil(max(waits)))
