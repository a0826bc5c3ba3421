"""Account changes in the journal (meta/account_journal.py), over the in-memory store and a
real journal file: every account write is journaled before it returns, the journal holds
hashes only, and replaying it onto what a backup held gives exactly the accounts of the
store that wrote it (twice, or from further back, the same); forged entries are refused."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from moorage.auth import access_tokens
from moorage.errors import RecordCorrupt
from moorage.meta import account_journal, keys
from moorage.meta.account_records import GrantRecord
from moorage.meta.accounts import Accounts
from moorage.meta.base import Delete, Put
from moorage.meta.memory import MemoryMetaStore
from moorage.meta.policies import Policies
from moorage.meta.policy_records import PolicyRecord
from moorage.meta.records import UserRecord
from moorage.meta.snapshot import Entry, from_kv
from moorage.recovery.journal_replay import apply, check_entry, read_plan
from moorage.storage.journal import Journal, read_entries

CLUSTER = "c0ffee"
ADMIN = access_tokens.Caller("root", admin=True)


async def _entries(meta: MemoryMetaStore) -> list[Entry]:
    """What a backup of `meta` holds."""
    out: list[Entry] = []
    async for page in meta._scan(keys.ROOT, keys.prefix_end(keys.ROOT)):
        out += [e for e in (from_kv(kv.key, kv.value) for kv in page) if e is not None]
    return out


async def _accounts_state(meta: MemoryMetaStore) -> dict[bytes, bytes]:
    """Every account key and its value (tokens' last-use stamps are never restored)."""
    state: dict[bytes, bytes] = {}
    async for page in meta._scan(keys.ROOT, keys.prefix_end(keys.ROOT)):
        for kv in page:
            kind = (keys.parse(kv.key) or ("", ()))[0]
            if kind in account_journal.REF_FIELDS and kind != "access_token_used":
                state[kv.key] = kv.value
    return state


async def _journaled(meta: MemoryMetaStore, root: Path) -> Journal:
    """`meta` journaling its account changes as a replica's store does (the key made at
    its first start, by bootstrap)."""
    await account_journal.ensure_journal_key(meta)
    journal = Journal(root, "w1", 1, CLUSTER)
    meta.account_log = account_journal.journal_to(journal.append, meta)
    return journal


def test_replaying_the_journal_onto_a_backup_gives_the_last_state(tmp_path: Path) -> None:
    async def run() -> None:
        meta = MemoryMetaStore()
        accounts = Accounts(meta)
        for name in ("root", "alice", "bob", "carol", "dave"):
            await accounts.add_user(UserRecord(name, f"hash-{name}", admin=name == "root"))
        await accounts.add_org("acme")
        await accounts.add_team("acme", "devs")
        await accounts.add_member("acme", "devs", "dave")
        await accounts.put_grant(GrantRecord("acme", "team:acme/devs", "read"))
        await accounts.put_grant(GrantRecord("acme/app", "user:carol", "write"))
        kept = await access_tokens.create(meta, ADMIN, ["repository:acme/app:pull"], "30d", "ci")
        doomed = await access_tokens.create(meta, access_tokens.Caller("alice", False),
                                            ["repository:acme/*:pull"])  # fmt: skip
        await access_tokens.touch(meta, doomed["id"], "10.0.0.1")
        journal = await _journaled(meta, tmp_path)
        backup, after = await _entries(meta), await meta.revision()
        assert "journal_key" in {e.kind for e in backup}

        new = await access_tokens.create(meta, ADMIN, ["repository:acme/app:push"], None, "ci")
        await access_tokens.revoke(meta, ADMIN, doomed["token"])
        await accounts.change_user("carol", lambda u: dataclasses.replace(u, disabled=True))
        await accounts.delete_grant("acme/app", "user:carol")
        await accounts.add_member("acme", "devs", "bob")
        await accounts.delete_user("dave")  # its membership and grants go with it
        await accounts.add_team("acme", "ops")
        await accounts.add_member("acme", "ops", "alice")
        await accounts.delete_team("acme", "ops")
        await accounts.set_public("acme/app", True)
        await accounts.add_org("gone")
        await accounts.delete_org("gone")
        await meta.put_user(UserRecord("root", "hash-root-2", admin=True))
        journal.close()
        final = await _accounts_state(meta)

        # Hashes only: neither token's secret is in the journal.
        raw = b"".join(p.read_bytes() for p in (tmp_path / "journal").iterdir())
        for token in (kept, doomed, new):
            assert token["token"].split("_")[2].encode() not in raw
        assert json.dumps(access_tokens.secret_hash(new["token"].split("_")[2])).encode() in raw

        plan = await read_plan(tmp_path, CLUSTER, (1, after))
        assert plan.rejected == []
        assert {e["op"] for e in plan.entries} == {"accounts"}
        changes = plan.summary()["changes"]
        assert f"accounts: set token {new['id']}" in changes
        assert f"accounts: delete token {doomed['id']}" in changes
        assert "accounts: set user carol" in changes
        assert "accounts: delete grant on acme/app to user:carol" in changes

        restored = MemoryMetaStore()
        await restored.load(backup)
        result = await apply(restored, tmp_path, plan)
        assert result.unrecoverable == []
        assert result.applied == len(plan.entries)
        assert await _accounts_state(restored) == final
        # Again, and from the start of the journal onto the final store: nothing changes.
        await apply(restored, tmp_path, await read_plan(tmp_path, CLUSTER, (0, 0)))
        await apply(meta, tmp_path, await read_plan(tmp_path, CLUSTER, (0, 0)))
        assert await _accounts_state(restored) == final == await _accounts_state(meta)
        check = access_tokens.check
        assert await check(restored, "robot+ci", new["token"]) is not None
        assert await check(restored, "alice", doomed["token"]) is None  # revoked stays so
        assert await access_tokens.live(restored, kept["id"])
        assert await restored._get(keys.access_token_used(doomed["id"])) is None
        assert await Accounts(restored).teams_of("bob") == ("acme/devs",)
        assert await Accounts(restored).teams_of("dave") == ()

    asyncio.run(run())


def test_a_change_not_committed_is_not_journaled(tmp_path: Path) -> None:
    """A refused transaction (a guard that fails) writes no entry; a committed one waits
    for the journal: a journal that cannot be written fails the call."""

    async def run() -> None:
        meta = MemoryMetaStore()
        accounts = Accounts(meta)
        await accounts.add_user(UserRecord("alice", "h"))
        await _journaled(meta, tmp_path)
        assert not await meta.create_user(UserRecord("alice", "other"))
        assert list(read_entries(tmp_path)) == []
        await accounts.add_org("acme")
        assert [e["set"] for e in read_entries(tmp_path)] == [[{"kind": "org", "name": "acme"}]]

        async def broken(entry: dict[str, Any], seal: account_journal.Seal) -> None:
            raise OSError("disk full")

        meta.account_log = account_journal.journal_to(broken, meta)
        with pytest.raises(OSError, match="disk full"):
            await accounts.add_org("other")

    asyncio.run(run())


def _entry(**change: Any) -> dict[str, Any]:
    doc = {"c": CLUSTER, "e": 1, "r": 5, "op": "accounts", "set": [], "delete": [], **change}
    return {**doc, "mac": "0" * 64}


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        (_entry(set=[{"kind": "tag", "repo": "a/b", "tag": "v1", "digest": "sha256:" + "0" * 64,
                      "media_type": "application/vnd.oci.image.manifest.v1+json", "size": 1}]),
         "a tag record in an accounts entry"),
        (_entry(set=[{"kind": "user", "name": "a", "password_hash": "h", "admin": "yes"}]),
         "non-boolean admin"),
        (_entry(delete=[{"kind": "user", "name": "a", "extra": 1}]), "invalid deleted key"),
        (_entry(delete=[{"kind": "grant", "target": "../etc", "subject": "user:a"}]), "invalid"),
        (_entry(delete=[{"kind": "access_token", "id": "../../x"}]), "invalid token id"),
        (_entry(delete=[{"kind": "access_token_owner", "owner": "a@b", "id": "0" * 16}]),
         "invalid token owner"),
        (_entry(delete=[{"kind": "heartbeat", "name": "r1"}]), "invalid deleted key"),
        (_entry(set=None), "needs the lists"),
        ({**_entry(), "mac": None}, "without its MAC"),
        (_entry(delete=[{"kind": "public", "repo": "a/b"}] * 2000), "more than 1024"),
    ],
)  # fmt: skip
def test_forged_account_entries_are_refused(entry: dict[str, Any], why: str) -> None:
    with pytest.raises(RecordCorrupt, match=why):
        check_entry(entry)


def test_refs_name_the_keys_they_were_made_from() -> None:
    deleted = [
        keys.user("alice"), keys.org("acme"), keys.team("acme", "devs"),
        keys.membership("bob", "acme", "devs"), keys.grant("acme/app", "team:acme/devs"),
        keys.public("acme/app"), keys.access_token("0123456789abcdef"),
        keys.access_token_owner("robot+ci", "0123456789abcdef"),
        keys.access_token_used("0123456789abcdef"), keys.policy("acme/app"),
    ]  # fmt: skip
    change = account_journal.change_of(
        [*(Delete(k) for k in deleted), Put(keys.repo("a/b"), b"{}")]
    )
    assert change is not None
    assert [account_journal.key_of_ref(r) for r in change["delete"]] == deleted
    assert account_journal.change_of([Put(keys.tag("a/b", "v1"), b"{}")]) is None


def test_only_entries_the_cluster_key_authenticates_are_replayed(tmp_path: Path) -> None:
    """Whoever can write blob storage can append a well-formed line: a forged admin, an
    authentic entry moved to a later revision, or any entry replayed into a store without
    the key (an old backup) is refused and reported, never applied."""

    async def run() -> None:
        meta = MemoryMetaStore()
        await _journaled(meta, tmp_path)
        after = await meta.revision()
        await Accounts(meta).add_user(UserRecord("alice", "h"))
        (real,) = read_entries(tmp_path)
        forged_admin = {**real, "r": real["r"] + 1, "set": [
            {"kind": "user", "name": "evil", "password_hash": "h", "role": "admin",
             "admin": True, "disabled": False}]}  # fmt: skip
        other_key = account_journal.sealed(bytes(32))(forged_admin)
        moved = {**real, "r": real["r"] + 2}
        with open(tmp_path / "journal" / "forger.jsonl", "w") as fh:
            for line in (forged_admin, other_key, moved):
                fh.write(json.dumps(line) + "\n")
        plan = await read_plan(tmp_path, CLUSTER, (1, after))
        assert len(plan.entries) == 4  # well-formed, so planned: authenticated when applied

        restored = MemoryMetaStore()
        await restored.load(await _entries(meta))  # the key, as a backup carries it
        await restored._txn([], [Delete(keys.user("alice"))])
        result = await apply(restored, tmp_path, plan)
        assert result.applied == 1
        assert len(result.unrecoverable) == 3
        assert all("MAC does not match" in line for line in result.unrecoverable)
        assert await restored.get_user("alice") is not None
        assert await restored.get_user("evil") is None

        keyless = MemoryMetaStore()  # a backup older than the key
        result = await apply(keyless, tmp_path, plan)
        assert result.applied == 0
        assert await keyless.get_user("alice") is None

    asyncio.run(run())


def test_policy_changes_are_journaled_and_replayed(tmp_path: Path) -> None:
    """`Policies.change` writes through `_account_txn`: a policy set, a policy set then
    unset whole (deleted), each one journal entry; replayed onto the backup's store they
    give the last state."""

    async def run() -> None:
        meta = MemoryMetaStore()
        journal = await _journaled(meta, tmp_path)
        policies = Policies(meta)
        backup, after = await _entries(meta), await meta.revision()
        await policies.change("acme", lambda old: PolicyRecord("acme", keep_last=3))
        await policies.change("gone", lambda old: PolicyRecord("gone", allow_sparse=True))
        await policies.change("gone", lambda old: PolicyRecord("gone"))  # empty: deleted
        journal.close()
        plan = await read_plan(tmp_path, CLUSTER, (1, after))
        assert plan.summary()["changes"] == [
            "accounts: set policy acme",
            "accounts: set policy gone",
            "accounts: delete policy gone",
        ]
        restored = MemoryMetaStore()
        await restored.load(backup)
        result = await apply(restored, tmp_path, plan)
        assert result.unrecoverable == []
        assert await Policies(restored).get("acme") == PolicyRecord("acme", keep_last=3)
        assert await restored._get(keys.policy("gone")) is None

    asyncio.run(run())
