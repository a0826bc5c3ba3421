"""The policy job's lock (cluster/jobs.py `policy_round`, scale probe D4): its lease is renewed
while a round runs, so a round longer than the lock's TTL keeps it, and another replica's
worker skips instead of starting the same round; the lock goes when the round ends.

The in-memory store, with leases that end when not renewed within their TTL (as etcd's)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any, cast

import pytest

from moorage.cluster import jobs
from moorage.cluster.replica import Replica
from moorage.errors import MoorageError
from moorage.meta.memory import MemoryMetaStore
from moorage.registry.retention import Listed


class ExpiringStore(MemoryMetaStore):
    def __init__(self) -> None:
        super().__init__()
        self.ttls: dict[int, float] = {}
        self.deadlines: dict[int, float] = {}
        self.renewals = 0

    async def grant_lease(self, ttl: int) -> int:
        await self.expire()
        lease = await super().grant_lease(ttl)
        self.ttls[lease], self.deadlines[lease] = ttl, time.monotonic() + ttl
        return lease

    async def keep_alive(self, lease: int) -> bool:
        await self.expire()
        if not await super().keep_alive(lease):
            return False
        self.renewals += 1
        self.deadlines[lease] = time.monotonic() + self.ttls[lease]
        return True

    async def expire(self) -> None:
        now = time.monotonic()
        for lease, deadline in list(self.deadlines.items()):
            if deadline < now:
                del self.deadlines[lease]
                await self.revoke_lease(lease)


def fake_replica(store: ExpiringStore, replica_id: str) -> Replica:
    async def every() -> list[Any]:
        return []

    policies = SimpleNamespace(every=every)
    registry = SimpleNamespace(meta=store, manifests=SimpleNamespace(policies=policies))
    config = SimpleNamespace(replica_id=replica_id)
    return cast(
        Replica, SimpleNamespace(cluster=store, config=config, registry=registry, audit=None)
    )


class SlowRetention:
    """A retention round that takes `SECONDS` (several times the lock's TTL)."""

    SECONDS = 2.5
    running = 0

    def __init__(self, manifests: object, audit: object) -> None:
        pass

    async def apply(self, actor: str) -> tuple[Listed, Listed]:
        SlowRetention.running += 1
        try:
            await asyncio.sleep(self.SECONDS)
        finally:
            SlowRetention.running -= 1
        return Listed(), Listed()


def test_a_round_longer_than_the_lock_ttl_keeps_its_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "POLICY_LOCK_TTL", 1)  # renewed every 0.25 s
    monkeypatch.setattr(jobs, "Retention", SlowRetention)
    store = ExpiringStore()
    first, second = fake_replica(store, "replica-a"), fake_replica(store, "replica-b")

    async def scenario() -> tuple[str, list[str], str]:
        round_one = asyncio.create_task(jobs.policy_round(first))
        others: list[str] = []
        await asyncio.sleep(0.1)
        while not round_one.done():  # the other replica tries all along, after the TTL too
            await store.expire()
            others.append(await jobs.policy_round(second))
            assert SlowRetention.running <= 1
            await asyncio.sleep(0.2)
        after = await jobs.policy_round(second)  # the lock went with the round
        return await round_one, others, after

    done, others, after = asyncio.run(scenario())
    assert done.startswith("retention deleted 0 tag(s)"), done
    assert len(others) >= 8
    assert all(o.startswith("skipped: replica-a/") for o in others), others
    assert store.renewals >= 6
    assert after.startswith("retention deleted 0 tag(s)"), after


def test_the_lock_is_released_when_the_round_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    class Failing(SlowRetention):
        async def apply(self, actor: str) -> tuple[Listed, Listed]:
            raise MoorageError("etcd went away")

    monkeypatch.setattr(jobs, "Retention", Failing)
    store = ExpiringStore()

    async def scenario() -> str | None:
        with pytest.raises(MoorageError):
            await jobs.policy_round(fake_replica(store, "replica-a"))
        holder = await store.get_lock(jobs.POLICY_LOCK)
        return None if holder is None else holder.owner

    assert asyncio.run(scenario()) is None
