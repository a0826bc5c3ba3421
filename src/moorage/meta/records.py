"""Records kept in the metadata store.

Every `decode` validates what it reads: a record comes back from etcd, a backup archive or
the journal, and whoever can write one of those could forge it. A digest that is not a
valid digest, a media type the registry never records, a negative size... raise
RecordCorrupt (the record is refused, never turned into a path, a key or a header).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from moorage.errors import DigestInvalid, RecordCorrupt
from moorage.oci import mediatypes as mt
from moorage.oci.digest import parse_digest

# Longest free-form string field a record may hold (artifact types, URLs, hashes).
_MAX_TEXT = mt.MAX_TEXT
_CONTROL = mt.CONTROL


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _fields(raw: bytes | str, kind: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise RecordCorrupt(f"a {kind} record is not JSON: {_show(raw)}") from None
    if not isinstance(doc, dict):
        raise RecordCorrupt(f"a {kind} record is not a JSON object: {_show(raw)}")
    return doc


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 160 else text[:157] + "..."


def _build(cls: Any, doc: dict[str, Any], kind: str) -> Any:
    try:
        return cls(**doc)
    except TypeError:
        raise RecordCorrupt(
            f"a {kind} record has unexpected or missing fields: {_show(sorted(doc))}"
        ) from None


def check_digest(value: object, kind: str, field_name: str = "digest") -> str:
    """`value` if it is a valid digest (the canonical form), else RecordCorrupt."""
    if not isinstance(value, str):
        raise RecordCorrupt(f"a {kind} record has a {field_name} that is not a string")
    try:
        parse_digest(value)
    except DigestInvalid:
        raise RecordCorrupt(
            f"a {kind} record has an invalid {field_name} {_show(value)}: refused"
        ) from None
    return value


def check_size(value: object, kind: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise RecordCorrupt(f"a {kind} record has an invalid size {_show(value)}")
    return value


def check_manifest_type(value: object, kind: str) -> str:
    if not isinstance(value, str) or value not in mt.MANIFESTS:
        raise RecordCorrupt(f"a {kind} record has an invalid media type {_show(value)}")
    return value


def check_text(value: object, kind: str, field_name: str, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        raise RecordCorrupt(f"a {kind} record has an invalid {field_name} {_show(value)}")
    if _CONTROL.search(value):
        raise RecordCorrupt(
            f"a {kind} record has control characters in its {field_name} {_show(value)}"
        )


@dataclass(frozen=True, slots=True)
class TagRecord:
    digest: str
    media_type: str
    size: int
    pushed_at: float | None = None  # Unix time of the push (None: pushed before it was kept)

    def encode(self) -> bytes:
        doc = asdict(self)
        if self.pushed_at is None:
            del doc["pushed_at"]
        return dumps(doc)

    @classmethod
    def decode(cls, raw: bytes | str) -> TagRecord:
        record: TagRecord = _build(cls, _fields(raw, "tag"), "tag")
        record.validate("tag")
        return record

    def validate(self, kind: str = "tag") -> None:
        check_digest(self.digest, kind)
        check_manifest_type(self.media_type, kind)
        check_size(self.size, kind)
        at = self.pushed_at
        if at is not None and (not isinstance(at, int | float) or isinstance(at, bool) or at < 0):
            raise RecordCorrupt(f"a {kind} record has an invalid push time {_show(at)}")


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    digest: str
    media_type: str
    size: int
    subject: str | None = None
    artifact_type: str | None = None

    def encode(self) -> bytes:
        return dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes | str) -> ManifestRecord:
        record: ManifestRecord = _build(cls, _fields(raw, "manifest"), "manifest")
        if isinstance(record.artifact_type, str) and mt.text_fault(record.artifact_type):
            # Stored before manifest PUTs refused such types: shown as none, so the manifest
            # can still be read, deleted, collected and backed up (it only labels referrers).
            record = replace(record, artifact_type=None)
        record.validate()
        return record

    def validate(self, kind: str = "manifest") -> None:
        check_digest(self.digest, kind)
        check_manifest_type(self.media_type, kind)
        check_size(self.size, kind)
        if self.subject is not None:
            check_digest(self.subject, kind, "subject")
        check_text(self.artifact_type, kind, "artifact type", optional=True)

    def tag_record(self) -> TagRecord:
        return TagRecord(self.digest, self.media_type, self.size)


def decode_blob_link(raw: bytes | str) -> int:
    """The size a blob link (`/moorage/blobs/<repo>@<digest>`) records."""
    doc = _fields(raw, "blob link")
    return check_size(doc.get("size"), "blob link")


def decode_referrer(raw: bytes | str) -> dict[str, Any]:
    """A referrer's descriptor (`/moorage/referrers/...`), checked like a manifest record."""
    doc = _fields(raw, "referrer")
    check_digest(doc.get("digest"), "referrer")
    check_manifest_type(doc.get("mediaType"), "referrer")
    check_size(doc.get("size"), "referrer")
    if isinstance(doc.get("artifactType"), str) and mt.text_fault(doc["artifactType"]):
        del doc["artifactType"]  # as ManifestRecord.decode: stored before PUTs refused it
    check_text(doc.get("artifactType"), "referrer", "artifact type", optional=True)
    annotations = doc.get("annotations")
    if annotations is not None and not (
        isinstance(annotations, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in annotations.items())
    ):
        raise RecordCorrupt("a referrer record has invalid annotations")
    return doc


@dataclass(frozen=True, slots=True)
class UploadRecord:
    id: str
    repo: str
    started_at: float

    def encode(self) -> bytes:
        return dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes | str) -> UploadRecord:
        record: UploadRecord = _build(cls, _fields(raw, "upload"), "upload")
        return record


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A local account. `admin` (a cluster admin) defaults to what `role` says: records
    written before accounts existed hold only `role`, and "admin" there means a cluster
    admin. A `disabled` account authenticates but is allowed nothing. `sessions_ended` counts
    the times it was disabled: every UI session, refresh and Bearer token remembers it (in
    `auth.access.password_mark`), so those made before a disable stay dead after an enable."""

    name: str
    password_hash: str
    role: str = "admin"
    admin: bool | None = None
    disabled: bool = False
    sessions_ended: int = 0

    def __post_init__(self) -> None:
        if self.admin is None:
            object.__setattr__(self, "admin", self.role == "admin")

    def encode(self) -> bytes:
        return dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes | str) -> UserRecord:
        record: UserRecord = _build(cls, _fields(raw, "user"), "user")
        check_text(record.name, "user", "name")
        check_text(record.role, "user", "role")
        check_text(record.password_hash, "user", "password hash")
        if not isinstance(record.admin, bool) or not isinstance(record.disabled, bool):
            raise RecordCorrupt("a user record has a non-boolean admin or disabled flag")
        check_size(record.sessions_ended, "user")
        return record


@dataclass(frozen=True, slots=True)
class ClusterRecord:
    cluster_id: str
    epoch: int = 1
    # Voting members the cluster had before an emergency repair shrank it (0: not recorded);
    # `status` prints joins until it has as many again.
    size: int = 0

    def encode(self) -> bytes:
        return dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes | str) -> ClusterRecord:
        record: ClusterRecord = _build(cls, _fields(raw, "cluster"), "cluster")
        check_text(record.cluster_id, "cluster", "cluster id")
        check_size(record.epoch, "cluster")
        check_size(record.size, "cluster")
        return record


@dataclass(frozen=True, slots=True)
class ReplicaRecord:
    replica_id: str
    url: str
    etcd_peer_url: str
    etcd_client_url: str
    data_dir: str
    storage: str
    joined_at: float

    def encode(self) -> bytes:
        return dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes | str) -> ReplicaRecord:
        record: ReplicaRecord = _build(cls, _fields(raw, "replica"), "replica")
        return record


@dataclass(frozen=True, slots=True)
class HeartbeatRecord:
    replica_id: str
    url: str
    at: float
    healthy: bool
    error: str | None = None

    def encode(self) -> bytes:
        return dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes | str) -> HeartbeatRecord:
        record: HeartbeatRecord = _build(cls, _fields(raw, "heartbeat"), "heartbeat")
        return record


@dataclass(frozen=True, slots=True)
class LockRecord:
    """Who holds a lease-backed lock (e.g. the join lock), since when."""

    owner: str
    at: float

    def encode(self) -> bytes:
        return dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes | str) -> LockRecord:
        record: LockRecord = _build(cls, _fields(raw, "lock"), "lock")
        check_text(record.owner, "lock", "owner")
        return record

    def describe(self) -> str:
        return self.encode().decode()


@dataclass(frozen=True, slots=True)
class FenceRecord:
    """The fencing marker an emergency repair writes to blob storage (cluster/fence.py):
    replicas of `cluster_id` at an older epoch than `epoch` must not serve."""

    cluster_id: str
    epoch: int
    by_replica: str | None = None
    at: float | None = None

    def encode(self) -> bytes:
        return dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes | str) -> FenceRecord | None:
        """The marker, or None when it names no cluster or no epoch. Lenient on purpose:
        other fields are ignored (a marker must fence whatever else it holds)."""
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        if not isinstance(doc, dict):
            return None
        cluster_id, epoch = doc.get("cluster_id"), doc.get("epoch")
        if not isinstance(cluster_id, str) or not isinstance(epoch, int):
            return None
        by, at = doc.get("by_replica"), doc.get("at")
        return cls(
            cluster_id,
            epoch,
            by if isinstance(by, str) else None,
            float(at) if isinstance(at, int | float) and not isinstance(at, bool) else None,
        )


# --- token signing keys (moorage.auth.signing_keys; issue #9, Docker token flow) -----------
@dataclass(frozen=True, slots=True)
class SigningKeyRecord:
    """One JWT signing key: its id (RFC 7638 thumbprint), when it was made, its public JWK
    and its private key sealed with the cluster secret (base64)."""

    kid: str
    created_at: float
    jwk: dict[str, str]
    sealed: str

    def encode(self) -> bytes:
        return dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes) -> SigningKeyRecord:
        doc = _fields(raw, "signing key")
        record: SigningKeyRecord = _build(cls, doc, "signing key")
        ok = (
            isinstance(record.kid, str)
            and 0 < len(record.kid) <= 128
            and isinstance(record.created_at, int | float)
            and not isinstance(record.created_at, bool)
            and isinstance(record.jwk, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in record.jwk.items())
            and isinstance(record.sealed, str)
            and len(record.sealed) <= _MAX_TEXT
        )
        if not ok:
            raise RecordCorrupt(f"a signing key record is malformed: {_show(raw)}")
        return record
