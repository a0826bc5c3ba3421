"""The account records as typed entries (moorage.meta.snapshot holds the registry's and
the one JSON form of both): users, organizations, teams, memberships, grants, public
repositories and access tokens (robot accounts are the tokens whose owner is `robot+NAME`:
no record of their own). What a backup holds of them, and what the journal records of
every change to them (moorage.meta.account_journal).

JSON form, one object per entry, `kind` first:

    {"kind": "user", "name", "password_hash", "role", "admin", "disabled"}
    {"kind": "org", "name"}
    {"kind": "team", "org", "name", "members"}
    {"kind": "membership", "user", "org", "team"}
    {"kind": "grant", "target", "subject", "role"}
    {"kind": "public", "repo"}
    {"kind": "access_token", "id", "owner", "robot", "secret_hash", "scopes", "created_at",
     "expires_at", "created_by"}          (the SHA-256 of the secret, never the secret)

A revoked token is deleted, so no entry says "revoked": it is absent. Beside them,
`{"kind": "journal_key", "key"}`: the key that authenticates the journal's account changes.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from moorage.errors import MoorageError, RecordCorrupt
from moorage.meta.access_tokens import AccessTokenRecord
from moorage.meta.account_records import GrantRecord, OrgRecord, TeamRecord, check_account_name
from moorage.meta.records import UserRecord
from moorage.oci.names import validate_name

#: The kinds of account entries (restored from backups, journaled, replayed).
ACCOUNT_KINDS = frozenset({"user", "org", "team", "membership", "grant", "public", "access_token"})


_KEY = re.compile(r"[0-9a-f]{64}")


def show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def check_repo(name: object) -> str:
    """A valid repository (or namespace) name, else RecordCorrupt."""
    if not isinstance(name, str):
        raise RecordCorrupt(f"repository name {show(name)} is not a string")
    try:
        return validate_name(name)
    except MoorageError as exc:
        raise RecordCorrupt(str(exc)) from None


@dataclass(frozen=True, slots=True)
class UserEntry:
    kind: ClassVar[str] = "user"
    record: UserRecord

    def validate(self) -> None:
        UserRecord.decode(self.record.encode())

    def fields(self) -> dict[str, Any]:
        return asdict(self.record)


@dataclass(frozen=True, slots=True)
class OrgEntry:
    kind: ClassVar[str] = "org"
    record: OrgRecord

    def validate(self) -> None:
        OrgRecord.decode(self.record.encode())

    def fields(self) -> dict[str, Any]:
        return asdict(self.record)


@dataclass(frozen=True, slots=True)
class TeamEntry:
    kind: ClassVar[str] = "team"
    record: TeamRecord

    def validate(self) -> None:
        TeamRecord.decode(self.record.encode())

    def fields(self) -> dict[str, Any]:
        return json.loads(self.record.encode())  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class MembershipEntry:
    """The index of a team member (meta/accounts.py): `user` is in `org/team`."""

    kind: ClassVar[str] = "membership"
    user: str
    org: str
    team: str

    def validate(self) -> None:
        for name in (self.user, self.org, self.team):
            check_account_name(name, "membership")

    def fields(self) -> dict[str, Any]:
        return {"user": self.user, "org": self.org, "team": self.team}


@dataclass(frozen=True, slots=True)
class GrantEntry:
    kind: ClassVar[str] = "grant"
    record: GrantRecord

    def validate(self) -> None:
        self.record.validate()
        check_repo(self.record.target)

    def fields(self) -> dict[str, Any]:
        return asdict(self.record)


@dataclass(frozen=True, slots=True)
class PublicEntry:
    kind: ClassVar[str] = "public"
    repo: str

    def validate(self) -> None:
        check_repo(self.repo)

    def fields(self) -> dict[str, Any]:
        return {"repo": self.repo}


@dataclass(frozen=True, slots=True)
class AccessTokenEntry:
    """A personal token or a robot account's token, as its record (meta/access_tokens.py):
    owner, robot flag, scopes, expiry, the SHA-256 of its secret."""

    kind: ClassVar[str] = "access_token"
    record: AccessTokenRecord

    def validate(self) -> None:
        AccessTokenRecord.decode(self.record.encode())

    def fields(self) -> dict[str, Any]:
        return asdict(self.record)


@dataclass(frozen=True, slots=True)
class JournalKeyEntry:
    """The HMAC key of the journal's account changes (moorage.meta.account_journal): a
    restore writes it back, and replays only the entries it authenticates."""

    kind: ClassVar[str] = "journal_key"
    key: str  # 64 hex digits

    def validate(self) -> None:
        if not isinstance(self.key, str) or not _KEY.fullmatch(self.key):
            raise RecordCorrupt("the journal key is not 64 hex digits")

    def fields(self) -> dict[str, Any]:
        return {"key": self.key}

    def encode(self) -> bytes:
        return json.dumps({"key": self.key}).encode()

    @classmethod
    def decode(cls, raw: bytes) -> JournalKeyEntry:
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise RecordCorrupt("the journal key record is not JSON") from None
        if not isinstance(doc, dict) or set(doc) != {"key"}:
            raise RecordCorrupt('the journal key record is not {"key": HEX}')
        entry = cls(doc["key"])
        entry.validate()
        return entry


AccountEntry = (
    UserEntry | OrgEntry | TeamEntry | MembershipEntry | GrantEntry | PublicEntry | AccessTokenEntry
)
