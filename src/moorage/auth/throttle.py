"""Limits on failed logins, per account and client address, kept in this process.

Three sliding windows count failed password checks (and checks still running, so that a
burst of concurrent guesses cannot all get in before the first one fails):

* per (account, client address): the tightest, `pair_limit` failures;
* per client address, whatever the account (password spraying): `client_limit`;
* per account, from all addresses (a distributed guess): `account_limit`, looser.

The per-address and per-account limits do not apply to an address that logged in to that
account successfully before (only the pair's does): an attacker hammering `admin` from many
addresses cannot lock the operator out, nor can one spraying unknown names from an address
many clients share (a proxy, a NAT) lock out the accounts that already log in from it.

An access token (a 256-bit secret: never guessed) is held to the pair's and the address's
limits only: failures with forged tokens in an account's name count against the addresses
that sent them, and lock out neither that account's tokens nor its password from elsewhere.

An attempt over a limit is refused before anything else is looked at — even a credential
that verified recently, which would otherwise let a throttled client keep guessing
against the cache for free. The refusal says when the oldest counted failure leaves the
window. Memory is bounded: at most `max_keys` windows and known addresses are kept (the
least recently touched are forgotten first).
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field

PAIR_LIMIT = 10
CLIENT_LIMIT = 30
ACCOUNT_LIMIT = 100
WINDOW = 300.0
KNOWN_CLIENT_TTL = 7 * 24 * 3600.0
MAX_KEYS = 50_000

Key = tuple[str, ...]


@dataclass
class Reservation:
    """One password check in progress, counted as a failure until it succeeds."""

    keys: tuple[Key, ...]
    stamp: float
    account: str
    client: str
    done: bool = field(default=False)


class LoginThrottle:
    def __init__(
        self,
        pair_limit: int = PAIR_LIMIT,
        client_limit: int = CLIENT_LIMIT,
        account_limit: int = ACCOUNT_LIMIT,
        window: float = WINDOW,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.window = window
        self.max_keys = max_keys
        self._limits = {"pair": pair_limit, "client": client_limit, "account": account_limit}
        # key -> the newest failure times (at most the key's limit of them, oldest first)
        self._failures: OrderedDict[Key, deque[float]] = OrderedDict()
        # (account, client) -> when that address last logged in to that account
        self._known: OrderedDict[tuple[str, str], float] = OrderedDict()
        # key -> until when another replica's counts say it is over its limit
        self._blocked: OrderedDict[Key, float] = OrderedDict()

    @staticmethod
    def keys(account: str, client: str) -> tuple[Key, Key, Key]:
        return ("pair", account, client), ("client", client), ("account", account)

    def known(self, account: str, client: str, now: float) -> bool:
        seen = self._known.get((account, client))
        return seen is not None and now - seen < KNOWN_CLIENT_TTL

    def _retry_after(self, key: Key, now: float) -> float:
        """Seconds until `key` is under its limit again (0 if it is now)."""
        wait = 0.0
        blocked = self._blocked.get(key)
        if blocked is not None:
            if blocked > now:
                wait = blocked - now
            else:
                del self._blocked[key]
        times = self._failures.get(key)
        if times is not None:
            while times and now - times[0] >= self.window:
                times.popleft()
            if len(times) >= self._limits[key[0]]:
                wait = max(wait, times[0] + self.window - now)
            elif not times:
                del self._failures[key]
        return wait

    def limiting(
        self, account: str, client: str, now: float, token: bool = False
    ) -> tuple[Key, ...]:
        """The keys whose limits apply to an attempt: only the pair's for an address known
        to the account; else all three, or the pair's and the address's for a `token`."""
        keys = self.keys(account, client)
        if self.known(account, client, now):
            return keys[:1]
        return keys[:2] if token else keys

    def retry_after(self, account: str, client: str, now: float, token: bool = False) -> int:
        """0 if an attempt may go on, else how many seconds until it may."""
        wait = 0.0
        for key in self.limiting(account, client, now, token):
            wait = max(wait, self._retry_after(key, now))
        return math.ceil(wait) if wait > 0 else 0

    def failures(self, client: str, now: float) -> int:
        """Recent failures from `client` (what orders the queue of password checks)."""
        times = self._failures.get(("client", client))
        return sum(1 for t in times if now - t < self.window) if times else 0

    def reserve(self, account: str, client: str, now: float, token: bool = False) -> Reservation:
        """Count an attempt about to be checked as a failure until `succeeded` says otherwise
        (a `token`'s: not against the account).

        The caller checked `retry_after` first; the limits are checked again here because
        the caller may have awaited (an etcd read) in between.
        """
        keys = self.keys(account, client)[: 2 if token else 3]
        for key in keys:
            times = self._failures.get(key)
            if times is None:
                times = self._failures[key] = deque(maxlen=self._limits[key[0]])
            self._failures.move_to_end(key)
            times.append(now)
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)
        return Reservation(keys, now, account, client)

    def succeeded(self, res: Reservation, now: float) -> None:
        """The check passed: it is no failure, and the address is known for the account."""
        if not res.done:
            self._undo(res)
            self.remember(res.account, res.client, now)

    def failed(self, res: Reservation) -> None:
        res.done = True  # the reserved entries stay: they are the failure

    def cancelled(self, res: Reservation) -> None:
        """The check did not run to a result: count nothing."""
        if not res.done:
            self._undo(res)

    def _undo(self, res: Reservation) -> None:
        res.done = True
        for key in res.keys:
            times = self._failures.get(key)
            if times is not None:
                # (ValueError: pushed out by newer failures, nothing to undo)
                with contextlib.suppress(ValueError):
                    times.remove(res.stamp)

    def remember(self, account: str, client: str, now: float) -> None:
        self._known[(account, client)] = now
        self._known.move_to_end((account, client))
        while len(self._known) > self.max_keys:
            self._known.popitem(last=False)

    def block(self, key: Key, until: float) -> None:
        """Another replica's counts put `key` over its limit until `until`."""
        self._blocked[key] = max(until, self._blocked.get(key, 0.0))
        self._blocked.move_to_end(key)
        while len(self._blocked) > self.max_keys:
            self._blocked.popitem(last=False)

    def limit(self, key: Key) -> int:
        return self._limits[key[0]]
