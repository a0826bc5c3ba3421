"""Password hashing (argon2id); only hashes are ever stored.

The parameters are pinned (OWASP's Password Storage Cheat Sheet: argon2id, 19 MiB, 2 passes,
1 lane) rather than left to the library's defaults, so that the dummy hash unknown users are
checked against costs what a real user's check costs. Until 2026-12 they were RFC 9106's
second recommendation (64 MiB, 3 passes, 4 lanes): 64 MiB held per check was most of a
replica's peak memory, and a check took ~180 ms of CPU against ~22 ms now. A hash made with
other parameters still verifies (argon2 reads them from the hash) and is made again with these
at the user's next successful login (`needs_rehash`, `moorage.auth.basic`). Memory per check
is why checks run on a small executor of their own (`moorage.auth.verifier`).

Test suites only: `MOORAGE_TEST_CHEAP_PASSWORDS=1` in a process's environment makes its
hashes with argon2's minimum cost (1 pass, 256 KiB, 1 lane) instead: a check costs ~0.27 s
of CPU, and the replicas a test run starts make and check thousands (the test harness sets it
for the processes it starts; `hash_password` in the test process itself stays pinned). Never
set it on a replica that serves anyone: its hashes would be cheap to crack.
"""

from __future__ import annotations

import base64
import functools
import os
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

TIME_COST = 2
MEMORY_COST_KIB = 19 * 1024
PARALLELISM = 1
_CHEAP = os.environ.get("MOORAGE_TEST_CHEAP_PASSWORDS") == "1"

_HASHER = (
    PasswordHasher(time_cost=1, memory_cost=256, parallelism=1)
    if _CHEAP
    else PasswordHasher(time_cost=TIME_COST, memory_cost=MEMORY_COST_KIB, parallelism=PARALLELISM)
)


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def rehash(password: str, old_hash: str) -> str:
    """A hash of `password` (just verified against `old_hash`) with today's parameters and
    the old hash's salt: tokens remember an account by its salt (`auth.access.password_mark`),
    so those issued before the rehash stay valid."""
    salt = old_hash.split("$")[4]
    return _HASHER.hash(password, salt=base64.b64decode(salt + "=" * (-len(salt) % 4)))


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Whether a hash was made with other parameters than today's (never with the test
    suites' cheap hashes: their replicas keep the hashes the tests gave them)."""
    if _CHEAP:
        return False
    try:
        return _HASHER.check_needs_rehash(password_hash)
    except InvalidHashError:
        return False


@functools.cache
def dummy_hash() -> str:
    """A hash of a random password with the same parameters: what an unknown user's
    password is checked against, so that unknown and known users cost the same."""
    return hash_password(secrets.token_urlsafe(32))


def generate_password() -> str:
    return secrets.token_urlsafe(18)
