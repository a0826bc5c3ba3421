"""Access tokens and robot accounts (issue #9 item 3, DESIGN.md §7).

A token is `mrg_<id>_<secret>`: `id` is 16 hex digits (public: listings, the audit log),
`secret` 64 hex digits (256 bits from `secrets`). It is shown once, at creation; etcd keeps
only the SHA-256 of the secret (a fast hash is right for a full-entropy secret: nothing to
brute-force), compared in constant time. The `mrg_` prefix tells a token from a password
before any argon2 work.

* A personal token belongs to a user: it acts as that user, cut down to its scope (the
  account's grants at use time ∩ the scope; a deleted or disabled user's tokens stop).
* A robot account is a name (`robot+NAME`) with no human and no password behind it: its
  tokens may do exactly their scope. Only cluster admins create robots; a user creates
  personal tokens for itself only (with a password login: a token never makes tokens).
* A scope entry is `repository:NAME:ACTIONS` (ACTIONS from pull, push, delete, or `*`);
  NAME is a repository or `NAMESPACE/*` (every repository under it). push implies pull
  (a push reads blobs back), so `pull` is added to it.
* Expiry: 90 days by default, `--expires 30d|12h|never` (never only when asked for).
* At most MAX_PER_OWNER tokens per user or robot (expired ones are swept to make room);
  every read of the store is bounded.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from moorage.auth.access import (
    ALL,
    DELETE,
    PULL,
    PUSH,
    REPOSITORY,
    REPOSITORY_ACTIONS,
    Access,
    parse_scope,
)
from moorage.errors import AccessTokenRefused as TokenRefused
from moorage.errors import AccessTokenUnknown as NoSuchToken
from moorage.errors import MoorageError, NameInvalid
from moorage.errors import TooManyAccessTokens as TooManyTokens
from moorage.meta import access_tokens as store_tokens
from moorage.meta.access_tokens import AccessTokenRecord, LastUse
from moorage.meta.base import MetaStore
from moorage.meta.records import UserRecord
from moorage.oci.names import validate_name

PREFIX = "mrg_"
TOKEN_FORM = re.compile(r"mrg_([0-9a-f]{16})_([0-9a-f]{64})")
ROBOT_PREFIX = "robot+"
ROBOT_NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")
DEFAULT_EXPIRY = 90 * 86400
MAX_EXPIRY = 3650 * 86400
MAX_PER_OWNER = 50
PAGE = 200  # tokens per listing page
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def looks_like_token(password: str) -> bool:
    """Whether a password is meant as an access token (then it never reaches argon2)."""
    return password.startswith(PREFIX)


def split_token(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token, else None."""
    match = TOKEN_FORM.fullmatch(token)
    return (match.group(1), match.group(2)) if match else None


def robot_name(name: str) -> str:
    """The account name of robot `name` (`ci` or `robot+ci` → `robot+ci`); ValueError if bad."""
    short = name[len(ROBOT_PREFIX) :] if name.startswith(ROBOT_PREFIX) else name
    if not ROBOT_NAME.fullmatch(short):
        raise ValueError(
            f"bad robot name {name[:80]!r}: use 1-64 lowercase letters, digits, '.', '_' or "
            "'-' (starting and ending with a letter or digit)"
        )
    return ROBOT_PREFIX + short


def parse_expiry(text: str | None) -> int | None:
    """Seconds a new token lives (`30d`, `12h`, `90m`, `2w`, `1y`; DEFAULT_EXPIRY when not
    given), or None for `never`; ValueError otherwise."""
    if text is None or str(text).strip() == "":
        return DEFAULT_EXPIRY
    value = str(text).strip().lower()
    if value == "never":
        return None
    match = re.fullmatch(r"(\d{1,6})([mhdwy])", value)
    if not match:
        raise ValueError(
            f"expiry must look like 30d, 12h, 2w, 1y or 'never', not {str(text)[:40]!r}"
        )
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if not 60 <= seconds <= MAX_EXPIRY:
        raise ValueError("expiry must be between 1 minute and 10 years (or 'never')")
    return seconds


def _check_name(name: str) -> None:
    if name.endswith("/*"):
        name = name[:-2]
    try:
        validate_name(name)
    except NameInvalid as exc:
        raise ValueError(f"{exc} (a scope names a repository or NAMESPACE/*)") from None


def normalize_scopes(values: list[str]) -> list[str]:
    """The scope strings of `values` (each one or more space-separated entries), checked
    and normalized (`repository:acme/app:pull,push`); ValueError saying what is wrong."""
    out: list[str] = []
    for value in values:
        if not isinstance(value, str):
            raise ValueError("a scope must be a string like repository:acme/app:pull,push")
        accesses = parse_scope(value)
        if accesses is None or not accesses:
            raise ValueError(
                f"bad scope {value[:120]!r}: expected repository:NAME:ACTIONS, e.g. "
                "repository:acme/app:pull,push or repository:acme/*:pull"
            )
        for access in accesses:
            if access.type != REPOSITORY:
                raise ValueError(
                    f"bad scope {value[:120]!r}: an access token is scoped to repositories "
                    "(repository:NAME:ACTIONS)"
                )
            _check_name(access.name)
            actions = set(access.actions)
            if ALL in actions:
                actions = set(REPOSITORY_ACTIONS)
            unknown = actions - set(REPOSITORY_ACTIONS)
            if unknown:
                raise ValueError(
                    f"bad scope {value[:120]!r}: unknown action(s) {', '.join(sorted(unknown))} "
                    "(use pull, push, delete or *)"
                )
            if PUSH in actions:
                actions.add(PULL)  # a push reads blobs back (HEAD) and needs pull
            ordered = [a for a in (PULL, PUSH, DELETE) if a in actions]
            text = f"{REPOSITORY}:{access.name}:{','.join(ordered)}"
            if text not in out:
                out.append(text)
    if not out:
        raise ValueError("give at least one --scope, e.g. repository:acme/app:pull,push")
    if len(out) > store_tokens.MAX_SCOPES:
        raise ValueError(f"at most {store_tokens.MAX_SCOPES} scopes per token")
    return out


def limit_of(record: AccessTokenRecord) -> tuple[Access, ...]:
    """What the token may do at most, as the authorizer reads it (Principal.limit)."""
    out: list[Access] = []
    for scope in record.scopes:
        out += parse_scope(scope) or []
    return tuple(out)


def expired(record: AccessTokenRecord, now: float | None = None) -> bool:
    return record.expires_at is not None and record.expires_at <= (now or time.time())


def view(record: AccessTokenRecord, use: LastUse | None = None) -> dict[str, Any]:
    """A token's public fields (never its secret nor its hash)."""
    return {
        "id": record.id,
        "owner": record.owner,
        "robot": record.robot,
        "scopes": list(record.scopes),
        "created_at": record.created_at,
        "created_by": record.created_by,
        "expires_at": record.expires_at,
        "expired": expired(record),
        "last_used_at": use.at if use else None,
        "last_used_from": use.client if use else None,
    }


@dataclass(frozen=True, slots=True)
class Caller:
    """Who manages tokens: a user signed in with a password (never a token)."""

    name: str
    admin: bool


async def _make_room(store: MetaStore, owner: str) -> None:
    """Refuse when `owner` has MAX_PER_OWNER live tokens; expired ones are deleted first."""
    ids = await store_tokens.owned_ids(store, owner, MAX_PER_OWNER + 1)
    if len(ids) < MAX_PER_OWNER:
        return
    live = 0
    for record, _ in await store_tokens.with_uses(store, ids):
        if expired(record):
            await store_tokens.delete(store, record)
        else:
            live += 1
    if live >= MAX_PER_OWNER:
        raise TooManyTokens(
            f"{owner} has {MAX_PER_OWNER} tokens already: revoke some (moorage token list / "
            "revoke) before creating another"
        )


async def create(
    store: MetaStore,
    caller: Caller,
    scopes: list[str],
    expires: str | None = None,
    robot: str | None = None,
) -> dict[str, Any]:
    """A new token (the only time its value is seen) and its public fields."""
    normalized = normalize_scopes(scopes)
    lifetime = parse_expiry(expires)
    if robot is not None:
        if not caller.admin:
            raise TokenRefused("only a cluster admin creates robot accounts and their tokens")
        owner = robot_name(robot)
    else:
        if caller.name.startswith(ROBOT_PREFIX):
            raise TokenRefused("a robot account cannot create tokens")
        owner = caller.name
    await _make_room(store, owner)
    token_id, secret = secrets.token_hex(8), secrets.token_hex(32)
    now = time.time()
    record = AccessTokenRecord(
        id=token_id,
        owner=owner,
        robot=robot is not None,
        secret_hash=secret_hash(secret),
        scopes=normalized,
        created_at=now,
        expires_at=None if lifetime is None else now + lifetime,
        created_by=caller.name,
    )
    if not await store_tokens.create(store, record):
        if record.robot or await store.get_user(owner) is not None:
            raise MoorageError("a token with that id exists already (retry)")
        raise TokenRefused(f"user {owner} no longer exists")
    return {"token": f"{PREFIX}{token_id}_{secret}", "username": owner, **view(record)}


async def listing(
    store: MetaStore, caller: Caller, owner: str | None, after: str | None
) -> dict[str, Any]:
    """One page of tokens: the owner's (all of them: at most MAX_PER_OWNER), or, for an
    admin, everybody's in id order from `after`. A user sees only its own."""
    if owner is not None and owner != caller.name and not caller.admin:
        raise TokenRefused("you may list only your own tokens (without --user)")
    if owner is None and not caller.admin:
        owner = caller.name
    if owner is not None:
        ids = await store_tokens.owned_ids(store, owner, MAX_PER_OWNER * 2)
        more = False
    else:
        if after is not None and not store_tokens.ID_FORM.fullmatch(after):
            raise ValueError("'last' must be a token id (16 hex digits)")
        ids, more = await store_tokens.page(store, PAGE, after)
    found = await store_tokens.with_uses(store, ids)
    tokens = [view(r, u) for r, u in found]
    return {"tokens": tokens, "next": ids[-1] if more and ids else None}


async def revoke(store: MetaStore, caller: Caller, token_id: str) -> dict[str, Any]:
    """Revoke a token (given itself or its id): at once, on every replica (each use reads
    its record). A user revokes only its own; an admin any."""
    value = token_id.strip()
    parts = split_token(value)
    if parts is not None:
        value = parts[0]
    record = await store_tokens.get(store, value) if store_tokens.ID_FORM.fullmatch(value) else None
    if record is None or (record.owner != caller.name and not caller.admin):
        raise NoSuchToken(f"no token {value[:40]!r} (see moorage token list)")
    if not await store_tokens.delete(store, record):
        raise NoSuchToken(f"no token {value[:40]!r} (revoked already?)")
    return {"revoked": True, **view(record)}


@dataclass(frozen=True, slots=True)
class Checked:
    """A token whose secret matched: its record, its owner's user record (None for a robot,
    or a user deleted since), and why it may not be used (or None)."""

    record: AccessTokenRecord
    user: UserRecord | None
    refusal: str | None


async def check(store: MetaStore, username: str, token: str) -> Checked | None:
    """The token's record if `token` is a token of `username` with the right secret (None:
    a forged or mistyped token, a failed login); `refusal` says when the token itself is
    valid but no longer usable (expired, or its user deleted or disabled; revoked tokens
    are gone, hence None). One round trip to the store: the token and the user together."""
    parts = split_token(token)
    if parts is None:
        return None
    token_id, secret = parts
    record, user = await store_tokens.get_with_user(store, token_id, username)
    digest = secret_hash(secret)
    if record is None:
        hmac.compare_digest(digest, digest)  # the same work either way
        return None
    if not hmac.compare_digest(record.secret_hash, digest) or record.owner != username:
        return None
    if expired(record):
        return Checked(record, user, "the access token has expired; create a new one")
    if record.robot:
        return Checked(record, None, None)
    if user is None or getattr(user, "disabled", False) is True:
        return Checked(record, user, "the token's user is deleted or disabled")
    return Checked(record, user, None)


async def touch(store: MetaStore, token_id: str, client: str) -> None:
    await store_tokens.touch(store, token_id, LastUse(time.time(), client[:100]))


async def live(store: MetaStore, token_id: str) -> bool:
    """Whether the token `token_id` still exists and has not expired (for credentials
    derived from it, e.g. a Bearer JWT issued to it: revocation stops those too)."""
    record = await store_tokens.get(store, token_id)
    return record is not None and not expired(record)
