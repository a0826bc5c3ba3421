"""`TagCache.settle` waits for every member to apply the newest delete or re-point of the
tags written, whoever made it.

The case a probe found: t names X; replica B re-points t to Y and waits for a lagging
replica C; meanwhile A pushes t -> Y (the digest t names by then). A's own change is no
re-point, and A answered at once: C served X after A's 201 (2.7 s with a stalled watch)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest

from moorage.meta import keys
from moorage.meta.base import LAST_REVISION
from moorage.meta.tag_cache import TagCache

REPO = "demo/app"


def _cache(members: list[list[tuple[bytes, int, int]]]) -> tuple[TagCache, list[int], list[int]]:
    """A live cache whose member reads answer `members` in turn (the last one again)."""
    cache = TagCache(cast(Any, None), "a-1")
    cache._ensure_running = lambda: None  # type: ignore[method-assign]
    cache._live, cache.progress = True, 20
    reads: list[int] = []
    revoked: list[int] = []

    async def read() -> list[tuple[bytes, int, int]]:
        reads.append(1)
        return members[min(len(reads), len(members)) - 1]

    async def revoke(lease: int) -> None:
        revoked.append(lease)

    cache._members = read  # type: ignore[method-assign]
    cache._revoke = revoke  # type: ignore[method-assign]
    return cache, reads, revoked


def test_a_push_that_follows_a_pending_re_point_waits_for_it() -> None:
    own, lagging = keys.tag_cache_member("a-1"), keys.tag_cache_member("c-1")
    behind, caught_up = [(own, 1, 20), (lagging, 2, 12)], [(own, 1, 20), (lagging, 2, 16)]
    cache, reads, revoked = _cache([behind, behind, caught_up])
    cache._recent[keys.tag(REPO, "t")] = 15  # B's re-point, applied here, not yet on C

    async def run() -> None:
        LAST_REVISION.set(20)  # A's push: t -> the digest B's re-point set
        await cache.settle(REPO, ["t"])

    asyncio.run(run())
    assert len(reads) == 3, "answered before C applied the re-point"
    assert revoked == []
    # Now known applied everywhere: the next push of t answers without reading members.
    asyncio.run(run())
    assert len(reads) == 3


def test_a_new_tag_waits_for_nobody() -> None:
    cache, reads, _ = _cache([[(keys.tag_cache_member("c-1"), 2, 0)]])

    async def run() -> None:
        LAST_REVISION.set(20)
        await cache.settle(REPO, ["fresh"])

    asyncio.run(run())
    assert reads == []


def test_a_tag_older_than_the_recent_ones_waits_for_the_floor() -> None:
    """Past the recent changes kept, a tag's last re-point is unknown but not newer than the
    floor: every member must have reached that."""
    own, other = keys.tag_cache_member("a-1"), keys.tag_cache_member("c-1")
    cache, reads, _ = _cache([[(own, 1, 20), (other, 2, 8)], [(own, 1, 20), (other, 2, 18)]])
    cache._floor = 17

    async def run() -> None:
        LAST_REVISION.set(20)
        await cache.settle(REPO, ["old"])

    asyncio.run(run())
    assert len(reads) == 2
    assert cache._all_reached >= 18


def test_a_keep_alive_is_trusted_only_while_a_quorum_read_shows_the_member(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """etcd 3.4 answers keep-alives on a deposed leader (resumed after a pause, before it
    hears the new term): a writer had revoked the lease in the new term, yet the cache on
    that member kept serving for 0.1 s. Its validity is extended only when a quorum read
    shows its member key still on its lease."""
    from moorage.errors import StoreUnavailable
    from moorage.meta import tag_cache

    async def alive(lease: int) -> bool:
        return True  # what the deposed leader answers

    async def revoked(store: Any, key: bytes) -> int | None:
        return None  # the key went with the lease in the new term

    cache = TagCache(cast(Any, SimpleNamespace(keep_alive=alive)), "a-1")
    monkeypatch.setattr(tag_cache, "member_lease", revoked)
    with pytest.raises(StoreUnavailable, match="revoked"):
        asyncio.run(cache._keep_alive(7))
    assert cache._valid_until == 0.0

    async def held(store: Any, key: bytes) -> int | None:
        return 7

    monkeypatch.setattr(tag_cache, "member_lease", held)

    async def one_round() -> None:
        task = asyncio.create_task(cache._keep_alive(7))
        await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(one_round())
    assert cache._valid_until > 0.0
