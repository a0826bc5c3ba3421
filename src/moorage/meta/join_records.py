"""The records of join tokens (moorage.cluster.join_tokens): validated on the way back."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from moorage.errors import RecordCorrupt
from moorage.meta.records import _build as build
from moorage.meta.records import _fields as fields
from moorage.meta.records import dumps

_HEX = re.compile(r"[0-9a-f]{1,64}")


def _check(record: object, kind: str, **expect: type | tuple[type, ...]) -> None:
    for name, types in expect.items():
        value = getattr(record, name)
        if not isinstance(value, types) or isinstance(value, bool):
            raise RecordCorrupt(f"a {kind} record has a bad {name}")
        if isinstance(value, str) and len(value) > 300:
            raise RecordCorrupt(f"a {kind} record has a {name} over 300 characters")


@dataclass(frozen=True, slots=True)
class JoinTokenRecord:
    """An unused join token: its public id (the start of its hash), when it was made, when
    it expires (unix seconds) and by whom."""

    id: str
    created_at: float
    expires_at: float
    created_by: str

    def encode(self) -> bytes:
        return dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes | str) -> JoinTokenRecord:
        record: JoinTokenRecord = build(cls, fields(raw, "join token"), "join token")
        _check(
            record, "join token", id=str, created_at=(int, float), expires_at=(int, float),
            created_by=str,
        )  # fmt: skip
        if not _HEX.fullmatch(record.id):
            raise RecordCorrupt("a join token record has a bad id")
        return record


@dataclass(frozen=True, slots=True)
class JoinClaimRecord:
    """The one join a token was used for: the hash of the secret that join's later calls
    present, its replica id and etcd peer URL, and when."""

    secret_hash: str
    replica_id: str
    peer_url: str
    at: float

    def encode(self) -> bytes:
        return dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes | str) -> JoinClaimRecord:
        record: JoinClaimRecord = build(cls, fields(raw, "join claim"), "join claim")
        _check(record, "join claim", secret_hash=str, replica_id=str, peer_url=str, at=(int, float))
        if not _HEX.fullmatch(record.secret_hash):
            raise RecordCorrupt("a join claim record has a bad secret_hash")
        return record
