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

from moorage.errors import StoreUnavailable
from moorage.meta import keys
from moorage.meta.ops import MUST_EXIST, Delete, Guard, Op, Put

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


def txn_request(
    guards: Sequence[Guard], ops: Sequence[Op], reads: Sequence[bytes], token: bytes, lease: int
) -> rpc.TxnRequest:
    """`ops` if every guard holds and `token` does not exist (it is created, on `lease`);
    else the values of `reads`, then of `token` (whether an earlier copy committed)."""
    success = []
    if any(keys.is_registry_data(op.key) for op in ops):
        success.append(rpc.RequestOp(request_put=rpc.PutRequest(key=keys.LAST_CHANGE)))
    for op in ops:
        if isinstance(op, Put):
            success.append(rpc.RequestOp(request_put=rpc.PutRequest(key=op.key, value=op.value)))
        elif isinstance(op, Delete):
            success.append(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=op.key)))
    success.append(rpc.RequestOp(request_put=rpc.PutRequest(key=token, lease=lease)))
    failure = [rpc.RequestOp(request_range=rpc.RangeRequest(key=k)) for k in (*reads, token)]
    return rpc.TxnRequest(compare=compares([*guards, (token, 0)]), success=success, failure=failure)


#: The value a fenced token holds (a write's own token holds none).
FENCED = b"fenced"


async def fence(call: Callable[[str, Any, float], Awaitable[Any]], token: bytes, lease: int) -> int:
    """After a write gave up (no answer within its budget): make sure it never commits later,
    or learn that it did. A copy of it can still sit in a member (a proposal queued for a
    leader that was paused) and commit after the client was told 503, over writes
    acknowledged since: a probe saw a tag go back to the value of such a write right after
    the next write of the same tag was acknowledged. So its token is created here: once that
    commits, no copy of the write can (each commits only while the token is absent). Returns
    the revision the write committed at when a copy got there first (then it succeeded), 0
    when fenced, or when the store is still unavailable (then the outcome stays unknown, as
    a 503 says)."""
    request = rpc.TxnRequest(
        compare=compares([(token, 0)]),
        success=[rpc.RequestOp(request_put=rpc.PutRequest(key=token, value=FENCED, lease=lease))],
        failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=token))],
    )
    try:
        resp = await call("kvstub.Txn", request, 1.5)
    except StoreUnavailable:
        return 0
    found = [] if resp.succeeded else resp.responses[0].response_range.kvs
    return int(found[0].mod_revision) if found and found[0].value != FENCED else 0
