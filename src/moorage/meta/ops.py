"""The store's primitive values: a key with its value and revision, the operations of a
transaction and its compare-and-set guards (used by `meta.base` and the modules beside it)."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KV:
    key: bytes
    value: bytes
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes


Op = Put | Delete
# (key, expected mod_revision); 0 means the key must be absent, MUST_EXIST present.
Guard = tuple[bytes, int]
MUST_EXIST = -1

__all__ = ["KV", "MUST_EXIST", "Delete", "Guard", "Op", "Put"]
#: The etcd revision of the last transaction this task committed (for the journal).
LAST_REVISION: ContextVar[int] = ContextVar("moorage_last_revision", default=0)
