"""auth/: Basic header parsing, failed-login limits (with a fake clock: the throttle takes
`now`), the password verifier and the authenticator over the in-memory store."""

from __future__ import annotations

import asyncio
import base64
import dataclasses

import pytest
from argon2 import PasswordHasher

from moorage.auth.access import ANONYMOUS
from moorage.auth.basic import MAX_HEADER, BasicAuthenticator, _client_key, parse_basic
from moorage.auth.passwords import verify_password
from moorage.auth.throttle import LoginThrottle
from moorage.auth.verifier import PasswordVerifier
from moorage.errors import LoginThrottled
from moorage.meta.memory import MemoryMetaStore
from moorage.meta.records import UserRecord

_CHEAP = PasswordHasher(time_cost=1, memory_cost=256, parallelism=1)


def basic(credential: bytes) -> str:
    return "Basic " + base64.b64encode(credential).decode()


def test_parse_basic() -> None:
    assert parse_basic(basic(b"alice:s3cret")) == ("alice", "s3cret", "alice:s3cret")
    assert parse_basic("  basic  " + base64.b64encode(b"a:b").decode() + " ") == ("a", "b", "a:b")
    # The password may contain colons and be empty.
    assert parse_basic(basic(b"a:x:y")) == ("a", "x:y", "a:x:y")
    assert parse_basic(basic(b"a:")) == ("a", "", "a:")
    for bad in (
        None,
        "",
        "Basic",
        "Bearer " + base64.b64encode(b"a:b").decode(),
        basic(b"no-colon"),
        basic(b":no-name"),
        basic(b"a:\xff"),
        "Basic YWJj",  # "abc": no colon
        "Basic YQ",  # bad padding
        "Basic " + "A" * MAX_HEADER,
        "Basic \u00e9",
    ):
        assert parse_basic(bad) is None, bad


def test_client_keys() -> None:
    assert _client_key(None) == "unknown"
    assert _client_key("192.0.2.7") == "192.0.2.7"
    assert _client_key("2001:db8::1") == _client_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert _client_key("2001:db8:0:1::1") != _client_key("2001:db8::1")
    assert _client_key("not:an:address") == "not:an:address"


def fail(t: LoginThrottle, account: str, client: str, now: float) -> None:
    assert t.retry_after(account, client, now) == 0
    t.failed(t.reserve(account, client, now))


def test_pair_limit_and_window() -> None:
    t = LoginThrottle(pair_limit=3, client_limit=100, account_limit=100, window=60)
    for i in range(3):
        fail(t, "alice", "10.0.0.1", 1000.0 + i)
    assert t.failures("10.0.0.1", 1010.0) == 3
    # The oldest counted failure (at 1000) leaves the window at 1060.
    assert t.retry_after("alice", "10.0.0.1", 1010.0) == 50
    assert t.retry_after("alice", "10.0.0.1", 1059.5) == 1
    assert t.retry_after("alice", "10.0.0.1", 1060.0) == 0
    # Other accounts from that address, and that account from others, are not limited.
    assert t.retry_after("bob", "10.0.0.1", 1010.0) == 0
    assert t.retry_after("alice", "10.0.0.2", 1010.0) == 0
    assert t.failures("10.0.0.1", 1061.5) == 1


def test_client_limit_stops_password_spraying() -> None:
    t = LoginThrottle(pair_limit=100, client_limit=3, account_limit=100, window=60)
    for i, account in enumerate(("a", "b", "c")):
        fail(t, account, "10.0.0.1", 100.0 + i)
    assert t.retry_after("d", "10.0.0.1", 110.0) == 50
    assert t.retry_after("d", "10.0.0.2", 110.0) == 0


def test_client_limit_spares_accounts_known_at_that_address() -> None:
    """Spraying unknown names from an address many clients share (a proxy) does not lock
    out the accounts that log in from it; the pair's own limit still holds for them."""
    t = LoginThrottle(pair_limit=2, client_limit=3, account_limit=100, window=60)
    t.succeeded(t.reserve("ci", "10.0.0.1", 0.0), 0.0)
    for i in range(3):
        fail(t, f"ghost{i}", "10.0.0.1", 10.0 + i)
    assert t.retry_after("someone-new", "10.0.0.1", 20.0) == 50
    assert t.retry_after("ci", "10.0.0.1", 20.0) == 0
    for i in range(2):
        fail(t, "ci", "10.0.0.1", 21.0 + i)
    assert t.retry_after("ci", "10.0.0.1", 25.0) == 56


def test_account_limit_spares_known_clients() -> None:
    t = LoginThrottle(pair_limit=100, client_limit=100, account_limit=3, window=60)
    t.succeeded(t.reserve("admin", "10.0.0.9", 0.0), 0.0)  # the operator logged in once
    for i in range(3):
        fail(t, "admin", f"10.1.0.{i}", 10.0 + i)
    assert t.retry_after("admin", "10.1.0.99", 20.0) == 50  # a new address is refused
    assert t.retry_after("admin", "10.0.0.9", 20.0) == 0  # the operator is not locked out
    assert t.known("admin", "10.0.0.9", 20.0)
    assert not t.known("admin", "10.1.0.1", 20.0)


def test_a_check_in_progress_counts_until_it_succeeds() -> None:
    t = LoginThrottle(pair_limit=2, client_limit=100, account_limit=100, window=60)
    first = t.reserve("alice", "c", 0.0)
    second = t.reserve("alice", "c", 0.5)
    # Two checks running: a third is refused before it runs.
    assert t.retry_after("alice", "c", 1.0) == 59
    t.succeeded(first, 1.0)
    assert t.retry_after("alice", "c", 1.0) == 0
    t.cancelled(second)  # did not run to a result: counts nothing
    assert t.failures("c", 1.0) == 0
    t.succeeded(second, 1.0)  # already settled: no effect
    assert t.failures("c", 1.0) == 0


def test_blocks_from_other_replicas() -> None:
    t = LoginThrottle(window=60)
    t.block(("pair", "alice", "c"), 100.0)
    t.block(("pair", "alice", "c"), 50.0)  # an earlier end does not shorten it
    assert t.retry_after("alice", "c", 10.0) == 90
    assert t.retry_after("alice", "c", 100.0) == 0


def test_memory_is_bounded() -> None:
    t = LoginThrottle(pair_limit=1, client_limit=1000, account_limit=1000, window=60, max_keys=10)
    for i in range(100):
        t.failed(t.reserve(f"user{i}", f"10.0.{i}.1", 0.0))
        t.remember(f"user{i}", "10.9.9.9", 0.0)
        t.block(("pair", f"user{i}", "x"), 10.0)
    assert len(t._failures) <= 10
    assert len(t._known) <= 10
    assert len(t._blocked) <= 10
    # The newest are kept.
    assert t.retry_after("user99", "10.0.99.1", 1.0) == 59
    assert t.known("user99", "10.9.9.9", 1.0)
    assert not t.known("user0", "10.9.9.9", 1.0)


def test_verifier_shares_one_check_per_credential() -> None:
    good = _CHEAP.hash("pw")

    async def scenario() -> tuple[list[bool], int]:
        v = PasswordVerifier(workers=1)
        results = await asyncio.gather(
            *(v.verify(b"key", good, "pw", 0) for _ in range(5)),
            v.verify(b"other", good, "wrong", 0),
        )
        return list(results), v.checks

    results, checks = asyncio.run(scenario())
    assert results == [True] * 5 + [False]
    assert checks == 2


def test_verifier_refuses_beyond_its_queue() -> None:
    good = _CHEAP.hash("pw")

    async def scenario() -> LoginThrottled:
        v = PasswordVerifier(workers=1, max_waiting=2)
        # One check starts at once; two more wait; a fourth is refused.
        tasks = [asyncio.ensure_future(v.verify(bytes([i]), good, "pw", 0)) for i in range(3)]
        await asyncio.sleep(0)
        try:
            with pytest.raises(LoginThrottled) as refused:
                await v.verify(b"late", good, "pw", 0)
            return refused.value
        finally:
            assert await asyncio.gather(*tasks) == [True, True, True]

    refused = asyncio.run(scenario())
    assert refused.retry_after >= 1
    assert "retry shortly" in refused.message


def test_authenticator_over_the_memory_store() -> None:
    async def scenario() -> None:
        meta = MemoryMetaStore()
        await meta.create_user(UserRecord("alice", _CHEAP.hash("pw")))
        auth = BasicAuthenticator(meta, LoginThrottle(pair_limit=2), PasswordVerifier())
        identity = await auth.authenticate(basic(b"alice:pw"), "10.0.0.1")
        assert identity is not None
        assert identity.name == "alice"
        assert await auth.authenticate(basic(b"alice:bad"), "10.0.0.1") is None
        assert await auth.authenticate(None, "10.0.0.1") == ANONYMOUS  # then authorized
        assert await auth.authenticate(basic(b"x" * 300 + b":pw"), "10.0.0.1") is None
        assert await auth.authenticate(basic(b"alice:bad2"), "10.0.0.1") is None
        # Two failures from this address: refused, even the good password (no free guesses
        # against the cache of verified credentials).
        with pytest.raises(LoginThrottled) as refused:
            await auth.authenticate(basic(b"alice:pw"), "10.0.0.1")
        assert refused.value.retry_after > 0
        assert "retry in" in refused.value.message
        # From elsewhere the verified credential still works.
        again = await auth.authenticate(basic(b"alice:pw"), "10.0.0.2")
        assert again is not None
        assert again.name == "alice"

    asyncio.run(scenario())


def test_verify_password_on_garbage_hashes() -> None:
    assert not verify_password("not a hash", "pw")
    assert not verify_password(_CHEAP.hash("pw"), "other")
    assert verify_password(_CHEAP.hash("pw"), "pw")


class _CountingLedger:
    """The cluster's failure counts, as a slow store answers them: every read counted."""

    def __init__(self) -> None:
        self.reads = 0
        self.recorded = 0

    async def retry_after(self, keys: object, limits: list[int]) -> list[float]:
        self.reads += 1
        await asyncio.sleep(0.05)
        return [0.0] * len(limits)

    async def known(self, account: str, client: str) -> bool:
        self.reads += 1
        await asyncio.sleep(0.05)
        return False

    async def remember(self, account: str, client: str) -> None:
        pass

    async def record(self, keys: object) -> None:
        self.recorded += 1


def test_a_burst_without_a_verification_reads_the_cluster_counts_once() -> None:
    """Every request of a burst that finds no verified credential (the first ones, or those
    in flight when it expires) shares one check from its reading of the failure counts on:
    each used to read the counts itself (hundreds of reads at once on a busy replica)."""

    async def scenario() -> None:
        meta = MemoryMetaStore()
        await meta.create_user(UserRecord("alice", _CHEAP.hash("pw")))
        auth = BasicAuthenticator(meta, LoginThrottle(), PasswordVerifier())
        ledger = _CountingLedger()
        auth.ledger = ledger  # type: ignore[assignment]  # the same methods, counted
        burst = [auth.authenticate(basic(b"alice:pw"), "10.0.0.1") for _ in range(50)]
        found = await asyncio.gather(*burst)
        assert all(p is not None and p.name == "alice" for p in found)
        assert ledger.reads == 2  # the address's history once, the counts once
        # the verification expired: the next burst checks once again, still one reading
        auth._verified = {
            k: dataclasses.replace(v, at=v.at - 3600) for k, v in auth._verified.items()
        }
        found = await asyncio.gather(
            *(auth.authenticate(basic(b"alice:pw"), "10.0.0.1") for _ in range(50))
        )
        assert all(p is not None for p in found)
        assert ledger.reads <= 4
        # a wrong password in a burst: refused for all, one failure counted
        bad = await asyncio.gather(
            *(auth.authenticate(basic(b"alice:nope"), "10.0.0.2") for _ in range(20))
        )
        assert bad == [None] * 20
        assert ledger.recorded == 1
        assert not auth._flows

    asyncio.run(scenario())
