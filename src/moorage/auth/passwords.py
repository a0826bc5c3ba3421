"""Password hashing (argon2id); only hashes are ever stored.

The parameters are pinned (RFC 9106's second recommendation: 64 MiB, 3 passes, 4 lanes)
rather than left to the library's defaults, so that the dummy hash unknown users are
checked against costs what a real user's check costs. 64 MiB per check is why checks run
on a small executor of their own (`moorage.auth.verifier`): its size bounds the memory.
"""

from __future__ import annotations

import functools
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

TIME_COST = 3
MEMORY_COST_KIB = 64 * 1024
PARALLELISM = 4

_HASHER = PasswordHasher(time_cost=TIME_COST, memory_cost=MEMORY_COST_KIB, parallelism=PARALLELISM)


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


@functools.cache
def dummy_hash() -> str:
    """A hash of a random password with the same parameters: what an unknown user's
    password is checked against, so that unknown and known users cost the same."""
    return hash_password(secrets.token_urlsafe(32))


def generate_password() -> str:
    return secrets.token_urlsafe(18)
