"""Accounts and permissions in the store: users, organizations, teams, grants and public
repositories (issue #9; the layout is in meta/keys.py, the records in meta/records.py).

Every read is bounded (pages of at most STORE_PAGE keys); the few operations that touch an
open-ended set (deleting a user or an organization removes its grants) page through it.
Every write goes through `MetaStore._account_txn`, which journals it before it returns.
Team membership is kept twice, in one transaction each time: in the team's record (its
members, for `team list`) and as one key per user and team (the teams of a user, which
the policy reads with one bounded prefix read).

Races between two replicas changing the same accounts: a membership is added only while
its team (at the revision read) and its user exist, and a team is deleted only at the
revision whose members it deletes, so the index never outlives a team or a user. Deletes
take away what gives access first: a user's record goes before its memberships, tokens and
grants (none can be added once it is gone), a team's membership keys before its record; a
name reused by `add_user` first loses what an interrupted delete left behind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from moorage.meta import access_tokens as tokens
from moorage.meta import keys, names
from moorage.meta.account_records import MAX_TEAM_MEMBERS, GrantRecord, OrgRecord, TeamRecord
from moorage.meta.base import (
    KV,
    MUST_EXIST,
    STORE_PAGE,
    TXN_OPS,
    Delete,
    Guard,
    MetaStore,
    Op,
    Put,
)
from moorage.meta.records import UserRecord
from moorage.oci.names import namespace_of as namespace_of  # re-exported: importers use it here

_EMPTY = b"{}"
_RETRIES = 20
#: The most teams one user is a member of (more are refused when added).
MAX_TEAMS_PER_USER = 100


class AccountConflict(Exception):
    """The change contradicts the store: a duplicate, a missing parent, a full team."""


class AccountMissing(LookupError):
    """The account, team or grant named does not exist."""


@dataclass(frozen=True, slots=True)
class NamespaceAccess:
    """What the policy needs about one namespace: the role of every grant on it or on one
    of its repositories, by (target, subject) (a lookup per subject, however many grants
    the namespace holds), and its public repositories."""

    roles: Mapping[tuple[str, str], str]
    public: frozenset[str]


class Accounts:
    def __init__(self, meta: MetaStore) -> None:
        self.meta = meta

    # -- reads -------------------------------------------------------------------------
    async def user(self, name: str) -> UserRecord | None:
        return await self.meta.get_user(name)

    async def org(self, name: str) -> OrgRecord | None:
        kv = await self.meta._get(keys.org(name))
        return OrgRecord.decode(kv.value) if kv else None

    async def team(self, org: str, name: str) -> TeamRecord | None:
        kv = await self.meta._get(keys.team(org, name))
        return TeamRecord.decode(kv.value) if kv else None

    async def teams_of(self, user: str) -> tuple[str, ...]:
        """`ORG/TEAM` of every team `user` belongs to (one bounded read)."""
        prefix = keys.memberships_prefix(user)
        kvs, _ = await self.meta._range(
            prefix, keys.prefix_end(prefix), MAX_TEAMS_PER_USER, keys_only=True
        )
        return tuple(kv.key[len(prefix) :].decode() for kv in kvs)

    async def namespace(self, ns: str) -> NamespaceAccess:
        """Grants on `ns` and on `ns/...`, and the public repositories under `ns`."""
        roles: dict[tuple[str, str], str] = {}
        for prefix, end in (
            (keys.grants_prefix(ns), keys.prefix_end(keys.grants_prefix(ns))),
            (keys.GRANTS + f"{ns}/".encode(), keys.prefix_end(keys.GRANTS + f"{ns}/".encode())),
        ):
            async for page in self.meta._scan(prefix, end):
                for kv in page:
                    grant = GrantRecord.decode(kv.value)
                    roles[(grant.target, grant.subject)] = grant.role
        public: set[str] = set()
        for prefix in (keys.public(ns), keys.PUBLIC + f"{ns}/".encode()):
            end = prefix + b"\x00" if not prefix.endswith(b"/") else keys.prefix_end(prefix)
            async for page in self.meta._scan(prefix, end, keys_only=True):
                public |= {kv.key[len(keys.PUBLIC) :].decode() for kv in page}
        return NamespaceAccess(roles, frozenset(public))

    async def repository(
        self, ns: str, repo: str, subjects: Sequence[str]
    ) -> tuple[dict[tuple[str, str], str], bool]:
        """The roles of `subjects` on `ns` and on `repo`, by (target, subject), and whether
        `repo` is public: one batched read of at most 2 * len(subjects) + 1 keys, however
        many grants the namespace holds."""
        pairs = [(t, s) for t in dict.fromkeys((ns, repo)) for s in subjects]
        found = await self.meta._get_many(
            [*(keys.grant(t, s) for t, s in pairs), keys.public(repo)]
        )
        roles = {
            pair: GrantRecord.decode(kv.value).role
            for pair, kv in zip(pairs, found, strict=False)
            if kv is not None
        }
        return roles, found[-1] is not None

    async def _values(
        self, prefix: bytes, n: int, last: str | None, start_key: bytes | None = None
    ) -> tuple[list[KV], bool]:
        start = prefix + last.encode() + b"\x00" if last else (start_key or prefix)
        kvs, more = await self.meta._range(start, keys.prefix_end(prefix), min(n, STORE_PAGE))
        return kvs, more

    async def users(self, n: int, last: str | None) -> tuple[list[UserRecord], bool]:
        kvs, more = await self._values(keys.USERS, n, last)
        return [UserRecord.decode(kv.value) for kv in kvs], more

    async def orgs(self, n: int, last: str | None) -> tuple[list[OrgRecord], bool]:
        kvs, more = await self._values(keys.ORGS, n, last)
        return [OrgRecord.decode(kv.value) for kv in kvs], more

    async def teams(self, org: str, n: int, last: str | None) -> tuple[list[TeamRecord], bool]:
        kvs, more = await self._values(keys.teams_prefix(org), n, last)
        return [TeamRecord.decode(kv.value) for kv in kvs], more

    async def grants(
        self, on: str | None, n: int, last: str | None
    ) -> tuple[list[GrantRecord], bool]:
        """Grants in key order (target, then subject); `on` a target: only those on it."""
        prefix = keys.grants_prefix(on) if on else keys.GRANTS
        kvs, more = await self._values(prefix, n, last)
        return [GrantRecord.decode(kv.value) for kv in kvs], more

    async def grant_index(self) -> dict[str, tuple[str, ...]]:
        """The targets of every grant, by subject (one paged pass over the grants' keys:
        `<target>@<subject>`, nothing decoded). The policy caches it under its watch, so
        listing what one viewer may pull reads only that viewer's targets."""
        index: dict[str, list[str]] = {}
        async for page in self.meta._scan(keys.GRANTS, keys.prefix_end(keys.GRANTS), True):
            for kv in page:
                target, _, subject = kv.key[len(keys.GRANTS) :].decode().partition("@")
                index.setdefault(subject, []).append(target)
        return {subject: tuple(targets) for subject, targets in index.items()}

    async def public_repos(self, prefix: str, n: int, last: str | None) -> tuple[list[str], bool]:
        """Up to `n` public repositories (made public, whether pushed yet or not) that start
        with `prefix`, after `last`, in name order (paged)."""
        return await names.names_under(self.meta, keys.PUBLIC, prefix, n, last)

    async def is_public(self, repo: str) -> bool:
        return await self.meta._get(keys.public(repo)) is not None

    async def other_admin(self, name: str) -> bool:
        """Whether an enabled cluster admin other than `name` exists (paged read)."""
        return await self._other_admin(name) is not None

    async def _other_admin(self, name: str) -> Guard | None:
        """A guard that the first enabled cluster admin other than `name` is unchanged
        (paged read, stops at the first); None when there is none."""
        async for page in self.meta._scan(keys.USERS, keys.prefix_end(keys.USERS)):
            for kv in page:
                user = UserRecord.decode(kv.value)
                if user.name != name and user.admin and not user.disabled:
                    return (kv.key, kv.mod_revision)
        return None

    async def _keeping_an_admin(self, user: UserRecord) -> list[Guard]:
        """The guards of a change that makes `user` no longer an enabled cluster admin: an
        enabled admin other than it stays as read. Two such changes at once (two replicas
        disabling the two last admins) each guard the other's record: one of them fails and
        is read again, then refused."""
        if not user.admin or user.disabled:
            return []
        other = await self._other_admin(user.name)
        if other is None:
            raise AccountConflict(
                f"{user.name} is the last enabled cluster admin: make another admin first "
                "('moorage user add NAME --admin')"
            )
        return [other]

    # -- writes ------------------------------------------------------------------------
    async def add_user(self, user: UserRecord) -> None:
        """A new user, unless the name is taken by a user or an organization (checked in
        the transaction: a user and an organization of one name made at once cannot both
        win)."""
        key, org = keys.user(user.name), keys.org(user.name)
        if await self.user(user.name) is None:
            await self._forget(user.name)  # what an interrupted delete of the name left
        if not await self.meta._account_txn([(key, 0), (org, 0)], [Put(key, user.encode())]):
            if await self.org(user.name) is not None:
                raise AccountConflict(f"{user.name} is an organization: a user needs another name")
            raise AccountConflict(f"user {user.name} exists already")

    async def change_user(
        self, name: str, change: Callable[[UserRecord], UserRecord]
    ) -> UserRecord:
        """Read the user, apply `change` and write it back at the revision read (read again
        when another change came first, so none is lost); a change that takes away the last
        enabled cluster admin is refused (AccountConflict). The record written."""
        key = keys.user(name)
        for _ in range(_RETRIES):
            kv = await self.meta._get(key)
            if kv is None:
                raise AccountMissing(f"no user {name}")
            user = UserRecord.decode(kv.value)
            changed = change(user)
            guards = [(key, kv.mod_revision)]
            if changed.disabled or not changed.admin:
                guards += await self._keeping_an_admin(user)
            if await self.meta._account_txn(guards, [Put(key, changed.encode())]):
                return changed
        raise AccountConflict(f"user {name} kept changing: try again")

    async def delete_user(self, name: str) -> None:
        """The user, then its team memberships, access tokens and every grant to it (paged).
        The record goes first: from then on nothing can be added to the name (memberships
        and tokens are guarded by its existence), so nothing is left behind. The last
        enabled cluster admin is not deleted (AccountConflict)."""
        key = keys.user(name)
        for _ in range(_RETRIES):
            kv = await self.meta._get(key)
            if kv is None:
                raise AccountMissing(f"no user {name}")
            guards = [(key, kv.mod_revision)]
            guards += await self._keeping_an_admin(UserRecord.decode(kv.value))
            if await self.meta._account_txn(guards, [Delete(key)]):
                break
        else:
            raise AccountConflict(f"user {name} kept changing: try again")
        await self._forget(name)
        await self._delete_grants_to({f"user:{name}"})

    async def _forget(self, name: str) -> None:
        """The team memberships and access tokens of the user `name` (which is gone)."""
        while teams := await self.teams_of(name):
            for team in teams:
                org, _, team_name = team.partition("/")
                await self.remove_member(org, team_name, name, missing_ok=True)
        prefix = keys.access_token_owner(name)
        while ids := await tokens.owned_ids(self.meta, name, STORE_PAGE):
            for token_id in ids:
                record = await tokens.get(self.meta, token_id)
                if (
                    record is None
                    or record.owner != name
                    or not await tokens.delete(self.meta, record)
                ):
                    await self.meta._account_txn([], [Delete(prefix + token_id.encode())])

    async def add_org(self, name: str) -> None:
        key, user = keys.org(name), keys.user(name)
        if not await self.meta._account_txn(
            [(key, 0), (user, 0)], [Put(key, OrgRecord(name).encode())]
        ):
            if await self.user(name) is not None:
                raise AccountConflict(
                    f"{name} is a user's own namespace: an organization needs another name"
                )
            raise AccountConflict(f"organization {name} exists already")

    async def delete_org(self, name: str) -> None:
        """The organization, its teams (and their memberships and grants); grants on its
        namespace stay with the repositories, which a delete does not touch. The teams are
        deleted before and again after the record (a team added meanwhile goes too; none
        can be added once the record is gone)."""
        if await self.org(name) is None:
            raise AccountMissing(f"no organization {name}")
        await self._delete_teams(name)
        await self.meta._account_txn([], [Delete(keys.org(name))])
        await self._delete_teams(name)

    async def _delete_teams(self, org: str) -> None:
        """Every team of `org`, a page at a time; their grants in one scan per page."""
        prefix = keys.teams_prefix(org)
        while True:
            kvs, _ = await self.meta._range(prefix, keys.prefix_end(prefix), STORE_PAGE)
            if not kvs:
                return
            gone = set()
            for kv in kvs:
                team = TeamRecord.decode(kv.value).name
                await self.delete_team(org, team, missing_ok=True, grants=False)
                gone.add(f"team:{org}/{team}")
            await self._delete_grants_to(gone)

    async def add_team(self, org: str, name: str) -> None:
        okey, key = keys.org(org), keys.team(org, name)
        record = TeamRecord(org, name)
        if not await self.meta._account_txn([(okey, -1), (key, 0)], [Put(key, record.encode())]):
            if await self.org(org) is None:
                raise AccountMissing(f"no organization {org}: 'moorage org add {org}' first")
            raise AccountConflict(f"team {org}/{name} exists already")

    async def delete_team(
        self, org: str, name: str, missing_ok: bool = False, grants: bool = True
    ) -> None:
        """The team, its membership keys (first: they give access) and the grants to it.
        The record is deleted at the revision read, with the last membership keys: a member
        added meanwhile makes it read the team again, so no membership outlives it."""
        key = keys.team(org, name)
        for _ in range(_RETRIES):
            kv = await self.meta._get(key)
            if kv is None:
                if missing_ok:
                    break
                raise AccountMissing(f"no team {org}/{name}")
            team = TeamRecord.decode(kv.value)
            members = [Delete(keys.membership(m, org, name)) for m in team.members]
            last = members[: TXN_OPS - 1]
            for i in range(len(last), len(members), TXN_OPS):
                await self.meta._account_txn([], members[i : i + TXN_OPS])
            if await self.meta._account_txn([(key, kv.mod_revision)], [Delete(key), *last]):
                break
        else:
            raise AccountConflict(f"team {org}/{name} kept changing: try again")
        if grants:
            await self._delete_grants_to({f"team:{org}/{name}"})

    async def add_member(self, org: str, name: str, user: str) -> None:
        await self._change_members(org, name, user, add=True)

    async def remove_member(self, org: str, name: str, user: str, missing_ok: bool = False) -> None:
        await self._change_members(org, name, user, add=False, missing_ok=missing_ok)

    async def _change_members(
        self, org: str, name: str, user: str, add: bool, missing_ok: bool = False
    ) -> None:
        key = keys.team(org, name)
        for _ in range(_RETRIES):
            kv = await self.meta._get(key)
            if kv is None:
                if missing_ok:
                    await self.meta._account_txn([], [Delete(keys.membership(user, org, name))])
                    return
                raise AccountMissing(f"no team {org}/{name}")
            team = TeamRecord.decode(kv.value)
            if add:
                if user in team.members:
                    return
                if await self.user(user) is None:
                    raise AccountMissing(f"no user {user}")
                guards = [(key, kv.mod_revision), (keys.user(user), MUST_EXIST)]
                if len(team.members) >= MAX_TEAM_MEMBERS:
                    raise AccountConflict(f"team {org}/{name} has {MAX_TEAM_MEMBERS} members")
                if len(await self.teams_of(user)) >= MAX_TEAMS_PER_USER:
                    raise AccountConflict(f"{user} is in {MAX_TEAMS_PER_USER} teams already")
                members = (*team.members, user)
                op: Op = Put(keys.membership(user, org, name), _EMPTY)
            else:
                if user not in team.members:
                    if missing_ok:
                        await self.meta._account_txn([], [Delete(keys.membership(user, org, name))])
                        return
                    raise AccountMissing(f"{user} is not a member of {org}/{name}")
                members = tuple(m for m in team.members if m != user)
                op = Delete(keys.membership(user, org, name))
                guards = [(key, kv.mod_revision)]
            record = TeamRecord(org, name, members)
            if await self.meta._account_txn(guards, [Put(key, record.encode()), op]):
                return
        raise AccountConflict(f"team {org}/{name} kept changing: try again")

    async def put_grant(self, grant: GrantRecord) -> None:
        """Only to a user or team that exists (guarded: a deleted one takes its grants with
        it, and a grant to a name nobody holds yet would go to whoever takes it later)."""
        grant.validate()
        sort, _, name = grant.subject.partition(":")
        org, _, team = name.partition("/")
        holder = keys.user(name) if sort == "user" else keys.team(org, team)
        put = Put(keys.grant(grant.target, grant.subject), grant.encode())
        if not await self.meta._account_txn([(holder, MUST_EXIST)], [put]):
            what = f"user {name}" if sort == "user" else f"team {name}"
            raise AccountMissing(f"no {what}: create it first, then grant")

    async def delete_grant(self, target: str, subject: str) -> None:
        key = keys.grant(target, subject)
        kv = await self.meta._get(key)
        if kv is None:
            raise AccountMissing(f"no grant on {target} to {subject}")
        await self.meta._account_txn([(key, kv.mod_revision)], [Delete(key)])

    async def _delete_grants_to(self, subjects: set[str]) -> None:
        """Every grant to one of `subjects` (one paged pass over all grants: the subject is
        the end of the key, `<target>@<subject>`, so no record is decoded)."""
        ends = tuple(f"@{s}".encode() for s in subjects)
        async for page in self.meta._scan(keys.GRANTS, keys.prefix_end(keys.GRANTS), True):
            doomed: list[Op] = [Delete(kv.key) for kv in page if kv.key.endswith(ends)]
            for i in range(0, len(doomed), TXN_OPS):
                await self.meta._account_txn([], doomed[i : i + TXN_OPS])

    async def set_public(self, repo: str, on: bool) -> None:
        key = keys.public(repo)
        await self.meta._account_txn([], [Put(key, _EMPTY) if on else Delete(key)])
