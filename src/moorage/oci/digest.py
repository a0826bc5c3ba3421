"""Digests: `algorithm:encoded`, verified with hashlib."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

from moorage.errors import DigestInvalid

# Encoded lengths of the algorithms the registry accepts.
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}
_GRAMMAR = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")  # fullmatch only
_HEX = re.compile(r"[a-f0-9]+")


class Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    encoded: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded}"

    def hasher(self) -> Hasher:
        return hashlib.new(self.algorithm)


def parse_digest(value: str) -> Digest:
    """Parse and validate a digest; raises DigestInvalid with the reason."""
    if not _GRAMMAR.fullmatch(value):
        raise DigestInvalid(f"invalid digest {value[:160]!r}: expected algorithm:hex")
    algorithm, encoded = value.split(":", 1)
    length = ALGORITHMS.get(algorithm)
    if length is None:
        raise DigestInvalid(
            f"unsupported digest algorithm {algorithm!r}: use one of {', '.join(ALGORITHMS)}"
        )
    if len(encoded) != length or not _HEX.fullmatch(encoded):
        raise DigestInvalid(
            f"invalid {algorithm} digest: expected {length} lowercase hex characters"
        )
    return Digest(algorithm, encoded)


def is_digest(value: str) -> bool:
    return ":" in value


def digest_of(data: bytes, algorithm: str = "sha256") -> Digest:
    return Digest(algorithm, hashlib.new(algorithm, data).hexdigest())
