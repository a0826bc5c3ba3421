"""`/metrics` needs no credentials and its usage lines cost a store read per namespace that
has a policy (up to 1,000): a worker reads them at most once per `USAGE_SECONDS`, and
concurrent scrapes share one reading (a probe flooding anonymous scrapes had each pay the
whole read)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from moorage.api import metrics
from moorage.meta import usage
from moorage.meta.usage import Usage


class _Policies:
    def __init__(self) -> None:
        self.pages = 0

    async def page(self, n: int | None, last: str | None) -> tuple[list[Any], bool]:
        self.pages += 1
        await asyncio.sleep(0.01)  # a store read: concurrent scrapes overlap it
        return [
            SimpleNamespace(target="acme", quota=100),
            SimpleNamespace(target="b/c", quota=None),
        ], False


def _request(policies: _Policies) -> Any:
    st = SimpleNamespace(
        registry=SimpleNamespace(manifests=SimpleNamespace(policies=policies), meta=None)
    )
    return SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(moorage=st)))


def test_scrapes_share_one_reading_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []

    async def current(store: Any, namespace: str) -> Usage:
        reads.append(namespace)
        return Usage(namespace, 42, 1)

    monkeypatch.setattr(usage, "current", current)
    clock = [1000.0]
    monkeypatch.setattr(metrics, "_now", lambda: clock[0])
    policies = _Policies()
    request = _request(policies)

    async def scrapes() -> None:
        texts = await asyncio.gather(*(metrics._usage_lines(request) for _ in range(50)))
        assert policies.pages == 1  # fifty scrapes, one reading
        assert reads == ["acme"]
        assert len(set(texts)) == 1
        assert b'moorage_namespace_usage_bytes{namespace="acme"} 42' in texts[0]
        assert b'moorage_namespace_quota_bytes{namespace="acme"} 100' in texts[0]
        clock[0] += metrics.USAGE_SECONDS / 2
        await metrics._usage_lines(request)
        assert policies.pages == 1  # still fresh
        clock[0] += metrics.USAGE_SECONDS
        await metrics._usage_lines(request)
        assert policies.pages == 2  # read again once stale
        assert reads == ["acme", "acme"]

    asyncio.run(scrapes())
