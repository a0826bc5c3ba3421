"""How the store's etcd transactions are built: guards as compares, and write tokens.

Write tokens: each etcd write of the store commits at most once, however often it is sent.

A write whose attempt timed out is sent again (meta/etcd.py `_through_election`: during an
election the first attempt often hangs). But the first attempt may still be waiting in a
paused or partitioned member and be committed later: a probe paused the etcd leader and saw
such a duplicate commit 5 s late, after newer acknowledged writes, putting tags back to older
values on every replica (a lost update). So every transaction also creates a key of its own
(`TOKENS` + random) and commits only while that key does not exist: the second copy to
arrive, retry or late duplicate, changes nothing; a retry that finds the token knows an
earlier copy committed (at the token's revision) and reports success.

The tokens live on a lease granted every ROTATE_EVERY seconds with TOKEN_TTL: each is gone
within TOKEN_TTL, so a duplicate later than that is not caught (none was seen past 6 s).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aetcd import rpc

from moorage.meta.ops import MUST_EXIST, Guard

#: Outside `/moorage/`: not registry data, never backed up.
TOKENS = b"/moorage-write-tokens/"
TOKEN_TTL = 120
ROTATE_EVERY = 60.0


def token_key() -> bytes:
    return TOKENS + secrets.token_hex(12).encode()


class TokenLease:
    """The lease new tokens go on: a fresh one every ROTATE_EVERY seconds, never renewed."""

    def __init__(self, call: Callable[[str, Any, float], Awaitable[Any]]) -> None:
        self._call = call  # the store's `_through_election`
        self._lease = 0
        self._granted = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> int:
        if self._lease and time.monotonic() - self._granted < ROTATE_EVERY:
            return self._lease
        async with self._lock:
            if not self._lease or time.monotonic() - self._granted >= ROTATE_EVERY:
                request = rpc.LeaseGrantRequest(TTL=TOKEN_TTL)
                self._lease = int((await self._call("leasestub.LeaseGrant", request, 1.5)).ID)
                self._granted = time.monotonic()
            return self._lease

    def lost(self) -> None:
        """The lease is gone (etcd said so): the next write takes a new one."""
        self._lease = 0


def compares(guards: Sequence[Guard]) -> list[rpc.Compare]:
    """`guards` as etcd compares: the key exists (MUST_EXIST), or its mod revision is that
    (0: it does not exist)."""
    return [
        rpc.Compare(key=key, result=rpc.Compare.GREATER, target=rpc.Compare.VERSION, version=0)
        if rev == MUST_EXIST
        else rpc.Compare(
            key=key, result=rpc.Compare.EQUAL, target=rpc.Compare.MOD, mod_revision=rev
        )
        for key, rev in guards
    ]
