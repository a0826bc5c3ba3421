"""The access policy (auth/policy.py) over the in-memory store: roles, teams, namespaces,
public repositories, limits, disabled and deleted accounts, the catalog filter; the account
records' decoding (old user records) and their round trip through backups (meta/snapshot)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses

import pytest
from argon2 import PasswordHasher

from moorage.auth.access import ANONYMOUS, Access, Principal, password_mark
from moorage.auth.access_tokens import Caller
from moorage.auth.access_tokens import create as create_token
from moorage.auth.basic import BasicAuthenticator
from moorage.auth.policy import AccessView, Policy
from moorage.errors import RecordCorrupt
from moorage.meta import access_tokens as stored_tokens
from moorage.meta import keys
from moorage.meta.account_records import GrantRecord, TeamRecord
from moorage.meta.accounts import AccountConflict, AccountMissing, Accounts
from moorage.meta.base import Delete, Put
from moorage.meta.memory import MemoryMetaStore
from moorage.meta.records import UserRecord
from moorage.meta.snapshot import RESTORED_KINDS, from_json, from_kv, to_json, to_kv

ALL = frozenset({"pull", "push", "delete"})


def repo(name: str, *actions: str) -> Access:
    return Access("repository", name, frozenset(actions or ALL))


def user(name: str, **kw: object) -> Principal:
    return Principal(name, "user", **kw)  # type: ignore[arg-type]


async def _world() -> tuple[MemoryMetaStore, Accounts, Policy]:
    meta = MemoryMetaStore()
    accounts = Accounts(meta)
    for name, admin in [("root", True), ("reader", False), ("dev", False), ("boss", False)]:
        await accounts.add_user(UserRecord(name, "h", "admin" if admin else "user", admin=admin))
    await accounts.add_org("acme")
    await accounts.add_team("acme", "devs")
    await accounts.add_member("acme", "devs", "dev")
    await accounts.put_grant(GrantRecord("acme", "team:acme/devs", "write"))
    await accounts.put_grant(GrantRecord("acme/app", "user:reader", "read"))
    await accounts.put_grant(GrantRecord("acme", "user:boss", "admin"))
    return meta, accounts, Policy(AccessView(meta))


def test_roles_teams_namespaces_and_public() -> None:
    async def run() -> None:
        _, accounts, policy = await _world()
        allowed = policy.allowed
        assert await allowed(user("root"), repo("any/thing")) == ALL
        assert await allowed(user("reader"), repo("acme/app")) == {"pull"}
        assert await allowed(user("reader"), repo("acme/other")) == set()
        assert await allowed(user("dev"), repo("acme/app")) == {"pull", "push"}
        assert await allowed(user("dev"), repo("acme/deep/er")) == {"pull", "push"}
        assert await allowed(user("dev"), repo("acmeco/app")) == set()  # not a prefix match
        assert await allowed(user("boss"), repo("acme/app")) == ALL
        assert await allowed(user("dev"), repo("dev/mine")) == ALL  # its own namespace
        assert await allowed(ANONYMOUS, repo("acme/app")) == set()
        await accounts.set_public("acme/app", True)
        assert await allowed(ANONYMOUS, repo("acme/app")) == {"pull"}
        assert await allowed(user("dev"), repo("acme/app", "pull", "delete")) == {"pull"}
        await accounts.remove_member("acme", "devs", "dev")
        assert await allowed(user("dev"), repo("acme/lib")) == set()
        catalog = Access("registry", "catalog", frozenset({"*"}))
        assert await allowed(user("dev"), catalog) == {"*"}
        assert await allowed(ANONYMOUS, catalog) == set()
        assert await allowed(user("x"), repo("x/y", "*")) == set()  # no such account

    asyncio.run(run())


def test_limits_disabled_and_deleted_accounts() -> None:
    async def run() -> None:
        _, accounts, policy = await _world()
        token = user("boss", limit=(repo("acme/app", "pull"),), token_id="t1")
        assert await policy.allowed(token, repo("acme/app")) == {"pull"}
        assert await policy.allowed(token, repo("acme/lib")) == set()
        # a token of a user whose grant goes away holds nothing, whatever its limit says
        await accounts.delete_grant("acme/app", "user:reader")
        reader_token = user("reader", limit=(repo("acme/app", "pull"),))
        assert await policy.allowed(reader_token, repo("acme/app")) == set()
        await accounts.change_user("boss", lambda u: dataclasses.replace(u, disabled=True))
        assert await policy.allowed(user("boss"), repo("acme/app")) == set()
        assert await policy.allowed(user("boss"), repo("boss/own")) == set()
        await accounts.delete_user("dev")
        assert await policy.allowed(user("dev"), repo("dev/own")) == set()
        assert await accounts.teams_of("dev") == ()
        team = await accounts.team("acme", "devs")
        assert team == TeamRecord("acme", "devs", ())

    asyncio.run(run())


def test_pullable_filters_a_page() -> None:
    async def run() -> None:
        _, accounts, policy = await _world()
        await accounts.set_public("other/pub", True)
        names = ["acme/app", "acme/lib", "dev/x", "other/pub", "other/secret", "reader/r"]
        assert await policy.pullable(user("reader"), names) == ["acme/app", "other/pub", "reader/r"]
        assert await policy.pullable(user("dev"), names) == [
            "acme/app",
            "acme/lib",
            "dev/x",
            "other/pub",
        ]
        assert await policy.pullable(ANONYMOUS, names) == ["other/pub"]
        assert await policy.pullable(user("root"), names) == names

    asyncio.run(run())


def test_one_decision_and_the_catalog_filter_agree() -> None:
    """`allowed` reads a user's grants by key, `pullable` a namespace's at once: the same
    answers, for odd names too (one with no namespace held a whole namespace's record
    where the subjects belonged: a 500)."""

    async def run() -> None:
        _, accounts, policy = await _world()
        await accounts.set_public("acme/pub", True)
        await accounts.put_grant(GrantRecord("acme/deep/er", "user:reader", "write"))
        names = ["/x", "/acme/app", "acme/", "acme//app", "acme", "acme/app", "acme/deep/er"]
        names += ["acme/pub", "a@b", "acme@user:reader", "dev/x", "reader/r", "*", "acme/*"]
        for who in (user("reader"), user("dev"), user("boss"), user("root"), ANONYMOUS):
            one = [n for n in names if "pull" in await policy.allowed(who, repo(n, "pull"))]
            assert await policy.pullable(who, names) == one, who

    asyncio.run(run())


def test_a_deleted_users_name_starts_clean() -> None:
    """Deleting a user takes its memberships, tokens and grants; a user made again under
    the name holds none of them (nor what an interrupted delete left behind)."""

    async def run() -> None:
        meta, accounts, policy = await _world()
        token = await create_token(meta, Caller("dev", False), ["repository:acme/app:pull"])
        await accounts.put_grant(GrantRecord("acme/lib", "user:dev", "admin"))
        await accounts.delete_user("dev")
        assert await accounts.teams_of("dev") == ()
        assert (await accounts.team("acme", "devs")).members == ()  # type: ignore[union-attr]
        assert await stored_tokens.get(meta, token["id"]) is None
        grants, _ = await accounts.grants(None, 100, None)
        assert "user:dev" not in {g.subject for g in grants}
        # What an interrupted delete would leave: a membership key and a token's index key.
        await meta._txn([], [Put(keys.membership("dev", "acme", "devs"), b"{}")])
        await meta._txn([], [Put(keys.access_token_owner("dev", "0" * 16), b"{}")])
        await accounts.add_user(UserRecord("dev", "h", "user"))
        assert await accounts.teams_of("dev") == ()
        assert await stored_tokens.owned_ids(meta, "dev", 10) == []
        assert await policy.allowed(user("dev"), repo("acme/app")) == frozenset()
        with pytest.raises(AccountMissing):
            await accounts.delete_user("dev-not-there")

    asyncio.run(run())


def test_the_last_enabled_admin_stays() -> None:
    async def run() -> None:
        meta, accounts, _ = await _world()
        with pytest.raises(AccountConflict, match="last enabled cluster admin"):
            await accounts.change_user("root", lambda u: dataclasses.replace(u, disabled=True))
        with pytest.raises(AccountConflict, match="last enabled cluster admin"):
            await accounts.delete_user("root")
        await accounts.add_user(UserRecord("root2", "h", "admin", admin=True))
        # Two replicas disabling the two admins at once: each change is guarded by the
        # other admin's record, so after one wins the other is read again and refused.
        root2 = await accounts.user("root2")
        assert root2 is not None
        guard_root = await accounts._keeping_an_admin(root2)  # root2's delete, read now
        await accounts.change_user("root", lambda u: dataclasses.replace(u, disabled=True))
        key = keys.user("root2")
        kv = await meta._get(key)
        assert kv is not None
        assert not await meta._txn([(key, kv.mod_revision), *guard_root], [Delete(key)])
        with pytest.raises(AccountConflict, match="last enabled cluster admin"):
            await accounts.delete_user("root2")

    asyncio.run(run())


def test_account_store_refuses_conflicts() -> None:
    async def run() -> None:
        _, accounts, _ = await _world()
        with pytest.raises(AccountConflict):
            await accounts.add_org("dev")  # a user's namespace
        with pytest.raises(AccountConflict):
            await accounts.add_user(UserRecord("acme", "h", "user"))  # an organization
        with pytest.raises(AccountMissing):
            await accounts.add_team("nosuch", "t")
        with pytest.raises(AccountMissing):
            await accounts.add_member("acme", "devs", "nobody")
        await accounts.delete_org("acme")  # its teams and their grants go with it
        assert await accounts.team("acme", "devs") is None
        grants, _ = await accounts.grants(None, 100, None)
        assert {g.subject for g in grants} == {"user:reader", "user:boss"}
        assert not await accounts.other_admin("root")
        assert await accounts.other_admin("reader")

    asyncio.run(run())


def test_old_user_records_and_forged_account_records() -> None:
    old = UserRecord.decode(b'{"name":"admin","password_hash":"h","role":"admin"}')
    assert old.admin is True
    assert old.disabled is False
    assert UserRecord.decode(UserRecord("u", "h", "user").encode()).admin is False
    with pytest.raises(RecordCorrupt):
        UserRecord.decode(b'{"name":"u","password_hash":"h","role":"user","admin":"yes"}')
    with pytest.raises(RecordCorrupt):
        GrantRecord.decode(b'{"target":"acme","subject":"user:../x","role":"read"}')
    with pytest.raises(RecordCorrupt):
        GrantRecord.decode(b'{"target":"acme","subject":"user:x","role":"owner"}')
    with pytest.raises(RecordCorrupt):
        TeamRecord.decode(b'{"org":"acme","name":"t","members":["Bad Name"]}')


def test_account_records_go_into_backups_and_come_back() -> None:
    async def run() -> None:
        meta, accounts, _ = await _world()
        await accounts.set_public("acme/app", True)
        kvs = []
        async for page in meta._scan(keys.ROOT, keys.prefix_end(keys.ROOT)):
            kvs += [(kv.key, kv.value) for kv in page]
        entries = [e for e in (from_kv(k, v) for k, v in kvs) if e is not None]
        kinds = {e.kind for e in entries}
        assert {"user", "org", "team", "membership", "grant", "public"} <= kinds
        assert kinds <= RESTORED_KINDS | {"cluster", "replica"}
        for entry in entries:
            again = from_json(to_json(entry))
            assert again == entry
            assert to_kv(again) in kvs or to_kv(again)[0] in dict(kvs)
        restored = MemoryMetaStore()
        await restored.load(entries)
        policy = Policy(AccessView(restored))
        assert await policy.allowed(user("dev"), repo("acme/app")) == {"pull", "push"}
        assert await policy.allowed(ANONYMOUS, repo("acme/app")) == {"pull"}
        with pytest.raises(RecordCorrupt):
            from_kv(
                keys.grant("acme", "user:reader"), GrantRecord("acme", "user:boss", "read").encode()
            )

    asyncio.run(run())


def test_basic_authentication_gives_principals() -> None:
    """No header and containers/image's empty Basic credentials are anonymous; a disabled
    account proves nothing, with the right password too (a 401)."""
    cheap = PasswordHasher(time_cost=1, memory_cost=256, parallelism=1)

    async def run() -> None:
        meta = MemoryMetaStore()
        root_hash = cheap.hash("pw")
        await meta.create_user(UserRecord("root", root_hash))
        await meta.create_user(UserRecord("off", cheap.hash("pw"), "user", disabled=True))
        auth = BasicAuthenticator(meta, view=AccessView(meta))
        assert await auth.authenticate(None, "10.0.0.1") == ANONYMOUS
        empty = "Basic " + base64.b64encode(b":").decode()
        assert await auth.authenticate(empty, "10.0.0.1") == ANONYMOUS
        root = await auth.authenticate(_basic("root", "pw"), "10.0.0.1")
        assert root == Principal("root", "user", admin=True, mark=password_mark(root_hash))
        assert await auth.authenticate(_basic("off", "pw"), "10.0.0.1") is None

    asyncio.run(run())


def _basic(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


def test_the_cache_serves_reads_while_the_watch_is_live_and_empties_on_change() -> None:
    async def run() -> None:
        meta, _, _ = await _world()
        view = AccessView(meta)
        reads: list[str] = []
        real = view.accounts.user

        async def counted(name: str) -> UserRecord | None:
            reads.append(name)
            return await real(name)

        view.accounts.user = counted  # type: ignore[method-assign]
        await view.user("dev")
        await view.user("dev")
        assert reads == ["dev", "dev"]  # no watch: every decision reads the store
        view._ready()  # what the etcd watch calls once it is established
        for _ in range(3):
            await view.user("dev")
        assert reads == ["dev"] * 3  # one read, then the cache
        view.invalidate()  # what the watch calls on every change
        await view.user("dev")
        assert reads == ["dev"] * 4

    asyncio.run(run())
