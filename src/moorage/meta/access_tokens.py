"""The records of access tokens and robot accounts (moorage.auth.access_tokens) and their
bounded reads and writes on any `MetaStore` (key layout: meta/keys.py).

Every record is validated on the way back: a forged record is refused, never trusted.
Creating and deleting a token are journaled (`MetaStore._account_txn`); its last use is not.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass

from moorage.errors import RecordCorrupt
from moorage.meta import keys
from moorage.meta.base import KV, MUST_EXIST, Guard, MetaStore, Op, Put
from moorage.meta.base import Delete as DeleteOp
from moorage.meta.records import UserRecord, dumps
from moorage.meta.records import _build as build
from moorage.meta.records import _fields as fields

log = logging.getLogger("moorage.meta")

ID_FORM = re.compile(r"[0-9a-f]{16}")
_HASH = re.compile(r"[0-9a-f]{64}")
MAX_OWNER = 256
MAX_SCOPES = 32
MAX_SCOPE = 512


def _text(value: object, kind: str, name: str, limit: int = 300) -> str:
    if not isinstance(value, str) or len(value) > limit or "\x00" in value:
        raise RecordCorrupt(f"an {kind} record has a bad {name}")
    return value


def _number(value: object, kind: str, name: str, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordCorrupt(f"an {kind} record has a bad {name}")


@dataclass(frozen=True, slots=True)
class AccessTokenRecord:
    """One access token: its public id, whose it is (a user, or a robot account's name),
    the SHA-256 of its secret (never the secret), what it may do (scope strings of the
    token spec's grammar), when it was made and expires (unix seconds; None: never)."""

    id: str
    owner: str
    robot: bool
    secret_hash: str
    scopes: list[str]
    created_at: float
    expires_at: float | None
    created_by: str

    def encode(self) -> bytes:
        return dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes | str) -> AccessTokenRecord:
        kind = "access token"
        record: AccessTokenRecord = build(cls, fields(raw, kind), kind)
        if not isinstance(record.id, str) or not ID_FORM.fullmatch(record.id):
            raise RecordCorrupt("an access token record has a bad id")
        owner = _text(record.owner, kind, "owner", MAX_OWNER)
        if not owner or "@" in owner:
            raise RecordCorrupt("an access token record has a bad owner")
        if not isinstance(record.robot, bool):
            raise RecordCorrupt("an access token record has a bad robot flag")
        if not isinstance(record.secret_hash, str) or not _HASH.fullmatch(record.secret_hash):
            raise RecordCorrupt("an access token record has a bad secret_hash")
        scopes = record.scopes
        if not isinstance(scopes, list) or not 0 < len(scopes) <= MAX_SCOPES:
            raise RecordCorrupt("an access token record has a bad scope list")
        for scope in scopes:
            _text(scope, kind, "scope", MAX_SCOPE)
        _number(record.created_at, kind, "created_at")
        _number(record.expires_at, kind, "expires_at", optional=True)
        _text(record.created_by, kind, "created_by", MAX_OWNER)
        return record


@dataclass(frozen=True, slots=True)
class LastUse:
    at: float
    client: str

    def encode(self) -> bytes:
        return dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes | str) -> LastUse:
        record: LastUse = build(cls, fields(raw, "token use"), "token use")
        _number(record.at, "token use", "at")
        _text(record.client, "token use", "client", 100)
        return record


def _record(kv: KV | None) -> AccessTokenRecord | None:
    if kv is None:
        return None
    try:
        return AccessTokenRecord.decode(kv.value)
    except RecordCorrupt as exc:
        log.warning("skipped a corrupt access token record: %s", exc)
        return None


def _use(kv: KV | None) -> LastUse | None:
    if kv is None:
        return None
    try:
        return LastUse.decode(kv.value)
    except RecordCorrupt:
        return None


async def get(store: MetaStore, token_id: str) -> AccessTokenRecord | None:
    """One token's record (None: unknown, or its record is corrupt); one read."""
    if not ID_FORM.fullmatch(token_id):
        return None
    return _record(await store._get(keys.access_token(token_id)))


async def get_with_user(
    store: MetaStore, token_id: str, user: str
) -> tuple[AccessTokenRecord | None, UserRecord | None]:
    """A token's record and the user `user`'s: one round trip (a batched read)."""
    if not ID_FORM.fullmatch(token_id):
        return None, None
    token_kv, user_kv = await store._get_many([keys.access_token(token_id), keys.user(user)])
    found: UserRecord | None = None
    if user_kv is not None:
        try:
            found = UserRecord.decode(user_kv.value)
        except RecordCorrupt as exc:
            log.warning("skipped a corrupt user record: %s", exc)
    return _record(token_kv), found


async def owned_ids(store: MetaStore, owner: str, limit: int) -> list[str]:
    """The ids of at most `limit` tokens of `owner`; one bounded keys-only read."""
    prefix = keys.access_token_owner(owner)
    kvs, _ = await store._range(prefix, keys.prefix_end(prefix), limit=limit, keys_only=True)
    return [kv.key[len(prefix) :].decode(errors="replace") for kv in kvs]


async def create(store: MetaStore, record: AccessTokenRecord) -> bool:
    """Store a new token and its owner's index entry (False: that id exists already, or the
    user a personal token is for does not exist: a user deleted meanwhile keeps no token)."""
    key = keys.access_token(record.id)
    ops: list[Op] = [
        Put(key, record.encode()),
        Put(keys.access_token_owner(record.owner, record.id), b"{}"),
    ]
    guards: list[Guard] = [(key, 0)]
    if not record.robot:
        guards.append((keys.user(record.owner), MUST_EXIST))
    return await store._account_txn(guards, ops)


async def delete(store: MetaStore, record: AccessTokenRecord) -> bool:
    """Delete a token, its index entry and its last use (False: it was gone already)."""
    key = keys.access_token(record.id)
    kv = await store._get(key)
    if kv is None:
        return False
    ops: list[Op] = [
        DeleteOp(key),
        DeleteOp(keys.access_token_owner(record.owner, record.id)),
        DeleteOp(keys.access_token_used(record.id)),
    ]
    return await store._account_txn([(key, kv.mod_revision)], ops)


async def with_uses(
    store: MetaStore, ids: list[str]
) -> list[tuple[AccessTokenRecord, LastUse | None]]:
    """The records of `ids` (bounded by the caller) and their last use: one batched read."""
    wanted = [i for i in ids if ID_FORM.fullmatch(i)]
    kvs = await store._get_many(
        [k for i in wanted for k in (keys.access_token(i), keys.access_token_used(i))]
    )
    out = []
    for n in range(len(wanted)):
        record = _record(kvs[2 * n])
        if record is not None:
            out.append((record, _use(kvs[2 * n + 1])))
    return out


async def page(store: MetaStore, limit: int, after: str | None) -> tuple[list[str], bool]:
    """The ids of at most `limit` tokens after the id `after`, in id order: (ids, more)."""
    start = keys.access_token(after) + b"\x00" if after else keys.ACCESS_TOKENS
    kvs, more = await store._range(
        start, keys.prefix_end(keys.ACCESS_TOKENS), limit=limit, keys_only=True
    )
    return [kv.key[len(keys.ACCESS_TOKENS) :].decode(errors="replace") for kv in kvs], more


async def touch(store: MetaStore, token_id: str, use: LastUse) -> None:
    """Record a use, only while the token exists (a revoked token's use is not written)."""
    key = keys.access_token(token_id)
    await store._txn([(key, MUST_EXIST)], [Put(keys.access_token_used(token_id), use.encode())])
