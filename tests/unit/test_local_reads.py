"""When the store reads its etcd member's own copy (meta/etcd.py `_read`, meta/etcd_leader.py).

A quorum read that failed opened a 3 s window of local reads. A member paused (SIGSTOP) while
the cluster went on had a leader again as soon as it ran, and was still catching up: a probe
saw 262 reads on it serve tags re-pointed or deleted elsewhere. Now the copy is read only
while the member knows no leader, and only once it has said so for SETTLED_SECONDS: just
after the leader's loss (an election) it may lack what the old leader committed with the
other members (a probe saw 803 such stale reads in one round of pausing the leader)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from aetcd import rpc

from moorage.errors import StoreUnavailable
from moorage.meta import etcd
from moorage.meta.etcd_leader import (
    BEHIND_SECONDS,
    CHECK_EVERY,
    SETTLED_SECONDS,
    STREAK_GAP,
    LeaderCheck,
    Peers,
)


def _status(leader: int, revision: int = 10) -> Any:
    return SimpleNamespace(leader=leader, header=SimpleNamespace(revision=revision))


class _Member:
    """Answers Range (quorum reads fail `failures` times) and Status (`leader`)."""

    def __init__(self, leader: int, failures: int, revision: int = 10) -> None:
        self.leader, self.failures, self.revision = leader, failures, revision
        self.served: list[str] = []

    async def __call__(self, method: str, request: Any, limit: float | None = None) -> Any:
        if method == "maintenancestub.Status":
            return _status(self.leader, self.revision)
        if request.serializable:
            self.served.append("local copy")
            return "stale"
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("the metadata store (etcd) is unavailable: deadline")
        self.served.append("quorum")
        return "fresh"


def _store(member: _Member, peers: Peers | None = None) -> Any:
    store = object.__new__(etcd.EtcdMetaStore)
    store._timeout, store._local_reads_until = 5.0, 0.0
    store._call = member  # type: ignore[method-assign]
    store._leader = LeaderCheck(member, peers)
    return store


class _PeerClient:
    """A member's own channel: Status answers `revision`, or raises (a member down)."""

    def __init__(self, revision: int | None, leader: int = 0) -> None:
        self.revision, self.leader, self.metadata, self.closed = revision, leader, None, False
        self.maintenancestub = SimpleNamespace(Status=self._status)
        self.kvstub = SimpleNamespace(Range=self._range)

    async def _status(self, request: Any, **options: Any) -> Any:  # timeout, metadata
        if self.revision is None:
            raise OSError("connection refused")
        return _status(self.leader, self.revision)

    async def _range(self, request: Any, **options: Any) -> Any:
        if self.revision is None:
            raise OSError("connection refused")
        assert not request.serializable
        return f"quorum read through a peer at {self.revision}"

    async def connect(self) -> None:
        pass

    async def close(self) -> None:
        self.closed = True


def _peers(revisions: dict[str, int | None]) -> Peers:
    return Peers(list(revisions), lambda endpoint: _PeerClient(revisions[endpoint]))


def _leaderless(store: Any, seconds: float, anywhere: bool = True) -> None:
    """The member has said it knows no leader for `seconds`, its last answer just now; and
    (`anywhere`) the other members' answers showed none knowing one for as long."""
    now = time.monotonic()
    check = store._leader
    check._known, check._checked, check._applied = False, now, now
    check._leaderless_since = now - seconds
    if anywhere:
        check._none_since = now - seconds
        check._seen = (now - CHECK_EVERY, [])  # asked again at the next read, no gap


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
    _leaderless(store, SETTLED_SECONDS)
    assert _read(store) == "stale"
    assert _read(store) == "stale"
    assert member.served == ["local copy", "local copy"]


def test_the_window_ends_when_the_member_knows_a_leader_again() -> None:
    member = _Member(leader=0, failures=1)
    store = _store(member)
    _leaderless(store, SETTLED_SECONDS)
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
            return _status(leader)

        check = LeaderCheck(status)
        first = asyncio.create_task(check.known())
        await asyncio.sleep(0)
        check._checked = -1.0  # the next call asks again
        assert await check.known() is True
        release.set()
        await first
        return await check.known()

    assert asyncio.run(run()) is True


def test_a_member_in_an_election_is_read_by_quorum_once_it_has_a_leader() -> None:
    """Just after the leader's loss the member knows no leader but may lack what the old
    leader committed with the others: the read waits for the election (quorum reads), it
    does not take the copy."""
    member = _Member(leader=0, failures=4)  # the election: quorum reads fail meanwhile
    store = _store(member)
    _leaderless(store, 0.5)
    assert _read(store) == "fresh"
    assert member.served == ["quorum"]


def test_a_member_without_a_leader_for_long_enough_serves_its_copy() -> None:
    """No quorum: the read that found the member leaderless waits until it has been so for
    SETTLED_SECONDS, then takes the copy (pulls go on); no 503 meanwhile."""
    member = _Member(leader=0, failures=10**6)
    store = _store(member)
    _leaderless(store, SETTLED_SECONDS - 0.3)
    started = time.monotonic()
    assert _read(store) == "stale"
    assert time.monotonic() - started >= 0.25
    assert member.served == ["local copy"]


def test_leaderless_time_counts_from_the_first_answer_and_ends_with_a_leader() -> None:
    async def run() -> list[float]:
        answers = iter([0, 0, 4, 0])

        async def status(method: str, request: Any, limit: float | None = None) -> Any:
            return _status(next(answers))

        check = LeaderCheck(status)
        found = [await check.leaderless_for()]
        check._checked = -1.0
        await asyncio.sleep(0.05)
        found.append(await check.leaderless_for())  # counted from the first answer
        check._checked = -1.0
        found.append(await check.leaderless_for())  # a leader: over
        check._checked = -1.0
        found.append(await check.leaderless_for())  # no leader again: counted afresh
        return found

    first, later, with_leader, again = asyncio.run(run())
    assert 0 < first < 0.05
    assert later >= 0.05
    assert with_leader == 0.0
    assert 0 < again < 0.05


def test_a_leaderless_member_behind_another_that_answers_waits() -> None:
    """A member resumed after a pause can stay leaderless for seconds while it lags: a member
    that answers with a newer revision means its copy lacks committed writes. Its reads wait
    (quorum reads) until no member has known a leader for BEHIND_SECONDS."""
    member = _Member(leader=0, failures=10**6, revision=10)
    store = _store(member, _peers({"a": 10, "b": 12, "c": None}))
    _leaderless(store, BEHIND_SECONDS - 0.5)
    started = time.monotonic()
    assert _read(store) == "stale"
    assert time.monotonic() - started >= 0.45  # not before
    assert member.served == ["local copy"]


def test_a_leaderless_member_as_new_as_every_member_that_answers_serves_its_copy() -> None:
    member = _Member(leader=0, failures=10**6, revision=12)
    peers = _peers({"a": 12, "b": 11, "c": None})  # c is down
    store = _store(member, peers)
    _leaderless(store, SETTLED_SECONDS)
    assert _read(store) == "stale"
    assert member.served == ["local copy"]
    clients = list(peers._clients.values())
    asyncio.run(peers.close(["d"]))
    assert all(c.closed for c in clients)  # type: ignore[attr-defined]
    assert peers.endpoints == ["d"]


def test_the_members_are_asked_once_however_many_reads_wait_for_the_answer() -> None:
    async def run() -> tuple[list[bool], int]:
        asked = 0

        class Slow(_PeerClient):
            async def _status(self, request: Any, **options: Any) -> Any:
                nonlocal asked
                asked += 1
                await asyncio.sleep(0.05)
                return _status(0, 5)

        check = LeaderCheck(_Member(leader=0, failures=0), Peers(["a"], lambda e: Slow(5)))
        check._revision = 5
        answers = await asyncio.gather(*(check.copy_usable() for _ in range(20)))
        return answers, asked

    answers, asked = asyncio.run(run())
    assert asked == 1
    assert answers[0] is True  # the one that asked; the others the earlier answer (no)
    assert answers[1:] == [False] * 19


def test_a_leaderless_member_whose_peer_knows_a_leader_is_not_read() -> None:
    """The others still have a quorum (a leader): this member is lagging or cut off from
    them, whatever its revision; its reads wait for quorum reads."""
    member = _Member(leader=0, failures=10**6, revision=20)
    peers = Peers(["a", "b"], lambda e: _PeerClient(12, leader=7 if e == "b" else 0))
    store = _store(member, peers)
    store._timeout = 0.2
    _leaderless(store, BEHIND_SECONDS + 5)
    try:
        _read(store)
    except StoreUnavailable:
        pass
    else:
        raise AssertionError("read the copy while another member knows a leader")
    assert "local copy" not in member.served


def test_a_member_behind_another_is_read_once_no_member_has_had_a_leader_for_long() -> None:
    """Quorum lost for good, two survivors, one behind the other: each serves its copy once
    no member has known a leader for BEHIND_SECONDS (pulls go on; emergency repair picks the
    most up-to-date one)."""
    member = _Member(leader=0, failures=10**6, revision=10)
    store = _store(member, _peers({"a": 10, "b": 12}))
    _leaderless(store, BEHIND_SECONDS)
    assert _read(store) == "stale"
    assert member.served == ["local copy"]


def test_a_member_cut_off_longer_than_the_others_election_is_not_read_when_behind() -> None:
    """Cut off from a quorum that went on (its own answers leaderless for long), then that
    quorum loses its leader: the others know none either now, but they hold what it lacks.
    Its own leaderless time does not count: its copy is read once no member has been seen
    knowing a leader for BEHIND_SECONDS (a helper's reading of the rule found the gap)."""

    async def run() -> list[bool]:
        member = _Member(leader=0, failures=0, revision=10)
        check = LeaderCheck(member, _peers({"a": 10, "b": 12}))
        check._revision = 10
        # leaderless itself for a minute (cut off): not asked, it does not count
        check._known, check._leaderless_since = False, time.monotonic() - BEHIND_SECONDS - 60
        found = [await check.copy_usable()]  # the others' election began
        assert check._none_since is not None
        check._none_since -= BEHIND_SECONDS - 1
        check._seen = (time.monotonic() - CHECK_EVERY, check._seen[1])
        found.append(await check.copy_usable())  # 7 s: still waits
        check._none_since -= 1
        check._seen = (time.monotonic() - CHECK_EVERY, check._seen[1])
        found.append(await check.copy_usable())  # 8 s without a leader
        return found

    assert asyncio.run(run()) == [False, False, True]


def test_a_leader_seen_or_a_gap_between_answers_starts_the_count_again() -> None:
    async def run() -> list[float | None]:
        leader = {"b": 0}
        peers = Peers(["a", "b"], lambda e: _PeerClient(12, leader=leader.get(e, 0)))
        check = LeaderCheck(_Member(leader=0, failures=0, revision=10), peers)
        await check.copy_usable()
        first = check._none_since
        check._seen = (time.monotonic() - CHECK_EVERY, check._seen[1])
        await check.copy_usable()
        kept = check._none_since  # answers close together: one stretch
        leader["b"] = 7  # a leader again; new channels so that the peer answers anew
        await peers.close()
        check._seen = (time.monotonic() - CHECK_EVERY, check._seen[1])
        await check.copy_usable()
        reset = check._none_since
        leader["b"] = 0
        await peers.close()
        check._seen = (time.monotonic() - STREAK_GAP - 1, check._seen[1])  # unseen meanwhile
        await check.copy_usable()
        after_gap = check._none_since
        return [first, kept, reset, after_gap]

    first, kept, reset, after_gap = asyncio.run(run())
    assert first is not None
    assert kept == first
    assert reset is None
    assert after_gap is not None
    assert after_gap > first


def test_a_status_call_cut_short_by_its_channel_closing_is_no_answer() -> None:
    """grpc cancels the calls in flight on a channel being closed (the store reopening with
    renewed certificates or new members): that member did not answer; the read goes on (a
    full run saw this CancelledError reach a manifest GET as a 500)."""

    class Closing(_PeerClient):
        async def _status(self, request: Any, **options: Any) -> Any:
            raise asyncio.CancelledError()

    async def run() -> list[tuple[int, bool]]:
        peers = Peers(["a", "b"], lambda e: Closing(3) if e == "a" else _PeerClient(4))
        return await peers.statuses()

    assert asyncio.run(run()) == [(4, False)]


def test_a_reader_cancelled_while_the_members_are_asked_is_cancelled() -> None:
    async def run() -> bool:
        class Hung(_PeerClient):
            async def _status(self, request: Any, **options: Any) -> Any:
                await asyncio.sleep(60)

        peers = Peers(["a"], lambda e: Hung(3))
        task = asyncio.ensure_future(peers.statuses())
        await asyncio.sleep(0.01)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return True
        return False

    assert asyncio.run(run()) is True


def test_a_store_call_cut_short_by_its_channel_closing_is_a_store_failure() -> None:
    """The same on the store's own channel (a retired one, closed at the reopen after next):
    StoreUnavailable, which reads retry and the API answers as 503, never a bare cancel."""

    async def closed(request: Any, **options: Any) -> Any:
        raise asyncio.CancelledError()

    connected = asyncio.Event()
    connected.set()
    store = object.__new__(etcd.EtcdMetaStore)
    store._timeout = 1.0
    store._client = SimpleNamespace(  # type: ignore[assignment]
        _connected=connected, metadata=None, kvstub=SimpleNamespace(Range=closed)
    )

    async def run() -> str:
        try:
            await store._call("kvstub.Range", rpc.RangeRequest(key=b"k"))
        except StoreUnavailable as exc:
            return str(exc)
        return "answered"

    assert "channel was closed" in asyncio.run(run())


def test_a_member_with_a_leader_whose_reads_stall_is_read_through_the_others() -> None:
    """Resumed after a pause, a member follows the new leader at once but makes quorum reads
    wait until it has applied the leader's commits (a probe: 1-4.6 s of timeouts): the read
    goes through another member meanwhile (linearizable there too), never from a copy."""
    member = _Member(leader=7, failures=10**6)
    peers = Peers(["own", "down", "up"], lambda e: _PeerClient(None if e == "down" else 12))
    store = _store(member, peers)
    assert _read(store) == "quorum read through a peer at 12"
    assert member.served == []  # its own quorum read failed; no copy was read


def test_a_member_without_a_leader_is_not_read_through_the_others() -> None:
    """Without a leader (an election, or no quorum) the others are not asked for reads: the
    local-read rules (above) decide, as before."""
    member = _Member(leader=0, failures=1)
    peers = Peers(["own", "up"], lambda e: _PeerClient(12))
    store = _store(member, peers)
    assert _read(store) == "fresh"
    assert member.served == ["quorum"]


def test_after_a_failed_read_the_next_ones_go_straight_through_the_others() -> None:
    """Each try of the member's own read waits out its deadline (1 s): for ELSEWHERE_SECONDS
    after one failed, reads go to the other members first; then the member is tried again."""
    member = _Member(leader=7, failures=1)
    peers = Peers(["own", "up"], lambda e: _PeerClient(12))
    store = _store(member, peers)
    assert _read(store) == "quorum read through a peer at 12"  # its own failed first
    assert _read(store) == "quorum read through a peer at 12"  # not asked this time
    assert member.failures == 0
    assert member.served == []  # the second was not asked of the member
    store._leader._elsewhere_until = time.monotonic() - 0.01  # the window is over
    assert _read(store) == "fresh"  # its own read, which works again
    assert member.served == ["quorum"]
