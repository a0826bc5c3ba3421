"""Account records (issue #9; moorage.auth.policy reads them): organizations, teams and
grants, validated on decode like every record (meta/records.py)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from moorage.errors import RecordCorrupt
from moorage.meta.records import _build, _fields, _show, check_text, dumps

# -- accounts and permissions (issue #9; moorage.auth.policy reads them) ---------------------

#: Roles a grant may give, weakest first.
ROLES = ("read", "write", "admin")
#: The most members one team record holds (a record is one etcd value, kept small).
MAX_TEAM_MEMBERS = 1000
_ACCOUNT_NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")


def check_account_name(value: object, kind: str, field_name: str = "name") -> str:
    """A user, organization or team name: 1-64 of a-z 0-9 . _ -, starting and ending with
    a letter or digit (a user's and an organization's name is a namespace, the first
    component of a repository name)."""
    if not isinstance(value, str) or not _ACCOUNT_NAME.fullmatch(value):
        raise RecordCorrupt(
            f"a {kind} record has an invalid {field_name} {_show(value)} (1-64 of a-z 0-9 "
            "._-, starting and ending with a letter or digit)"
        )
    return value


def check_subject(value: object, kind: str) -> str:
    """`user:NAME` or `team:ORG/TEAM`."""
    if not isinstance(value, str):
        raise RecordCorrupt(f"a {kind} record has a subject that is not a string")
    sort, _, rest = value.partition(":")
    if sort == "user":
        check_account_name(rest, kind, "subject")
    elif sort == "team":
        org, sep, team = rest.partition("/")
        if not sep:
            raise RecordCorrupt(f"a {kind} record has an invalid subject {_show(value)}")
        check_account_name(org, kind, "subject")
        check_account_name(team, kind, "subject")
    else:
        raise RecordCorrupt(
            f"a {kind} record has an invalid subject {_show(value)} (user:NAME or team:ORG/TEAM)"
        )
    return value


@dataclass(frozen=True, slots=True)
class OrgRecord:
    name: str

    def encode(self) -> bytes:
        return dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes | str) -> OrgRecord:
        record: OrgRecord = _build(cls, _fields(raw, "organization"), "organization")
        check_account_name(record.name, "organization")
        return record


@dataclass(frozen=True, slots=True)
class TeamRecord:
    org: str
    name: str
    members: tuple[str, ...] = ()

    def encode(self) -> bytes:
        return dumps({"org": self.org, "name": self.name, "members": list(self.members)})

    @classmethod
    def decode(cls, raw: bytes | str) -> TeamRecord:
        doc = _fields(raw, "team")
        members = doc.get("members", [])
        if not isinstance(members, list) or len(members) > MAX_TEAM_MEMBERS:
            raise RecordCorrupt("a team record has an invalid member list")
        doc["members"] = tuple(check_account_name(m, "team", "member") for m in members)
        record: TeamRecord = _build(cls, doc, "team")
        check_account_name(record.org, "team", "organization")
        check_account_name(record.name, "team")
        return record


@dataclass(frozen=True, slots=True)
class GrantRecord:
    """`role` on `target` (a namespace `NS` or a repository `NS/REPO`) for `subject`."""

    target: str
    subject: str
    role: str

    def encode(self) -> bytes:
        return dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes | str) -> GrantRecord:
        record: GrantRecord = _build(cls, _fields(raw, "grant"), "grant")
        record.validate()
        return record

    def validate(self) -> None:
        check_text(self.target, "grant", "target")
        if not self.target or "@" in self.target:
            raise RecordCorrupt(f"a grant record has an invalid target {_show(self.target)}")
        check_subject(self.subject, "grant")
        if self.role not in ROLES:
            raise RecordCorrupt(f"a grant record has an invalid role {_show(self.role)}")
