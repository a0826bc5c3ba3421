"""`cluster.facts.gather`: a member whose replica answered its ping but that missed the status
call (a slow answer on a loaded host) is asked once more; one whose replica is down is not."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from moorage.cluster import facts
from moorage.meta.etcd_members import Member, MemberStatus
from moorage.meta.records import ReplicaRecord


class Store:
    tls = None

    def __init__(self, names: list[str]) -> None:
        self.names = names

    async def members(self, linearizable: bool = True) -> list[Member]:
        return [
            Member(i + 1, n, (f"https://{n}:2380",), (f"https://{n}:2379",), False)
            for i, n in enumerate(self.names)
        ]

    async def replicas(self, local: bool = False) -> list[ReplicaRecord]:
        return [
            ReplicaRecord(
                n, f"http://{n}:5000", f"https://{n}:2380", f"https://{n}:2379", "", "", 0
            )
            for n in self.names
        ]

    async def heartbeats(self, local: bool = False) -> list[Any]:
        return []


def status(member_id: int) -> MemberStatus:
    return MemberStatus(member_id, 1, 10, 2, False, 100, ())


def test_a_missed_status_of_a_replica_that_answers_is_asked_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: dict[str, int] = {}

    async def fake_status(url: str, tls: Any) -> MemberStatus | str:
        name = url.split("//")[1].split(":")[0]
        calls[name] = calls.get(name, 0) + 1
        if name == "slow" and calls[name] == 1:
            return "context deadline exceeded"
        if name == "down":
            return "connection refused"
        return status({"up": 1, "slow": 2, "down": 3}[name])

    async def fake_ping(client: Any, url: str) -> tuple[int, str | None]:
        return (0, "connection refused") if "down" in url else (200, None)

    monkeypatch.setattr(facts, "_status", fake_status)
    monkeypatch.setattr(facts, "_ping", fake_ping)
    got = asyncio.run(facts.gather(cast(Any, Store(["up", "slow", "down"])), "c", 1))
    assert isinstance(got.statuses[2], MemberStatus)  # asked again: it answered
    assert got.statuses[3] == "connection refused"  # its replica is down: asked once
    assert calls == {"up": 1, "slow": 2, "down": 1}
    assert got.pings == {"up": (200, None), "slow": (200, None), "down": (0, "connection refused")}
