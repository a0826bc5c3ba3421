"""`newest_events`: the newest events of one action, newest first, read backwards from the
end of a time range in bounded windows under a budget of keys examined (what the admin pages
show: scale probe D1, D2). Over the in-memory store, events written straight as keys."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from moorage.audit import query
from moorage.audit.log import PREFIX, Keys
from moorage.audit.query import BadQuery, Query, newest_events, read_events
from moorage.meta.base import KV, Put
from moorage.meta.memory import MemoryMetaStore

NOW = 1_800_000_000.0


class Counting(MemoryMetaStore):
    """Records the limit of every range read."""

    def __init__(self) -> None:
        super().__init__()
        self.limits: list[int] = []

    async def _range(
        self, start: bytes, end: bytes, limit: int, keys_only: bool = False, revision: int = 0
    ) -> tuple[list[KV], bool]:
        self.limits.append(limit)
        return await super()._range(start, end, limit, keys_only, revision)


def fill(store: MemoryMetaStore, events: list[tuple[float, str]]) -> None:
    """Events (time, action), keyed as EtcdAuditLog keys them; the target names the index."""
    keys = Keys("r1.1")
    puts = []
    for i, (at, action) in enumerate(events):
        doc = {"action": action, "actor": "a", "target": f"t{i}", "at": at, "detail": {}}
        puts.append(Put(keys.next(at), json.dumps(doc).encode()))

    async def write() -> None:
        for i in range(0, len(puts), 100):
            await store._txn([], puts[i : i + 100])

    asyncio.run(write())


def walk(
    store: MemoryMetaStore, action: str, since: float | None, limit: int, budget: int
) -> tuple[list[str], int, int]:
    """Every match, page after page (following `older`): targets, calls, stopped calls."""
    out: list[str] = []
    before = None
    calls = stopped = 0
    while True:
        found = asyncio.run(newest_events(store, action, since, limit, before, budget, NOW))
        calls += 1
        stopped += found.stopped
        assert found.scanned <= budget
        assert len(found.events) <= limit
        out.extend(str(e["target"]) for e in found.events)
        if found.older is None:
            return out, calls, stopped
        before = found.older
        assert calls < 10_000


def expected(events: list[tuple[float, str]], action: str, since: float | None) -> list[str]:
    order = sorted(range(len(events)), key=lambda i: events[i][0], reverse=True)
    return [
        f"t{i}"
        for i in order
        if events[i][1] == action and (since is None or events[i][0] >= since)
    ]


def test_the_newest_matches_come_first_even_behind_more_than_a_scan_of_others() -> None:
    """D1/D2: 12,000 pushes over the week, then 30 deletions: `read_events` (oldest first,
    10,000 keys per call) answers none; `newest_events` the newest 20, in one call."""
    store = MemoryMetaStore()
    pushes = [(NOW - 6 * 86400 + i * 40.0, "push") for i in range(12_000)]
    deletes = [(NOW - 300 + i, "retention.delete") for i in range(30)]
    fill(store, pushes + deletes)
    old, _ = asyncio.run(
        read_events(store, Query(since=NOW - 7 * 86400, limit=20, action="retention.delete"))
    )
    assert old == []  # the defect the admin pages had
    found = asyncio.run(newest_events(store, "retention.delete", NOW - 7 * 86400, 20, now=NOW))
    assert [e["target"] for e in found.events] == [f"t{12_000 + i}" for i in range(29, 9, -1)]
    assert not found.stopped
    assert found.older == found.events[-1]["id"]
    rest = asyncio.run(
        newest_events(store, "retention.delete", NOW - 7 * 86400, 20, found.older, now=NOW)
    )
    assert [e["target"] for e in rest.events] == [f"t{12_000 + i}" for i in range(9, -1, -1)]
    assert rest.stopped  # the 12,000 pushes behind them are more than one budget
    assert rest.scanned <= query.MAX_SCAN


def test_a_spent_budget_says_so_and_the_walk_goes_on_without_gap_or_duplicate() -> None:
    store = MemoryMetaStore()
    events = [(NOW - 3000 + i, "backup.written" if i % 97 == 0 else "push") for i in range(3000)]
    fill(store, events)
    first = asyncio.run(newest_events(store, "backup.written", None, 50, budget=200, now=NOW))
    assert first.stopped
    assert first.scanned <= 200
    assert first.older is not None
    assert len(first.events) < 50
    got, calls, stopped = walk(store, "backup.written", None, 50, budget=200)
    assert got == expected(events, "backup.written", None)
    assert calls >= 3000 // 200
    assert stopped >= 1


@pytest.mark.parametrize("seed", range(12))
def test_random_logs_agree_with_a_full_read(seed: int) -> None:
    """Bursts (many events per millisecond), long gaps, events after `now` (a replica whose
    clock runs ahead), a `since` inside the log: every page is exactly the next matches."""
    rng = random.Random(seed)
    events: list[tuple[float, str]] = []
    at = NOW - rng.choice([60.0, 3600.0, 30 * 86400.0])
    while len(events) < 2500:
        burst = rng.choice([1, 5, 300, 1500])
        step = rng.choice([1e-6, 1e-4, 0.01, 1.0])
        for _ in range(burst):
            events.append((at, rng.choice(["push", "push", "push", "delete", "backup.written"])))
            at += step * rng.random() + 1e-6
        at += rng.choice([0.0, 10.0, 86400.0])
    events = [(t - (at - NOW) + rng.choice([0.0, 5.0]), a) for t, a in events]
    store = Counting()
    fill(store, events)
    since = rng.choice([None, events[len(events) // 3][0]])
    limit = rng.choice([1, 7, 50])
    budget = rng.choice([1500, 10_000])
    for action in ("delete", "backup.written", "nothing.such"):
        got, _, _ = walk(store, action, since, limit, budget)
        assert got == expected(events, action, since)
    assert store.limits
    assert max(store.limits) <= query.WINDOW + 1  # every read bounded


def test_reads_per_call_are_bounded_in_a_sparse_log() -> None:
    """Nine events over ten years: windows widen; one call reads a bounded number of times."""
    store = Counting()
    events = [(NOW - i * 400 * 86400.0, "backup.written") for i in range(9)]
    fill(store, events)
    found = asyncio.run(newest_events(store, "backup.written", None, 50, now=NOW))
    assert [e["target"] for e in found.events] == [f"t{i}" for i in range(9)]
    assert found.older is None
    assert not found.stopped
    assert len(store.limits) <= query.MAX_READS


def test_since_and_a_bad_cursor() -> None:
    store = MemoryMetaStore()
    events = [(NOW - 100 + i, "backup.written") for i in range(100)]
    fill(store, events)
    found = asyncio.run(newest_events(store, "backup.written", NOW - 10.5, 50, now=NOW))
    assert [e["target"] for e in found.events] == [f"t{i}" for i in range(99, 89, -1)]
    assert found.older is None
    for bad in ("", "!!", "A" * 500, query.encode_cursor(PREFIX + b"../../etc")):
        if bad:
            with pytest.raises(BadQuery):
                asyncio.run(newest_events(store, "backup.written", None, 5, bad, now=NOW))
