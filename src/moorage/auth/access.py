"""What a request may do: principals, access requests, the authorizer interface and the
Distribution token spec's scope grammar.

Three parts of identity and access meet here (issue #9):

* authenticators (Basic passwords, access tokens used as passwords, Bearer JWTs) turn an
  Authorization header into a `Principal`;
* the `/v2/` dispatcher turns a route into the `Access` it needs (pull, push, delete on a
  repository; `registry:catalog:*` for the catalog);
* an `Authorizer` says which of the requested actions the principal holds: what its account's
  grants allow, cut down to the principal's `limit` when it is a token or a robot.

Granted is always requested ∩ allowed, never an error (the token spec's rule).
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moorage.meta.records import UserRecord

PULL = "pull"
PUSH = "push"
DELETE = "delete"
ALL = "*"
#: Actions on a repository, in the order a scope lists them.
REPOSITORY_ACTIONS = (PULL, PUSH, DELETE)

REPOSITORY = "repository"
REGISTRY = "registry"
CATALOG = "catalog"

MAX_SCOPES = 32  # more scopes in one token request are refused unread
MAX_SCOPE_LEN = 512
_TYPE = re.compile(r"[a-z0-9]+(?:\([a-z0-9]+\))?")
_ACTION = re.compile(r"[a-z*]+")


@dataclass(frozen=True, slots=True)
class Access:
    """One resource and the actions asked for (or granted) on it."""

    type: str  # "repository" or "registry" (a resource class such as "(plugin)" is dropped)
    name: str  # a repository name, or "catalog"
    actions: frozenset[str]

    def scope(self) -> str:
        return f"{self.type}:{self.name}:{','.join(sorted(self.actions))}"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for.

    `limit` is None for a user who logged in with a password (the account's grants apply
    as they are); for an access token, a robot account or a Bearer JWT it is the most the
    credential may do, and the account's current grants still cut it down further (a
    disabled account or a revoked grant takes effect at once, whatever the token says).
    """

    name: str  # "" for anonymous
    kind: str  # "user", "robot", "token" or "anonymous"
    admin: bool = False
    limit: tuple[Access, ...] | None = None
    token_id: str | None = None  # the access token used, for the audit log and last use
    # A user's: `password_mark` of the account record it logged in with. A Bearer token
    # carries it (`pwd`): the token is refused once the account has another password, or
    # was deleted and made again under the same name (a new hash, a new mark).
    mark: str | None = None

    @property
    def anonymous(self) -> bool:
        return self.kind == "anonymous"


ANONYMOUS = Principal("", "anonymous")


def password_mark(password_hash: str, sessions_ended: int = 0) -> str:
    """What a token remembers of an account's password: derived from the hash's salt, which
    every new password (and every new account of the same name) draws afresh, and which a
    rehash with newer parameters keeps (`auth.passwords.rehash`); and from the account's count
    of disables (`UserRecord.sessions_ended`), so that enabling it again revives no token."""
    parts = password_hash.split("$")
    salt = parts[4] if len(parts) == 6 and parts[1].startswith("argon2") else password_hash
    seed = b"moorage account\0" + salt.encode()
    if sessions_ended:  # 0: the mark of every account before disables counted
        seed += b"\0sessions ended %d" % sessions_ended
    return hashlib.sha256(seed).hexdigest()[:32]


def account_mark(user: UserRecord) -> str:
    """The mark of an account as it stands (its password and its count of disables)."""
    return password_mark(user.password_hash, user.sessions_ended)


def parse_scope(text: str) -> list[Access] | None:
    """The accesses one `scope` value asks for, or None when it is malformed.

    The grammar (distribution `docs/spec/auth/scope.md`): scopes separated by spaces, each
    `type[(class)]:name:action[,action...]`. A name may hold a `:` (a registry host with a
    port), so the actions are split off at the last colon and the type at the first.
    """
    if len(text) > MAX_SCOPE_LEN * MAX_SCOPES:
        return None
    out: list[Access] = []
    for item in text.split():
        if len(item) > MAX_SCOPE_LEN:
            return None
        rtype, sep, rest = item.partition(":")
        name, sep2, actions = rest.rpartition(":")
        if not sep or not sep2 or not name or not _TYPE.fullmatch(rtype):
            return None
        acts = [a for a in actions.split(",") if a]
        if not acts or not all(_ACTION.fullmatch(a) for a in acts):
            return None
        out.append(Access(rtype.split("(", 1)[0], name, frozenset(acts)))
    if len(out) > MAX_SCOPES:
        return None
    return out


def _covers(pattern: str, name: str) -> bool:
    """Whether a limit's name covers `name`: itself, `*` (everything), or `NS/*` (every
    repository under NS/, at any depth; `acme/*` covers neither `acme` nor `acmex/y`)."""
    if pattern in (name, ALL):
        return True
    return pattern.endswith("/*") and len(pattern) > 2 and name.startswith(pattern[:-1])


def limited(principal: Principal, access: Access) -> frozenset[str]:
    """The actions of `access` that the principal's `limit` leaves (all without a limit)."""
    if principal.limit is None:
        return access.actions
    kept: set[str] = set()
    for grant in principal.limit:
        if grant.type != access.type or not _covers(grant.name, access.name):
            continue
        kept |= access.actions if ALL in grant.actions else access.actions & grant.actions
    return frozenset(kept)


@dataclass(frozen=True, slots=True)
class PullScope:
    """Where the repositories a principal may pull are, without filtering the catalog:
    everything; or every repository of `namespaces` (`NS` itself and `NS/...`), the
    `repositories` named, and (`public`) every public repository."""

    everything: bool = False
    namespaces: tuple[str, ...] = ()
    repositories: tuple[str, ...] = ()
    public: bool = False


class Authorizer(ABC):
    """Which actions a principal holds."""

    @abstractmethod
    async def allowed(self, principal: Principal, access: Access) -> frozenset[str]:
        """The subset of `access.actions` the principal may do on `access.name` now.

        Raises StoreUnavailable when the grants cannot be read; never anything else."""

    async def pull_scope(self, principal: Principal) -> PullScope | None:
        """Where the repositories the principal may pull are (from its grants), or None
        when this authorizer cannot say: then the caller filters names with `pullable`."""
        return None

    async def void(self, principal: Principal) -> bool:
        """Whether the principal's account is gone, disabled or has another password since
        its credential was issued (a Bearer token of it is then invalid, not too narrow).
        StoreUnavailable when that cannot be read."""
        return False

    async def pullable(self, principal: Principal, names: Sequence[str]) -> list[str]:
        """The repositories of `names` the principal may pull, in their order."""
        out = []
        for name in names:
            if PULL in await self.allowed(principal, Access(REPOSITORY, name, frozenset({PULL}))):
                out.append(name)
        return out


class AdminOnlyAuthorizer(Authorizer):
    """The policy before accounts existed: every signed-in user is a cluster admin (within
    its credential's limit), anonymous clients may do nothing."""

    async def pull_scope(self, principal: Principal) -> PullScope | None:
        if principal.anonymous:
            return PullScope()
        return PullScope(everything=True) if principal.limit is None else None

    async def allowed(self, principal: Principal, access: Access) -> frozenset[str]:
        if principal.anonymous:
            return frozenset()
        return limited(principal, access)
