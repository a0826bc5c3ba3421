"""The stored accounts, read straight from a replica's etcd member (paged), and the checks
that they decode and agree with each other: what the account fuzzing, race and scale tests
assert at their end.

Checked: every user, organization, team, membership, grant, public repository, access token,
token owner index entry and last-use record decodes with the store's own record code; each
key names what its record says; a team's organization exists; the membership index equals
the teams' member lists and names existing users; the token owner index equals the tokens;
a personal token's user exists; a last-use record belongs to a token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from moorage.errors import RecordCorrupt
from moorage.meta import keys
from moorage.meta.access_tokens import AccessTokenRecord, LastUse
from moorage.meta.account_records import GrantRecord, OrgRecord, TeamRecord
from moorage.meta.base import MetaStore
from moorage.meta.etcd import ClientTls, EtcdMetaStore
from moorage.meta.records import UserRecord
from moorage.oci.names import validate_name
from moorage.pki.files import TlsDir

T = TypeVar("T")


def store_of(data_dir: Path, etcd_client_port: int) -> EtcdMetaStore:
    """A store client on a replica's etcd member, with the replica's own certificate."""
    tls = ClientTls(*TlsDir(data_dir).client_material())
    return EtcdMetaStore([f"https://127.0.0.1:{etcd_client_port}"], tls=tls)


def with_store(data_dir: Path, port: int, work: Callable[[MetaStore], Awaitable[T]]) -> T:
    async def go() -> T:
        store = store_of(data_dir, port)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(go())


async def _all(store: MetaStore, prefix: bytes) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    async for page in store._scan(prefix, keys.prefix_end(prefix)):
        out += [(kv.key[len(prefix) :].decode(errors="replace"), kv.value) for kv in page]
    return out


@dataclass
class Accounts:
    """What the store holds, decoded, and what was wrong with it."""

    users: dict[str, UserRecord] = field(default_factory=dict)
    orgs: set[str] = field(default_factory=set)
    teams: dict[str, TeamRecord] = field(default_factory=dict)  # "org/team"
    memberships: set[tuple[str, str]] = field(default_factory=set)  # (user, "org/team")
    grants: dict[tuple[str, str], str] = field(default_factory=dict)  # (target, subject) -> role
    public: set[str] = field(default_factory=set)
    tokens: dict[str, AccessTokenRecord] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


async def read_accounts(store: MetaStore) -> Accounts:
    found = Accounts()
    bad = found.problems

    def decode(what: str, key: str, parse: Callable[[bytes], T], raw: bytes) -> T | None:
        try:
            return parse(raw)
        except RecordCorrupt as exc:
            bad.append(f"{what} {key!r} does not decode: {exc}")
            return None

    for key, raw in await _all(store, keys.USERS):
        account = decode("user", key, UserRecord.decode, raw)
        if account is not None:
            if account.name != key:
                bad.append(f"user key {key!r} holds the record of {account.name!r}")
            found.users[key] = account
    for key, raw in await _all(store, keys.ORGS):
        org = decode("org", key, OrgRecord.decode, raw)
        if org is not None:
            if org.name != key:
                bad.append(f"org key {key!r} holds the record of {org.name!r}")
            found.orgs.add(key)
    for key, raw in await _all(store, keys.TEAMS):
        team = decode("team", key, TeamRecord.decode, raw)
        if team is not None:
            if f"{team.org}/{team.name}" != key:
                bad.append(f"team key {key!r} holds the record of {team.org}/{team.name}")
            found.teams[key] = team
    for key, _ in await _all(store, keys.MEMBERSHIPS):
        user, sep, team_key = key.partition("@")
        if not sep:
            bad.append(f"membership key {key!r} is malformed")
        found.memberships.add((user, team_key))
    for key, raw in await _all(store, keys.GRANTS):
        grant = decode("grant", key, GrantRecord.decode, raw)
        if grant is not None:
            if f"{grant.target}@{grant.subject}" != key:
                bad.append(f"grant key {key!r} holds {grant.target}@{grant.subject}")
            found.grants[(grant.target, grant.subject)] = grant.role
    for key, _ in await _all(store, keys.PUBLIC):
        try:
            validate_name(key)
        except Exception as exc:  # any refusal is the finding
            bad.append(f"public repository key {key!r} is not a repository name: {exc}")
        found.public.add(key)
    for key, raw in await _all(store, keys.ACCESS_TOKENS):
        tok = decode("token", key, AccessTokenRecord.decode, raw)
        if tok is not None:
            if tok.id != key:
                bad.append(f"token key {key!r} holds token {tok.id}")
            found.tokens[key] = tok
    owners = {tuple(k.rsplit("@", 1)) for k, _ in await _all(store, keys.ACCESS_TOKEN_OWNERS)}
    uses = await _all(store, keys.ACCESS_TOKEN_USED)
    for key, raw in uses:
        decode("token use", key, LastUse.decode, raw)

    # -- the indexes agree with the records -------------------------------------------------
    for key, team in found.teams.items():
        if team.org not in found.orgs:
            bad.append(f"team {key} belongs to no organization")
        for member in team.members:
            if (member, key) not in found.memberships:
                bad.append(f"team {key} lists {member}, whose membership index key is missing")
    for target, subject in found.grants:
        sort, _, holder = subject.partition(":")
        if (sort == "user" and holder not in found.users) or (
            sort == "team" and holder not in found.teams
        ):
            bad.append(f"grant on {target} to {subject}, who does not exist")
    for user, team_key in found.memberships:
        team = found.teams.get(team_key)
        if team is None or user not in team.members:
            bad.append(f"orphan membership index key {user}@{team_key}")
        if user not in found.users:
            bad.append(f"membership {user}@{team_key} of a user that does not exist")
    for tid, tok in found.tokens.items():
        if (tok.owner, tid) not in owners:
            bad.append(f"token {tid} of {tok.owner} has no owner index key")
        if not tok.robot and tok.owner not in found.users:
            bad.append(f"token {tid} of user {tok.owner}, who does not exist")
    for owner, tid in owners:
        tok = found.tokens.get(tid)
        if tok is None or tok.owner != owner:
            bad.append(f"orphan token owner index key {owner}@{tid}")
    for key, _ in uses:
        if key not in found.tokens:
            bad.append(f"orphan last-use record of token {key}")
    return found
