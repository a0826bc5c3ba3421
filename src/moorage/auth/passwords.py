"""Password hashing (argon2id); only hashes are ever stored.

The parameters are pinned (RFC 9106's second recommendation: 64 MiB, 3 passes, 4 lanes)
rather than left to the library's defaults, so that the dummy hash unknown users are
checked against costs what a real user's check costs. 64 MiB per check is why checks run
on a small executor of their own (`moorage.auth.verifier`): its size bounds the memory.

Test suites only: `MOORAGE_TEST_CHEAP_PASSWORDS=1` in a process's environment makes its
hashes with argon2's minimum cost (1 pass, 256 KiB, 1 lane) instead: a check costs ~0.27 s
of CPU, and the replicas a test run starts make and check thousands (the test harness sets it
for the processes it starts; `hash_password` in the test process itself stays pinned). Never
set it on a replica that serves anyone: its hashes would be cheap to crack.
"""

from __future__ import annotations

import functools
import os
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

TIME_COST = 3
MEMORY_COST_KIB = 64 * 1024
PARALLELISM = 4

_HASHER = (
    PasswordHasher(time_cost=1, memory_cost=256, parallelism=1)
    if os.environ.get("MOORAGE_TEST_CHEAP_PASSWORDS") == "1"
    else PasswordHasher(time_cost=TIME_COST, memory_cost=MEMORY_COST_KIB, parallelism=PARALLELISM)
)


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
