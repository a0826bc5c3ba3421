"""The heartbeat: one lease kept alive, the record rewritten only when it says something new
or would age (cluster/heartbeat.py), on the in-memory store."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from moorage.cluster import heartbeat
from moorage.cluster.heartbeat import REWRITE_EVERY, Heartbeat
from moorage.meta.memory import MemoryMetaStore
from moorage.meta.records import HeartbeatRecord
from tests.unit.app import replica_config


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now


class CountingStore(MemoryMetaStore):
    """The in-memory store, counting the heartbeat's writes and leases."""

    def __init__(self) -> None:
        super().__init__()
        self.puts: list[tuple[HeartbeatRecord, int]] = []
        self.grants = 0

    async def grant_lease(self, ttl: int) -> int:
        self.grants += 1
        return await super().grant_lease(ttl)

    async def put_heartbeat(self, record: HeartbeatRecord, lease: int) -> None:
        self.puts.append((record, lease))
        await super().put_heartbeat(record, lease)


def test_a_steady_heartbeat_keeps_its_lease_and_rewrites_only_when_due(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(heartbeat, "time", clock)
    store = CountingStore()
    beat = Heartbeat(store, replica_config(tmp_path))

    async def scenario() -> list[Any]:
        seen: list[Any] = []
        await beat.beat(True, None)
        seen.append((store.grants, len(store.puts)))  # the first beat: a lease and a record
        for _ in range(3):  # same health, within REWRITE_EVERY: keep-alives only
            clock.now += REWRITE_EVERY / 4
            await beat.beat(True, None)
        seen.append((store.grants, len(store.puts)))
        clock.now += REWRITE_EVERY / 4  # the record is REWRITE_EVERY old: rewritten
        await beat.beat(True, None)
        seen.append((store.grants, len(store.puts), store.puts[-1][0].at))
        clock.now += 0.1  # the health changed: rewritten at once
        await beat.beat(False, "disk full")
        seen.append((store.grants, len(store.puts)))
        seen.append(await store.heartbeats(local=True))
        leases = {lease for _, lease in store.puts}
        seen.append(len(leases))
        return seen

    first, steady, due, changed, records, leases = asyncio.run(scenario())
    assert first == (1, 1)
    assert steady == (1, 1)
    assert due == (1, 2, 1000.0 + REWRITE_EVERY)
    assert changed == (1, 3)
    assert [(r.healthy, r.error) for r in records] == [(False, "disk full")]
    assert leases == 1


def test_a_heartbeat_whose_lease_ended_takes_a_new_one_and_rewrites(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(heartbeat, "time", clock)
    store = CountingStore()
    config = replica_config(tmp_path)
    beat = Heartbeat(store, config)

    async def scenario() -> list[Any]:
        await beat.beat(True, None)
        first_lease = store.puts[-1][1]
        await store.revoke_lease(first_lease)  # as if it expired: the record went with it
        gone = await store.heartbeats(local=True)
        clock.now += 0.5  # well within REWRITE_EVERY, same health
        await beat.beat(True, None)
        return [gone, store.grants, store.puts[-1][1] != first_lease, await store.heartbeats()]

    gone, grants, new_lease, records = asyncio.run(scenario())
    assert gone == []
    assert grants == 2
    assert new_lease
    assert [r.replica_id for r in records] == [config.replica_id]
