"""What etcd says about its members, and the TLS material its client presents
(`moorage.meta.etcd` uses these; kept apart so that module stays within the size limit)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClientTls:
    """PEM bytes the etcd client trusts and presents (`TlsDir.client_material()`, D/tls/)."""

    ca: bytes
    key: bytes
    cert: bytes


@dataclass(frozen=True, slots=True)
class Member:
    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool

    @property
    def hex_id(self) -> str:
        return f"{self.id:x}"


@dataclass(frozen=True, slots=True)
class MemberStatus:
    member_id: int
    leader: int
    raft_index: int
    raft_term: int
    is_learner: bool
    revision: int
    errors: tuple[str, ...]
    #: bytes of the member's database file, and of the pages in it that hold data (the rest
    #: is free space a compaction left: a defragmentation gives it back to the filesystem)
    db_size: int = 0
    db_size_in_use: int = 0


# etcd refuses membership changes for a while after the previous one, and 3.4 allows one
# learner at a time; these answers mean "try again shortly", never "failed".
TRANSIENT = (
    "unhealthy cluster",
    "too many learner",
    "can only promote a learner member which is in sync",
    "leader changed",
    "no leader",
    "timed out",
    "deadline exceeded",
    "unavailable",
)
