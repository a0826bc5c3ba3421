"""When the store reads its etcd member's own copy (meta/etcd.py `_read`, meta/etcd_leader.py).

A quorum read that failed opened a 3 s window of local reads. A member paused (SIGSTOP) while
the cluster went on had a leader again as soon as it ran, and was still catching up: a probe
saw 262 reads on it serve tags re-pointed or deleted elsewhere. Now the copy is read only
while the member knows no leader."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aetcd import rpc

from moorage.errors import StoreUnavailable
from moorage.meta import etcd
from moorage.meta.etcd_leader import LeaderCheck


class _Member:
    """Answers Range (quorum reads fail `failures` times) and Status (`leader`)."""

    def __init__(self, leader: int, failures: int) -> None:
        self.leader, self.failures = leader, failures
        self.served: list[str] = []

    async def __call__(self, method: str, request: Any, limit: float | None = None) -> Any:
        if method == "maintenancestub.Status":
            return SimpleNamespace(leader=self.leader)
        if request.serializable:
            self.served.append("local copy")
            return "stale"
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("the metadata store (etcd) is unavailable: deadline")
        self.served.append("quorum")
        return "fresh"


def _store(member: _Member) -> Any:
    store = object.__new__(etcd.EtcdMetaStore)
    store._timeout, store._local_reads_until = 5.0, 0.0
    store._call = member  # type: ignore[method-assign]
    store._leader = LeaderCheck(member)
    return store


def _read(store: Any) -> Any:
    return asyncio.run(store._read(rpc.RangeRequest(key=b"k")))


def test_a_member_with_a_leader_is_read_by_quorum_after_a_failure() -> None:
    member = _Member(leader=7, failures=2)  # paused, then catching up: it knows a leader
    store = _store(member)
    assert _read(store) == "fresh"
    assert member.served == ["quorum"]
    assert _read(store) == "fresh"  # and after: no window of local reads
    assert member.served == ["quorum", "quorum"]


def test_a_member_without_a_leader_serves_its_copy() -> None:
    member = _Member(leader=0, failures=10**6)  # no quorum: pulls go on from the copy
    store = _store(member)
    store._leader._known = False
    assert _read(store) == "stale"
    assert _read(store) == "stale"
    assert member.served == ["local copy", "local copy"]


def test_the_window_ends_when_the_member_knows_a_leader_again() -> None:
    member = _Member(leader=0, failures=1)
    store = _store(member)
    store._leader._known = False
    assert _read(store) == "stale"
    member.leader = 3
    store._leader._checked = -1.0  # its answer is old
    assert _read(store) == "fresh"
    assert member.served == ["local copy", "quorum"]


def test_a_member_that_does_not_answer_its_status_is_not_taken_to_lack_a_leader() -> None:
    """A paused member answers nothing; its copy, read the moment it runs again, lacks what
    the cluster committed meanwhile: no local reads on silence."""

    async def silent(method: str, request: Any, limit: float | None = None) -> Any:
        raise StoreUnavailable("deadline")

    assert asyncio.run(LeaderCheck(silent).known()) is True


def test_an_answer_asked_earlier_never_overrides_a_later_one() -> None:
    """Two checks in flight: the later one answers first (a leader), the earlier one after
    (no leader, from before): the later answer stands."""

    async def run() -> bool:
        release = asyncio.Event()
        answers = iter([0, 5])  # the first check asked: no leader; the second: a leader

        async def status(method: str, request: Any, limit: float | None = None) -> Any:
            leader = next(answers)
            if leader == 0:
                await release.wait()  # the earlier answer comes late
            return SimpleNamespace(leader=leader)

        check = LeaderCheck(status)
        first = asyncio.create_task(check.known())
        await asyncio.sleep(0)
        check._checked = -1.0  # the next call asks again
        assert await check.known() is True
        release.set()
        await first
        return await check.known()

    assert asyncio.run(run()) is True
