"""Records kept in the metadata store."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class TagRecord:
    digest: str
    media_type: str
    size: int

    def encode(self) -> bytes:
        return dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes) -> TagRecord:
        return cls(**json.loads(raw))


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
    def decode(cls, raw: bytes) -> ManifestRecord:
        return cls(**json.loads(raw))

    def tag_record(self) -> TagRecord:
        return TagRecord(self.digest, self.media_type, self.size)


@dataclass(frozen=True, slots=True)
class UploadRecord:
    id: str
    repo: str
    started_at: float

    def encode(self) -> bytes:
        return dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes) -> UploadRecord:
        return cls(**json.loads(raw))


@dataclass(frozen=True, slots=True)
class UserRecord:
    name: str
    password_hash: str
    role: str = "admin"

    def encode(self) -> bytes:
        return dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes) -> UserRecord:
        return cls(**json.loads(raw))


@dataclass(frozen=True, slots=True)
class ClusterRecord:
    cluster_id: str
    epoch: int = 1

    def encode(self) -> bytes:
        return dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes) -> ClusterRecord:
        return cls(**json.loads(raw))


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
    def decode(cls, raw: bytes) -> ReplicaRecord:
        return cls(**json.loads(raw))


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
    def decode(cls, raw: bytes) -> HeartbeatRecord:
        return cls(**json.loads(raw))
