"""Access tokens and robot accounts over the in-memory store: the token form, scopes, expiry,
the per-owner limit, who may create/list/revoke, and the token authenticator (issue #9 item
3). The real-cluster tests are tests/test_access_tokens.py."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json

import pytest
from argon2 import PasswordHasher

from moorage.auth import access_tokens as at
from moorage.auth.access import PULL, PUSH, Access, AdminOnlyAuthorizer, Principal, limited
from moorage.auth.basic import BasicAuthenticator
from moorage.auth.throttle import LoginThrottle
from moorage.auth.token_auth import TokenAuthenticator
from moorage.errors import (
    AccessTokenRefused,
    AccessTokenUnknown,
    LoginThrottled,
    RecordCorrupt,
    TooManyAccessTokens,
)
from moorage.meta import access_tokens as stored
from moorage.meta import keys
from moorage.meta.base import Delete, Put
from moorage.meta.memory import MemoryMetaStore
from moorage.meta.records import UserRecord

_CHEAP = PasswordHasher(time_cost=1, memory_cost=256, parallelism=1)
ADMIN = at.Caller("admin", True)
ALICE = at.Caller("alice", False)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_scopes_are_checked_and_normalized() -> None:
    assert at.normalize_scopes(["repository:acme/app:push"]) == ["repository:acme/app:pull,push"]
    assert at.normalize_scopes(["repository:acme/*:*  repository:b:pull"]) == [
        "repository:acme/*:pull,push,delete",
        "repository:b:pull",
    ]
    for bad in (
        "registry:catalog:*",
        "repository:Acme/app:pull",
        "repository:acme/app:admin",
        "repository:acme/app",
        "repository:*:pull",
        "repository:acme/**:pull",
        "",
    ):
        with pytest.raises(ValueError, match=r"scope|repository|action"):
            at.normalize_scopes([bad])
    with pytest.raises(ValueError, match="at most"):
        at.normalize_scopes([f"repository:r{i}:pull" for i in range(40)])


def test_expiry_parsing() -> None:
    assert at.parse_expiry(None) == at.DEFAULT_EXPIRY
    assert at.parse_expiry("30d") == 30 * 86400
    assert at.parse_expiry("12h") == 12 * 3600
    assert at.parse_expiry("NEVER") is None
    for bad in ("30", "0d", "-1d", "30s", "11y", "1.5d", "soon"):
        with pytest.raises(ValueError, match="expiry"):
            at.parse_expiry(bad)


def test_robot_names() -> None:
    assert at.robot_name("ci") == "robot+ci"
    assert at.robot_name("robot+ci-1") == "robot+ci-1"
    for bad in ("", "CI", "a b", "x" * 65, "-ci", "ci@x", "robot+"):
        with pytest.raises(ValueError, match="bad robot name"):
            at.robot_name(bad)


def test_namespace_patterns_in_limits() -> None:
    p = Principal("r", "robot", limit=(Access("repository", "acme/*", frozenset({PULL})),))
    want = frozenset({PULL, PUSH})
    assert limited(p, Access("repository", "acme/app", want)) == {PULL}
    assert limited(p, Access("repository", "acme/a/b", want)) == {PULL}
    assert limited(p, Access("repository", "acme", want)) == frozenset()
    assert limited(p, Access("repository", "acmex/app", want)) == frozenset()
    assert limited(p, Access("registry", "catalog", frozenset({"*"}))) == frozenset()


def test_create_list_revoke_and_who_may() -> None:
    async def scenario() -> None:
        meta = MemoryMetaStore()
        # A personal token needs its user (a user deleted meanwhile keeps none).
        with pytest.raises(AccessTokenRefused, match="no longer exists"):
            await at.create(meta, ALICE, ["repository:alice/app:pull"], "30d")
        await meta.create_user(UserRecord("alice", "x", "user"))
        doc = await at.create(meta, ALICE, ["repository:alice/app:pull"], "30d")
        assert doc["username"] == "alice"
        assert doc["robot"] is False
        token_id, secret = at.split_token(doc["token"]) or ("", "")
        assert token_id == doc["id"]
        raw = (await meta._get(keys.access_token(token_id))).value  # type: ignore[union-attr]
        assert secret.encode() not in raw
        assert doc["token"].encode() not in raw
        assert json.loads(raw)["secret_hash"] == at.secret_hash(secret)
        with pytest.raises(AccessTokenRefused):  # robots: cluster admins only
            await at.create(meta, ALICE, ["repository:x:pull"], robot="ci")
        robot = await at.create(meta, ADMIN, ["repository:acme/*:push"], "never", robot="ci")
        assert robot["username"] == "robot+ci"
        assert robot["expires_at"] is None
        # A user sees only its own tokens, an admin everybody's.
        assert [t["id"] for t in (await at.listing(meta, ALICE, None, None))["tokens"]] == [
            doc["id"]
        ]
        with pytest.raises(AccessTokenRefused):
            await at.listing(meta, ALICE, "robot+ci", None)
        everyone = await at.listing(meta, ADMIN, None, None)
        assert {t["id"] for t in everyone["tokens"]} == {doc["id"], robot["id"]}
        assert all("secret_hash" not in t and "token" not in t for t in everyone["tokens"])
        # Nobody revokes another's token (it does not even exist for them).
        with pytest.raises(AccessTokenUnknown):
            await at.revoke(meta, ALICE, robot["id"])
        assert (await at.revoke(meta, ALICE, doc["token"]))["id"] == doc["id"]
        with pytest.raises(AccessTokenUnknown):
            await at.revoke(meta, ALICE, doc["id"])
        await at.revoke(meta, ADMIN, robot["id"])
        assert (await at.listing(meta, ADMIN, None, None))["tokens"] == []
        for prefix in (keys.ACCESS_TOKENS, keys.ACCESS_TOKEN_OWNERS, keys.ACCESS_TOKEN_USED):
            assert await meta._range(prefix, keys.prefix_end(prefix), 10) == ([], False)

    asyncio.run(scenario())


def test_per_owner_limit_sweeps_expired_tokens() -> None:
    async def scenario() -> None:
        meta = MemoryMetaStore()
        await meta.create_user(UserRecord("alice", "x", "user"))
        ids = [
            (await at.create(meta, ALICE, ["repository:a:pull"], "1h"))["id"]
            for _ in range(at.MAX_PER_OWNER)
        ]
        with pytest.raises(TooManyAccessTokens):
            await at.create(meta, ALICE, ["repository:a:pull"])
        # Make one expire: creating sweeps it and succeeds.
        record = await stored.get(meta, ids[0])
        assert record is not None
        old = dataclasses.replace(record, expires_at=1.0)
        await meta._txn([], [Put(keys.access_token(old.id), old.encode())])
        await at.create(meta, ALICE, ["repository:a:pull"])
        assert await stored.get(meta, ids[0]) is None
        # Listing pages through everybody's in bounded pages.
        page = await at.listing(meta, ADMIN, None, None)
        assert len(page["tokens"]) == at.MAX_PER_OWNER
        assert page["next"] is None

    asyncio.run(scenario())


def test_forged_records_are_refused() -> None:
    good = stored.AccessTokenRecord(
        "0123456789abcdef", "alice", False, "a" * 64, ["repository:a:pull"], 1.0, None, "alice"
    )
    assert stored.AccessTokenRecord.decode(good.encode()) == good
    changes: list[dict[str, object]] = [
        {"id": "../x"},
        {"owner": "a@b"},
        {"secret_hash": "zz"},
        {"scopes": []},
        {"scopes": "repository:a:pull"},
        {"expires_at": "never"},
        {"robot": 1},
    ]
    for change in changes:
        doc = json.loads(good.encode())
        doc.update(change)
        with pytest.raises(RecordCorrupt):
            stored.AccessTokenRecord.decode(json.dumps(doc))


def _authenticator(meta: MemoryMetaStore, pair_limit: int = 10) -> TokenAuthenticator:
    return TokenAuthenticator(BasicAuthenticator(meta, LoginThrottle(pair_limit=pair_limit)), meta)


def test_token_authenticator() -> None:
    async def scenario() -> None:
        meta = MemoryMetaStore()
        await meta.create_user(UserRecord("alice", _CHEAP.hash("pw"), "admin"))
        auth = _authenticator(meta, pair_limit=3)
        mine = await at.create(meta, ALICE, ["repository:alice/app:push"])
        robot = await at.create(meta, ADMIN, ["repository:acme/*:pull"], robot="ci")
        # Passwords still go to the wrapped authenticator.
        user = await auth.authenticate(basic("alice", "pw"), "10.0.0.1")
        assert user is not None
        assert (user.name, user.kind, user.admin, user.limit) == ("alice", "user", True, None)
        found = await auth.authenticate(basic("alice", mine["token"]), "10.0.0.1")
        assert found is not None
        assert found.kind == "token"
        assert found.limit is not None
        assert found.token_id == mine["id"]
        authz = AdminOnlyAuthorizer()
        wanted = frozenset({PULL, PUSH})
        assert await authz.allowed(found, Access("repository", "alice/app", wanted)) == (wanted)
        assert not await authz.allowed(found, Access("repository", "other", wanted))
        bot = await auth.authenticate(basic("robot+ci", robot["token"]), "10.0.0.1")
        assert bot is not None
        assert bot.kind == "robot"
        assert not bot.admin
        # The wrong user name, a forged secret, a forged id: failed logins, then throttled.
        forged = robot["token"][:-4] + "0000"
        other_id = "mrg_" + "f" * 16 + robot["token"][20:]
        assert await auth.authenticate(basic("alice", robot["token"]), "10.0.0.2") is None
        assert await auth.authenticate(basic("alice", forged), "10.0.0.2") is None
        assert await auth.authenticate(basic("alice", other_id), "10.0.0.2") is None
        with pytest.raises(LoginThrottled):
            await auth.authenticate(basic("alice", mine["token"]), "10.0.0.2")
        # Revoked: refused at once (every use reads the record).
        await at.revoke(meta, ADMIN, robot["id"])
        assert await auth.authenticate(basic("robot+ci", robot["token"]), "10.0.0.1") is None
        # A deleted owner's personal tokens stop.
        await meta._txn([], [Delete(keys.user("alice"))])
        assert await auth.authenticate(basic("alice", mine["token"]), "10.0.0.1") is None
        await asyncio.sleep(0)  # the background last-use writes finish
        uses = await stored.with_uses(meta, [mine["id"]])
        assert uses
        assert uses[0][1] is not None
        assert uses[0][1].client == "10.0.0.1"

    asyncio.run(scenario())


def test_expired_token_is_refused_and_not_counted() -> None:
    async def scenario() -> None:
        meta = MemoryMetaStore()
        auth = _authenticator(meta, pair_limit=2)
        robot = await at.create(meta, ADMIN, ["repository:a:pull"], robot="ci")
        record = await stored.get(meta, robot["id"])
        assert record is not None
        old = dataclasses.replace(record, expires_at=1.0)
        await meta._txn([], [Put(keys.access_token(old.id), old.encode())])
        for _ in range(4):  # more than the limit: an expired token is no guess
            assert await auth.authenticate(basic("robot+ci", robot["token"]), "10.0.0.3") is None
        assert not await at.live(meta, robot["id"])

    asyncio.run(scenario())


def test_forged_tokens_lock_out_no_account_from_elsewhere() -> None:
    """Forged tokens in a robot's name from many addresses (more failures than the account
    limit) lock out those addresses only: the robot's real token from a fresh address (a
    new CI runner) still logs in, and so does its owner's password (a probe got 429 for
    both: the failures counted against the account)."""

    async def scenario() -> None:
        meta = MemoryMetaStore()
        await meta.create_user(UserRecord("alice", _CHEAP.hash("pw"), "admin"))
        throttle = LoginThrottle(pair_limit=3, client_limit=5, account_limit=8)
        auth = TokenAuthenticator(BasicAuthenticator(meta, throttle), meta)
        robot = await at.create(meta, ADMIN, ["repository:acme/*:pull"], robot="ci")
        forged = "mrg_" + "0" * 16 + "_" + "0" * 64
        refused = 0
        for a in range(6):  # 6 addresses x 5 tries: 30 failures, well past the account's 8
            for _ in range(5):
                for name in ("robot+ci", "alice"):
                    try:
                        assert await auth.authenticate(basic(name, forged), f"10.1.0.{a}") is None
                    except LoginThrottled:
                        refused += 1
        assert refused > 0  # the spraying addresses are held to their own limits
        with pytest.raises(LoginThrottled):
            await auth.authenticate(basic("robot+ci", robot["token"]), "10.1.0.0")
        bot = await auth.authenticate(basic("robot+ci", robot["token"]), "10.2.0.1")
        assert bot is not None
        assert bot.kind == "robot"
        user = await auth.authenticate(basic("alice", "pw"), "10.2.0.2")
        assert user is not None
        assert user.name == "alice"

    asyncio.run(scenario())
