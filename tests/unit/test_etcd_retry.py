"""How the etcd store tries a call again through a leader election (meta/etcd_retry.py):
the deadline of each attempt, and which errors are retried, on the store's real retry loop
with its gRPC call replaced by a scripted member."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aetcd import rpc

from moorage.errors import StoreUnavailable
from moorage.meta import etcd
from moorage.meta.base import LAST_REVISION
from moorage.meta.etcd_leader import LeaderCheck
from moorage.meta.etcd_retry import SHORT_ATTEMPTS, attempts
from moorage.meta.etcd_txn import FENCED, TokenLease, fence
from moorage.meta.ops import Put

UNAVAILABLE = "the metadata store (etcd) is unavailable"


class ScriptedMember(etcd.EtcdCluster):
    """Answers each attempt from `script` (an exception to raise, or a reply), recording
    the deadline every attempt was given."""

    def __init__(self, script: list[Any]) -> None:  # no channel: _call is scripted
        self.script = script
        self.deadlines: list[float | None] = []
        self._local_reads_until, self._timeout = 0.0, 5.0
        self._leader = LeaderCheck(self._call)
        self._tokens = TokenLease(self._through_election)
        self._tokens._lease, self._tokens._granted = 1, time.monotonic()  # no grant scripted

    async def _call(self, method: str, request: Any, limit: float | None = None) -> Any:
        self.deadlines.append(limit)
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


def deadline_exceeded() -> StoreUnavailable:
    return StoreUnavailable(f"{UNAVAILABLE}: Deadline Exceeded")


def test_attempts_full_then_short_then_full_again() -> None:
    seq = attempts(1.5)
    assert [next(seq) for _ in range(6)] == [1.5, *SHORT_ATTEMPTS, 1.5, 1.5, 1.5]
    assert all(0 < s < 1.5 for s in SHORT_ATTEMPTS)
    short = attempts(0.3)  # never longer than the first
    assert [next(short) for _ in range(4)] == [0.3, 0.3, 0.3, 0.3]


def test_a_write_sent_to_a_dead_leader_is_retried_in_short_attempts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(asyncio, "sleep", _no_sleep)
    # The first attempt hung on the dead leader, so did the next; then the member knew.
    store = ScriptedMember(
        [deadline_exceeded(), deadline_exceeded(), StoreUnavailable("no leader"), "ok"]
    )
    assert asyncio.run(store._through_election("kvstub.Txn", None, 1.5)) == "ok"
    assert store.deadlines == [1.5, SHORT_ATTEMPTS[0], SHORT_ATTEMPTS[1], 1.5]


def test_a_slow_cluster_gets_full_attempts_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asyncio, "sleep", _no_sleep)
    store = ScriptedMember([deadline_exceeded()] * 5 + ["ok"])
    assert asyncio.run(store._through_election("kvstub.Txn", None, 1.5)) == "ok"
    assert store.deadlines == [1.5, *SHORT_ATTEMPTS, 1.5, 1.5, 1.5]


def test_other_errors_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asyncio, "sleep", _no_sleep)
    store = ScriptedMember([StoreUnavailable(f"{UNAVAILABLE}: permission denied"), "ok"])
    with pytest.raises(StoreUnavailable, match="permission denied"):
        asyncio.run(store._through_election("kvstub.Txn", None, 1.5))
    assert store.deadlines == [1.5]


def test_the_budget_ends_the_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asyncio, "sleep", _no_sleep)
    monkeypatch.setattr(etcd, "WRITE_BUDGET", -1.0)  # already spent: no attempt after the first
    store = ScriptedMember([deadline_exceeded()] * 10)
    with pytest.raises(StoreUnavailable, match="Deadline Exceeded"):
        asyncio.run(store._through_election("kvstub.Txn", None, 1.5))
    assert store.deadlines == [1.5]


def test_a_leased_create_whose_answer_was_lost_is_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first attempt created the key but its answer never came; the retry is refused
    by that very key: same value, same lease, so the create succeeded. A key another holder
    created (another value or lease) is still a refusal."""
    monkeypatch.setattr(asyncio, "sleep", _no_sleep)
    ours = rpc.KeyValue(key=b"k", value=b"mine", lease=7)

    def create(found: rpc.KeyValue) -> tuple[bool, list[float | None]]:
        store = ScriptedMember(
            [deadline_exceeded(), rpc.TxnResponse(succeeded=False), rpc.RangeResponse(kvs=[found])]
        )
        return asyncio.run(store._create_leased(b"k", b"mine", 7)), store.deadlines

    assert create(ours) == (True, [1.5, SHORT_ATTEMPTS[0], 1.0])
    assert create(rpc.KeyValue(key=b"k", value=b"theirs", lease=9))[0] is False
    assert create(rpc.KeyValue(key=b"k", value=b"mine", lease=9))[0] is False
    # Refused at the first attempt: nothing of ours can be there (no read; a second claim
    # of one key with the same value and lease, e.g. a webhook round's, stays refused).
    store = ScriptedMember([rpc.TxnResponse(succeeded=False)])
    assert asyncio.run(store._create_leased(b"k", b"mine", 7)) is False
    assert store.deadlines == [1.5]


async def _no_sleep(_seconds: float) -> None:
    return None


def _token_answer(value: bytes, revision: int) -> rpc.TxnResponse:
    """A refused transaction's answer whose last read found the write's token."""
    found = rpc.RangeResponse(kvs=[rpc.KeyValue(key=b"t", value=value, mod_revision=revision)])
    return rpc.TxnResponse(succeeded=False, responses=[rpc.ResponseOp(response_range=found)])


def test_a_write_that_gave_up_is_fenced_or_found_committed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write with no answer within its budget may still sit in a member and commit later,
    over writes acknowledged since (a probe saw a tag go back to such a write's value). Before
    its 503, its token is created: then no copy of it can commit. If a copy got there first,
    the write succeeded: no 503."""
    monkeypatch.setattr(asyncio, "sleep", _no_sleep)
    monkeypatch.setattr(etcd, "WRITE_BUDGET", -1.0)  # one attempt per call
    put = [Put(b"/moorage/tags/r/t", b"v")]

    # fenced: the 503 stands, and the fence created the very token the write carried
    store = ScriptedMember([deadline_exceeded(), rpc.TxnResponse(succeeded=True)])
    with pytest.raises(StoreUnavailable, match="Deadline Exceeded"):
        asyncio.run(store.txn_else_get([], put, ()))
    # a copy committed before the fence: the write succeeded at its revision
    store = ScriptedMember([deadline_exceeded(), _token_answer(b"", 77)])

    async def committed() -> tuple[tuple[bool, list[Any]], int]:
        return await store.txn_else_get([], put, ()), LAST_REVISION.get()

    assert asyncio.run(committed()) == ((True, []), 77)
    # the fence itself finds no quorum either: unknown, a 503
    store = ScriptedMember([deadline_exceeded(), deadline_exceeded()])
    with pytest.raises(StoreUnavailable):
        asyncio.run(store.txn_else_get([], put, ()))


def test_the_fence_creates_the_writes_own_token(monkeypatch: pytest.MonkeyPatch) -> None:
    requests: list[Any] = []

    async def call(method: str, request: Any, attempt: float) -> Any:
        requests.append(request)
        return rpc.TxnResponse(succeeded=True)

    assert asyncio.run(fence(call, b"/moorage-write-tokens/abc", 5)) == 0
    (request,) = requests
    assert request.compare[0].key == b"/moorage-write-tokens/abc"
    assert request.compare[0].version == 0
    put = request.success[0].request_put
    assert (put.key, put.value, put.lease) == (b"/moorage-write-tokens/abc", FENCED, 5)

    async def fenced_before(method: str, request: Any, attempt: float) -> Any:
        return _token_answer(FENCED, 12)  # an earlier fence: never reported as a commit

    assert asyncio.run(fence(fenced_before, b"t", 5)) == 0
