"""The registry's records as typed entries: what a backup holds and a restore writes back.

An entry says what its record is about (the tag `v1` of repository `a/b`, ...), never
which key holds it: the admin API ships entries and backup archives store them, so neither
depends on the key layout (meta/keys.py, which `from_kv` and `to_kv` alone consult).

Every entry is validated wherever it comes from (the store, the admin API, an archive):
whoever can write an archive can forge one. Anything wrong raises RecordCorrupt.

JSON form, one object per entry, `kind` first:

    {"kind": "repository", "repo"}
    {"kind": "tag", "repo", "tag", "digest", "media_type", "size"}
    {"kind": "manifest", "repo", "digest", "media_type", "size", "subject", "artifact_type"}
    {"kind": "blob_link", "repo", "digest", "size"}
    {"kind": "referrer", "repo", "subject", "descriptor"}
    {"kind": "user" | "org" | "team" | "membership" | "grant" | "public" | "access_token", ...}
                            (the accounts: moorage.meta.account_entries)
    {"kind": "journal_key", "key"}      (authenticates the journal's account changes)
    {"kind": "policy", "target", "immutable_tags", "keep_last", ...}  (meta/policy_records.py)
    {"kind": "cluster", "cluster_id", "epoch"}          (kept, never restored)
    {"kind": "replica", "replica_id", "url", ...}        (kept, never restored)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from moorage.errors import RecordCorrupt
from moorage.meta import keys
from moorage.meta.access_tokens import AccessTokenRecord
from moorage.meta.account_entries import (
    ACCOUNT_KINDS,
    AccessTokenEntry,
    GrantEntry,
    JournalKeyEntry,
    MembershipEntry,
    OrgEntry,
    PublicEntry,
    TeamEntry,
    UserEntry,
)
from moorage.meta.account_entries import check_repo as _repo
from moorage.meta.account_entries import show as _show
from moorage.meta.account_records import GrantRecord, OrgRecord, TeamRecord
from moorage.meta.policy_records import PolicyRecord
from moorage.meta.records import (
    ClusterRecord,
    ManifestRecord,
    ReplicaRecord,
    TagRecord,
    UserRecord,
    check_digest,
    check_size,
    check_text,
    decode_blob_link,
    decode_referrer,
    dumps,
)
from moorage.oci.names import is_valid_tag

__all__ = [
    "ACCOUNT_KINDS",
    "RESTORED_KINDS",
    "AccessTokenEntry",
    "BlobLinkEntry",
    "ClusterEntry",
    "Entry",
    "GrantEntry",
    "JournalKeyEntry",
    "ManifestEntry",
    "MembershipEntry",
    "OrgEntry",
    "PublicEntry",
    "ReferrerEntry",
    "ReplicaEntry",
    "RepoEntry",
    "Snapshot",
    "TagEntry",
    "TeamEntry",
    "UserEntry",
    "from_json",
    "from_kv",
    "to_json",
    "to_kv",
    "to_kvs",
]


@dataclass(frozen=True, slots=True)
class RepoEntry:
    kind: ClassVar[str] = "repository"
    repo: str

    def validate(self) -> None:
        _repo(self.repo)

    def fields(self) -> dict[str, Any]:
        return {"repo": self.repo}


@dataclass(frozen=True, slots=True)
class TagEntry:
    kind: ClassVar[str] = "tag"
    repo: str
    tag: str
    record: TagRecord

    def validate(self) -> None:
        _repo(self.repo)
        if not isinstance(self.tag, str) or not is_valid_tag(self.tag):
            raise RecordCorrupt(f"invalid tag {_show(self.tag)}")
        self.record.validate()

    def fields(self) -> dict[str, Any]:
        return {"repo": self.repo, "tag": self.tag, **json.loads(self.record.encode())}


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    kind: ClassVar[str] = "manifest"
    repo: str
    record: ManifestRecord

    @property
    def digest(self) -> str:
        return self.record.digest

    def validate(self) -> None:
        _repo(self.repo)
        self.record.validate()

    def fields(self) -> dict[str, Any]:
        return {"repo": self.repo, **asdict(self.record)}


@dataclass(frozen=True, slots=True)
class BlobLinkEntry:
    kind: ClassVar[str] = "blob_link"
    repo: str
    digest: str
    size: int

    def validate(self) -> None:
        _repo(self.repo)
        check_digest(self.digest, "blob link")
        check_size(self.size, "blob link")

    def fields(self) -> dict[str, Any]:
        return {"repo": self.repo, "digest": self.digest, "size": self.size}


@dataclass(frozen=True, slots=True)
class ReferrerEntry:
    kind: ClassVar[str] = "referrer"
    repo: str
    subject: str
    descriptor: dict[str, Any] = field(hash=False)

    @property
    def digest(self) -> str:
        return str(self.descriptor.get("digest"))

    def validate(self) -> None:
        _repo(self.repo)
        check_digest(self.subject, "referrer", "subject")
        if not isinstance(self.descriptor, dict):
            raise RecordCorrupt("a referrer record's descriptor is not an object")
        decode_referrer(dumps(self.descriptor))

    def fields(self) -> dict[str, Any]:
        return {"repo": self.repo, "subject": self.subject, "descriptor": self.descriptor}


@dataclass(frozen=True, slots=True)
class ClusterEntry:
    kind: ClassVar[str] = "cluster"
    record: ClusterRecord

    def validate(self) -> None:
        ClusterRecord.decode(self.record.encode())

    def fields(self) -> dict[str, Any]:
        return asdict(self.record)


@dataclass(frozen=True, slots=True)
class ReplicaEntry:
    kind: ClassVar[str] = "replica"
    record: ReplicaRecord

    def validate(self) -> None:
        for name in ("replica_id", "url", "etcd_peer_url", "etcd_client_url"):
            check_text(getattr(self.record, name), "replica", name.replace("_", " "))

    def fields(self) -> dict[str, Any]:
        return asdict(self.record)


@dataclass(frozen=True, slots=True)
class PolicyEntry:
    kind: ClassVar[str] = "policy"
    record: PolicyRecord

    def validate(self) -> None:
        PolicyRecord.decode(self.record.encode())

    def fields(self) -> dict[str, Any]:
        return self.record.doc()


Entry = (
    RepoEntry
    | TagEntry
    | ManifestEntry
    | BlobLinkEntry
    | ReferrerEntry
    | UserEntry
    | ClusterEntry
    | ReplicaEntry
    | OrgEntry
    | TeamEntry
    | MembershipEntry
    | GrantEntry
    | PublicEntry
    | AccessTokenEntry
    | JournalKeyEntry
    | PolicyEntry
)
#: What a restore writes back (cluster and replica records belong to the old cluster).
RESTORED_KINDS = (
    frozenset({"repository", "tag", "manifest", "blob_link", "referrer", "journal_key", "policy"})
    | ACCOUNT_KINDS
)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every record of the registry and of the cluster as of one store revision."""

    revision: int
    entries: list[Entry]


def to_json(entry: Entry) -> dict[str, Any]:
    return {"kind": entry.kind, **entry.fields()}


def _record(cls: Any, doc: dict[str, Any]) -> Any:
    """A record from the entry's remaining fields, through the record's own decoder."""
    return cls.decode(json.dumps(doc))


def from_json(doc: object) -> Entry:
    """An entry from its JSON form, validated (RecordCorrupt otherwise)."""
    if not isinstance(doc, dict):
        raise RecordCorrupt("not a JSON object")
    fields = dict(doc)
    kind = fields.pop("kind", None)
    entry: Entry
    try:
        if kind == "repository":
            entry = RepoEntry(**fields)
        elif kind == "tag":
            repo, tag = fields.pop("repo", None), fields.pop("tag", None)
            entry = TagEntry(repo, tag, _record(TagRecord, fields))
        elif kind == "manifest":
            repo = fields.pop("repo", None)
            entry = ManifestEntry(repo, _record(ManifestRecord, fields))
        elif kind == "blob_link":
            entry = BlobLinkEntry(**fields)
        elif kind == "referrer":
            entry = ReferrerEntry(**fields)
        elif kind == "user":
            entry = UserEntry(_record(UserRecord, fields))
        elif kind == "cluster":
            entry = ClusterEntry(_record(ClusterRecord, fields))
        elif kind == "replica":
            entry = ReplicaEntry(_record(ReplicaRecord, fields))
        elif kind == "org":
            entry = OrgEntry(_record(OrgRecord, fields))
        elif kind == "team":
            entry = TeamEntry(_record(TeamRecord, fields))
        elif kind == "membership":
            entry = MembershipEntry(**fields)
        elif kind == "grant":
            entry = GrantEntry(_record(GrantRecord, fields))
        elif kind == "public":
            entry = PublicEntry(**fields)
        elif kind == "policy":
            entry = PolicyEntry(_record(PolicyRecord, fields))
        elif kind == "access_token":
            entry = AccessTokenEntry(_record(AccessTokenRecord, fields))
        elif kind == "journal_key":
            entry = JournalKeyEntry(**fields)
        else:
            raise RecordCorrupt(f"unknown kind {_show(kind)}")
    except TypeError:
        raise RecordCorrupt(f"a {kind} entry has unexpected or missing fields") from None
    entry.validate()
    return entry


def from_kv(key: bytes, value: bytes) -> Entry | None:
    """The entry a key and its value hold, validated; None for what a snapshot leaves out
    (heartbeats, locks, unknown keys under the root); RecordCorrupt for anything invalid
    (a key outside the root included)."""
    parsed = keys.parse(key)
    if parsed is None:
        raise RecordCorrupt("not a Moorage key")
    kind, parts = parsed
    entry: Entry
    if kind == "repository":
        entry = RepoEntry(parts[0])
    elif kind == "tag":
        entry = TagEntry(parts[0], parts[1], TagRecord.decode(value))
    elif kind == "manifest":
        check_digest(parts[1], "manifest key")
        entry = ManifestEntry(parts[0], ManifestRecord.decode(value))
        if entry.digest != parts[1]:
            raise RecordCorrupt(f"the record says digest {_show(entry.digest)}")
    elif kind == "blob_link":
        check_digest(parts[1], "blob link key")
        entry = BlobLinkEntry(parts[0], parts[1], decode_blob_link(value))
    elif kind == "referrer":
        check_digest(parts[2], "referrer key")
        entry = ReferrerEntry(parts[0], parts[1], decode_referrer(value))
        if entry.digest != parts[2]:
            raise RecordCorrupt("the descriptor names another digest")
    elif kind == "user":
        user = UserRecord.decode(value)
        if user.name != parts[0]:
            raise RecordCorrupt(f"the record names user {_show(user.name)}")
        entry = UserEntry(user)
    elif kind == "cluster":
        entry = ClusterEntry(ClusterRecord.decode(value))
    elif kind == "journal_key":
        entry = JournalKeyEntry.decode(value)
    elif kind == "replica":
        entry = ReplicaEntry(ReplicaRecord.decode(value))
    elif kind == "org":
        entry = OrgEntry(OrgRecord.decode(value))
        if entry.record.name != parts[0]:
            raise RecordCorrupt(f"the record names organization {_show(entry.record.name)}")
    elif kind == "team":
        entry = TeamEntry(TeamRecord.decode(value))
        if f"{entry.record.org}/{entry.record.name}" != parts[0]:
            raise RecordCorrupt("the record names another team")
    elif kind == "membership":
        org, sep, team = parts[1].partition("/")
        if not sep:
            raise RecordCorrupt("a membership key names no ORG/TEAM")
        entry = MembershipEntry(parts[0], org, team)
    elif kind == "grant":
        entry = GrantEntry(GrantRecord.decode(value))
        if (entry.record.target, entry.record.subject) != parts:
            raise RecordCorrupt("the grant record names another target or subject")
    elif kind == "public":
        entry = PublicEntry(parts[0])
    elif kind == "policy":
        entry = PolicyEntry(PolicyRecord.decode(value))
        if entry.record.target != parts[0]:
            raise RecordCorrupt(f"the record names policy target {_show(entry.record.target)}")
    elif kind == "access_token":
        entry = AccessTokenEntry(AccessTokenRecord.decode(value))
        if entry.record.id != parts[0]:
            raise RecordCorrupt(f"the record names access token {_show(entry.record.id)}")
    elif kind == "invalid":
        raise RecordCorrupt("a malformed key (not the fields its prefix needs, joined by @)")
    else:  # heartbeats, locks, tokens' owner index and last use, other keys under the root
        return None
    entry.validate()
    return entry


def to_kv(entry: Entry) -> tuple[bytes, bytes]:
    """The key and value that hold `entry` in the store."""
    if isinstance(entry, RepoEntry):
        return keys.repo(entry.repo), b"{}"
    if isinstance(entry, TagEntry):
        return keys.tag(entry.repo, entry.tag), entry.record.encode()
    if isinstance(entry, ManifestEntry):
        return keys.manifest(entry.repo, entry.digest), entry.record.encode()
    if isinstance(entry, BlobLinkEntry):
        return keys.blob(entry.repo, entry.digest), dumps({"size": entry.size})
    if isinstance(entry, ReferrerEntry):
        return keys.referrer(entry.repo, entry.subject, entry.digest), dumps(entry.descriptor)
    if isinstance(entry, UserEntry):
        return keys.user(entry.record.name), entry.record.encode()
    if isinstance(entry, ClusterEntry):
        return keys.CLUSTER, entry.record.encode()
    if isinstance(entry, OrgEntry):
        return keys.org(entry.record.name), entry.record.encode()
    if isinstance(entry, TeamEntry):
        return keys.team(entry.record.org, entry.record.name), entry.record.encode()
    if isinstance(entry, MembershipEntry):
        return keys.membership(entry.user, entry.org, entry.team), b"{}"
    if isinstance(entry, GrantEntry):
        return keys.grant(entry.record.target, entry.record.subject), entry.record.encode()
    if isinstance(entry, PublicEntry):
        return keys.public(entry.repo), b"{}"
    if isinstance(entry, PolicyEntry):
        return keys.policy(entry.record.target), entry.record.encode()
    if isinstance(entry, AccessTokenEntry):
        return keys.access_token(entry.record.id), entry.record.encode()
    if isinstance(entry, JournalKeyEntry):
        return keys.JOURNAL_KEY, entry.encode()
    return keys.replica(entry.record.replica_id), entry.record.encode()


def to_kvs(entry: Entry) -> list[tuple[bytes, bytes]]:
    """Every key and value that `entry` makes in the store: its own (`to_kv`) and what is
    derived from it (an access token's owner index entry)."""
    kvs = [to_kv(entry)]
    if isinstance(entry, AccessTokenEntry):
        kvs.append((keys.access_token_owner(entry.record.owner, entry.record.id), b"{}"))
    return kvs
