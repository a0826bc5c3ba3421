"""What etcd says about its members (`moorage.meta.etcd` answers these; kept apart so that
module stays within the size limit)."""

from __future__ import annotations

from dataclasses import dataclass


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
