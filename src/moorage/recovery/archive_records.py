"""The records of a backup archive (metadata.json), validated and indexed.

Formats 2 and 3 hold typed records (moorage.meta.snapshot; 3 adds access tokens, read the
same way); format 1 held the store's keys and values, turned here into the same records.
Nothing in any is trusted: a record that fails validation is listed in `invalid`, never
restored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from moorage.errors import MoorageError
from moorage.meta.records import ManifestRecord
from moorage.meta.snapshot import (
    ACCOUNT_KINDS,
    RESTORED_KINDS,
    BlobLinkEntry,
    Entry,
    ManifestEntry,
    PolicyEntry,
    RepoEntry,
    TagEntry,
    UserEntry,
    from_json,
    from_kv,
    to_json,
)
from moorage.oci.names import namespace_of
from moorage.recovery.archive import BackupError, read_header, read_json_member, show

# -- the records ----------------------------------------------------------------------


@dataclass
class Metadata:
    """The records of a backup, each validated, indexed for the checks and the restore."""

    entries: list[Entry] = field(default_factory=list)  # every valid record
    tags: dict[tuple[str, str], str] = field(default_factory=dict)  # (repo, tag) -> digest
    #: (repo, tag) -> (media type, size) the tag record says, when not its manifest's own
    #: (checked against the manifest record by `backup verify`)
    tag_claims: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)
    manifests: dict[tuple[str, str], ManifestRecord] = field(default_factory=dict)
    links: dict[tuple[str, str], int] = field(default_factory=dict)  # (repo, digest) -> size
    users: int = 0
    accounts: dict[str, int] = field(default_factory=dict)  # kind -> records (not users)
    repo_names: set[str] = field(default_factory=set)
    invalid: list[str] = field(default_factory=list)  # one line per refused record
    sparse: dict[str, bool] = field(default_factory=dict)  # policy target -> allow_sparse

    @classmethod
    def parse(cls, records: object) -> Metadata:
        """Format 2: typed records (`{"kind": ...}` objects)."""
        md = cls()
        if not isinstance(records, list):
            md.invalid.append("metadata.json: records is not a list")
            return md
        for doc in records:
            try:
                md.add(from_json(doc))
            except MoorageError as exc:
                md.invalid.append(f"record {show(doc)}: {exc}")
        return md

    @classmethod
    def parse_kvs(cls, kvs: object) -> Metadata:
        """Format 1: the store's [key, value] pairs, turned into typed records."""
        md = cls()
        if not isinstance(kvs, list):
            md.invalid.append("metadata.json: kvs is not a list")
            return md
        for pair in kvs:
            if (
                not isinstance(pair, list | tuple)
                or len(pair) != 2
                or not all(isinstance(x, str) for x in pair)
            ):
                md.invalid.append(f"record {show(pair)}: not a [key, value] pair of strings")
                continue
            key, value = pair
            try:
                entry = from_kv(key.encode(), value.encode())
            except MoorageError as exc:
                md.invalid.append(f"record {show(key)}: {exc}")
                continue
            if entry is not None:
                md.add(entry)
        return md

    def add(self, entry: Entry) -> None:
        if isinstance(entry, TagEntry):
            self.tags[(entry.repo, entry.tag)] = entry.record.digest
            self.tag_claims[(entry.repo, entry.tag)] = (entry.record.media_type, entry.record.size)
        elif isinstance(entry, ManifestEntry):
            self.manifests[(entry.repo, entry.digest)] = entry.record
        elif isinstance(entry, BlobLinkEntry):
            self.links[(entry.repo, entry.digest)] = entry.size
        elif isinstance(entry, RepoEntry):
            self.repo_names.add(entry.repo)
        elif isinstance(entry, UserEntry):
            self.users += 1
        elif isinstance(entry, PolicyEntry) and entry.record.allow_sparse is not None:
            self.sparse[entry.record.target] = entry.record.allow_sparse
        elif entry.kind in ACCOUNT_KINDS:
            self.accounts[entry.kind] = self.accounts.get(entry.kind, 0) + 1
        self.entries.append(entry)

    def allows_sparse(self, repo: str) -> bool:
        """Whether `repo`'s policies let its manifests name absent blobs and manifests (the
        repository's own setting, else its namespace's; off by default)."""
        own = self.sparse.get(repo)
        return own if own is not None else self.sparse.get(namespace_of(repo), False)

    def restorable(self) -> list[Entry]:
        return [e for e in self.entries if e.kind in RESTORED_KINDS]

    def repos(self) -> set[str]:
        return self.repo_names

    def manifest_digests(self) -> set[str]:
        return {d for _, d in self.manifests}

    def counts(self) -> dict[str, int]:
        """`blobs`: distinct layer and config blobs (manifests are counted apart);
        `access_tokens`: personal tokens and robot accounts' tokens."""
        return {
            "repositories": len(self.repo_names),
            "tags": len(self.tags),
            "manifests": len(self.manifests),
            "blob_links": len(self.links),
            "blobs": len({d for _, d in self.links}),
            "users": self.users,
            "orgs": self.accounts.get("org", 0),
            "teams": self.accounts.get("team", 0),
            "grants": self.accounts.get("grant", 0),
            "access_tokens": self.accounts.get("access_token", 0),
        }


def read_metadata(path: Path, version: int | None = None) -> Metadata:
    """The records of the archive at `path` (`version`: its header's, read if not given)."""
    if version is None:
        version = int(read_header(path)["version"])
    doc = read_json_member(path, "metadata.json")
    if not isinstance(doc, dict):
        raise BackupError(f"{path}: metadata.json is not a JSON object")
    if version == 1:
        return Metadata.parse_kvs(doc.get("kvs"))
    return Metadata.parse(doc.get("records"))


def metadata_member(entries: list[Entry]) -> bytes:
    """metadata.json of the current format."""
    return json.dumps({"records": [to_json(e) for e in entries]}).encode()
