"""Account changes in the journal (moorage.storage.journal), and back.

Every committed transaction on accounts (`MetaStore._account_txn`: users, organizations,
teams, memberships, grants, public repositories, access tokens) and on repository policies
(`Policies.change`, through the same `_account_txn`) becomes one journal entry,
durable before the change is acknowledged, as a push's is. Emergency repair and restore
replay them (moorage.recovery.journal_replay), so a token revoked, a user disabled or
deleted, a grant removed, a policy set or unset after the backup (or after what the survivor
learned) stays so.

An entry holds what the transaction left, never the request that made it:

    {"op": "accounts", "r": REVISION,
     "set": [account entry, ...],     the records written (moorage.meta.account_entries)
     "delete": [key ref, ...]}        the keys deleted, by kind and fields (REF_FIELDS)

so entries replayed in revision order leave every key they touch as the last one left it,
whatever the store held before (replaying twice, or from further back, ends the same).
No secret is in it: passwords are argon2 hashes, access tokens SHA-256 hashes.

The journal lies in blob storage: whoever can write there can forge an entry, and a forged
account change could make its author a cluster admin. So every entry also carries `mac`,
the HMAC-SHA256 of the rest of the line (cluster id, epoch and revision included) under the
cluster's journal key (`keys.JOURNAL_KEY`: in etcd, made once by the first replica that
starts, carried by backups, never in blob storage). Replay applies only the entries that
the key of the store it replays into authenticates (`authentic`), and `parse_change`
validates every record and ref before anything of it is used. A MAC cannot tell that a
line was deleted: losing journal lines is losing blob storage, which no journal survives.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from moorage.errors import RecordCorrupt
from moorage.meta import keys
from moorage.meta.access_tokens import ID_FORM, MAX_OWNER
from moorage.meta.account_entries import ACCOUNT_KINDS, JournalKeyEntry, check_repo, show
from moorage.meta.account_records import check_account_name, check_subject
from moorage.meta.base import AccountLog, Delete, MetaStore, Op, Put
from moorage.meta.records import check_text
from moorage.meta.snapshot import Entry, from_json, from_kv, to_json, to_kv, to_kvs

OP = "accounts"
#: The fields of a deleted key's ref, by its kind (keys.parse's kinds).
REF_FIELDS: dict[str, tuple[str, ...]] = {
    "user": ("name",),
    "org": ("name",),
    "team": ("org", "name"),
    "membership": ("user", "org", "team"),
    "grant": ("target", "subject"),
    "public": ("repo",),
    "access_token": ("id",),
    "access_token_owner": ("owner", "id"),
    "access_token_used": ("id",),
    "policy": ("target",),
}
#: The kinds of record an entry may set: the accounts, and repository policies (whose
#: changes are journaled the same way, `Policies.change`).
JOURNALED_KINDS = ACCOUNT_KINDS | {"policy"}
#: Most records and refs one entry holds (a transaction holds at most TXN_OPS operations).
MAX_CHANGES = 1024
_MAC = re.compile(r"[0-9a-f]{64}")
Seal = Callable[[dict[str, Any]], dict[str, Any]]
Append = Callable[[dict[str, Any], Seal], Awaitable[None]]


# -- the journal key and the MAC ------------------------------------------------------------


async def journal_key(store: MetaStore) -> bytes | None:
    """The cluster's journal key (None: none yet; a corrupt record raises RecordCorrupt)."""
    kv = await store._get(keys.JOURNAL_KEY)
    return bytes.fromhex(JournalKeyEntry.decode(kv.value).key) if kv else None


async def ensure_journal_key(store: MetaStore) -> bytes:
    """The cluster's journal key, made if missing (a guarded create: one key per cluster,
    whichever replica makes it)."""
    key = await journal_key(store)
    if key is None:
        fresh = JournalKeyEntry(secrets.token_hex(32))
        await store._txn([(keys.JOURNAL_KEY, 0)], [Put(*to_kv(fresh))])
        key = await journal_key(store)
    if key is None:
        raise RecordCorrupt("the journal key vanished right after it was made")
    return key


def _mac(key: bytes, entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "mac"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def sealed(key: bytes) -> Seal:
    """What `Journal.append` seals a complete entry with: its MAC under `key`."""
    return lambda entry: {**entry, "mac": _mac(key, entry)}


def authentic(key: bytes | None, entry: dict[str, Any]) -> bool:
    """Whether `entry` was written by a replica holding `key` (constant-time compare)."""
    mac = entry.get("mac")
    if key is None or not isinstance(mac, str) or not _MAC.fullmatch(mac):
        return False
    return hmac.compare_digest(mac, _mac(key, entry))


def _ref(kind: str, parts: tuple[str, ...]) -> dict[str, str]:
    if kind == "team":
        org, _, name = parts[0].partition("/")
        return {"kind": kind, "org": org, "name": name}
    if kind == "membership":
        org, _, team = parts[1].partition("/")
        return {"kind": kind, "user": parts[0], "org": org, "team": team}
    return {"kind": kind, **dict(zip(REF_FIELDS[kind], parts, strict=True))}


def change_of(ops: Sequence[Op]) -> dict[str, Any] | None:
    """The journal entry of a committed transaction's operations (without its revision);
    None when it touched no account key.

    An access token's owner index is written with the token (`to_kvs` of its record), so
    its put is left out; last-use stamps are never restored, so neither are their puts."""
    put: list[dict[str, Any]] = []
    delete: list[dict[str, str]] = []
    for op in ops:
        parsed = keys.parse(op.key)
        if parsed is None or parsed[0] not in REF_FIELDS:
            continue
        kind, parts = parsed
        if isinstance(op, Delete):
            delete.append(_ref(kind, parts))
        elif kind in JOURNALED_KINDS:
            entry = from_kv(op.key, op.value)
            if entry is not None:
                put.append(to_json(entry))
    if not put and not delete:
        return None
    return {"op": OP, "set": put, "delete": delete}


def journal_to(append: Append, store: MetaStore) -> AccountLog:
    """`store`'s `account_log`: each change appended to a journal (`Journal.append`), sealed
    with the cluster's journal key (read once, made if missing)."""
    key: list[bytes] = []

    async def log(revision: int, ops: Sequence[Op]) -> None:
        change = change_of(ops)
        if change is None:
            return
        if not key:
            key.append(await ensure_journal_key(store))
        await append({"r": revision, **change}, sealed(key[0]))

    return log


def _owner(value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_OWNER or set("@\x00") & set(value):
        raise RecordCorrupt(f"an invalid token owner {show(value)}")
    return value


def _token_id(value: object) -> str:
    if not isinstance(value, str) or not ID_FORM.fullmatch(value):
        raise RecordCorrupt(f"an invalid token id {show(value)}")
    return value


def key_of_ref(ref: object) -> bytes:
    """The key a ref names, every field checked (RecordCorrupt otherwise)."""
    if not isinstance(ref, dict):
        raise RecordCorrupt("a deleted key's ref is not an object")
    kind = ref.get("kind")
    if kind not in REF_FIELDS or set(ref) != {"kind", *REF_FIELDS[kind]}:
        raise RecordCorrupt(f"an invalid deleted key's ref {show(ref)}")
    name = check_account_name
    if kind == "user":  # as lenient as a user record (accounts older than the name rules)
        check_text(ref["name"], "user", "name")
        return keys.user(ref["name"])
    if kind == "org":
        return keys.org(name(ref["name"], "organization"))
    if kind == "team":
        return keys.team(name(ref["org"], "team"), name(ref["name"], "team"))
    if kind == "membership":
        user, org, team = (name(ref[f], "membership") for f in ("user", "org", "team"))
        return keys.membership(user, org, team)
    if kind == "grant":
        return keys.grant(check_repo(ref["target"]), check_subject(ref["subject"], "grant"))
    if kind == "public":
        return keys.public(check_repo(ref["repo"]))
    if kind == "policy":
        return keys.policy(check_repo(ref["target"]))
    if kind == "access_token_owner":
        return keys.access_token_owner(_owner(ref["owner"]), _token_id(ref["id"]))
    if kind == "access_token":
        return keys.access_token(_token_id(ref["id"]))
    return keys.access_token_used(_token_id(ref["id"]))


def parse_change(doc: dict[str, Any]) -> tuple[list[Entry], list[bytes]]:
    """The records and deleted keys of an `accounts` entry, each validated (its MAC's form
    too: whether it is authentic needs the key, see `authentic`)."""
    if not isinstance(doc.get("mac"), str) or not _MAC.fullmatch(doc["mac"]):
        raise RecordCorrupt("an accounts entry without its MAC")
    put, delete = doc.get("set"), doc.get("delete")
    if not isinstance(put, list) or not isinstance(delete, list):
        raise RecordCorrupt("an accounts entry needs the lists 'set' and 'delete'")
    if len(put) + len(delete) > MAX_CHANGES:
        raise RecordCorrupt(f"an accounts entry with more than {MAX_CHANGES} changes")
    entries = [from_json(item) for item in put]
    for entry in entries:
        if entry.kind not in JOURNALED_KINDS:
            raise RecordCorrupt(f"a {entry.kind} record in an accounts entry")
    return entries, [key_of_ref(ref) for ref in delete]


def ops_of(entries: list[Entry], deleted: list[bytes]) -> list[Op]:
    """What replaying a change writes: its deletes, then its records."""
    ops: list[Op] = [Delete(key) for key in deleted]
    ops += [Put(key, value) for entry in entries for key, value in to_kvs(entry)]
    return ops


def _label(item: dict[str, Any]) -> str:
    kind = item.get("kind")
    if kind == "grant":
        return f"grant on {item.get('target')} to {item.get('subject')}"
    if kind == "membership":
        return f"membership of {item.get('user')} in {item.get('org')}/{item.get('team')}"
    if kind == "team":
        return f"team {item.get('org')}/{item.get('name')}"
    if kind == "policy":
        return f"policy {item.get('target')}"
    if kind in ("access_token", "access_token_owner", "access_token_used"):
        return f"token {item.get('id')}"
    return f"{kind} {item.get('name') or item.get('repo')}"


def describe(doc: dict[str, Any]) -> str:
    """One line for a plan: `accounts: set user carol, delete token 0123...`."""
    words = [f"set {_label(item)}" for item in doc.get("set") or []]
    # a token's delete names its record, its owner index and its last use: one line
    words += dict.fromkeys(f"delete {_label(item)}" for item in doc.get("delete") or [])
    more = f" (+{len(words) - 4} more)" if len(words) > 4 else ""
    return "accounts: " + ", ".join(words[:4]) + more
