"""The etcd watches across a reopen of the store's channel: a replica reopens its etcd
channel when the members change or its certificate is renewed, which closes the channel its
watches run on. The tag cache (meta/tag_cache.py, `_resume`) watches again on the new
channel at once without going off, and a tag re-pointed meanwhile is still never served
stale once its writer settled; the access policy's cache (auth/policy.py) is back within a
moment, without the one-second retry and warning of an outage. A real etcd member, the
store and the caches in this process."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness.etcd import start_etcd_member

from moorage.auth.policy import AccessView
from moorage.meta.base import LAST_REVISION
from moorage.meta.etcd import EtcdCluster
from moorage.meta.records import ManifestRecord
from moorage.meta.tag_cache import TagCache

REPO = "team/app"


def record(n: int) -> ManifestRecord:
    return ManifestRecord(f"sha256:{n:064x}", "application/vnd.oci.image.manifest.v1+json", n)


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_a_reopen_keeps_the_tag_cache_on_and_exact(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="moorage.meta.tag_cache")

    async def main() -> None:
        store = EtcdCluster([url], tls=tls)
        cache = TagCache(store, "r1-1")
        went_dark: list[float] = []
        watching = True

        async def watch_live() -> None:
            while watching:
                if not cache._live:
                    went_dark.append(time.monotonic())
                await asyncio.sleep(0.002)

        try:
            cache.start()
            await until(lambda: cache.serving)
            assert await store.put_manifest(REPO, record(1), ["t1", "t2"]) == []
            await cache.settle(REPO, ["t1", "t2"])  # as a push does: the watch has it
            assert (await cache.get(REPO, "t1")).digest == record(1).digest  # type: ignore[union-attr]
            assert (await cache.get(REPO, "t2")).digest == record(1).digest  # type: ignore[union-attr]
            hits = cache.hits
            assert (await cache.get(REPO, "t1")).digest == record(1).digest  # type: ignore[union-attr]
            assert cache.hits == hits + 1  # served from the cache
            monitor = asyncio.get_running_loop().create_task(watch_live())

            # The first reopen retires the watch's channel, the second closes it.
            await store.reopen(tls)
            await store.reopen(tls)
            # Re-pointed right away, perhaps before the watch runs again on the new channel.
            assert await store.put_manifest(REPO, record(2), ["t1"]) == []
            await cache.settle(REPO, ["t1"])
            # Acknowledged: the old value is never served again.
            assert (await cache.get(REPO, "t1")).digest == record(2).digest  # type: ignore[union-attr]
            assert (await cache.get(REPO, "t2")).digest == record(1).digest  # type: ignore[union-attr]
            # And the resumed watch goes on delivering changes.
            assert await store.put_manifest(REPO, record(3), ["t2"]) == []
            await cache.settle(REPO, ["t2"])
            assert (await cache.get(REPO, "t2")).digest == record(3).digest  # type: ignore[union-attr]
            watching = False
            await monitor
            assert went_dark == [], "the cache went off during the reopen"
            assert cache.serving
            assert "watch resumed on a new channel" in caplog.text
            assert "tag cache failed" not in caplog.text
        finally:
            await cache.close()
            await store.close()

    with start_etcd_member(tmp_path) as (url, tls):
        asyncio.run(main())


def test_the_tag_watch_learns_progress_without_tag_events(tmp_path: Path) -> None:
    """A change outside the tags is no event for the tag watch: the watch's own periodic
    progress notification (etcd's --experimental-watch-progress-notify-interval, which the
    replica sets) tells the cache it has passed it, as writers waiting for their revision
    need; explicit progress requests are no longer made (etcd 3.4 may answer one ahead of
    the watch's queued events: meta/tag_watch.py)."""

    async def main() -> None:
        store = EtcdCluster([url], tls=tls)
        cache = TagCache(store, "r1-1")
        try:
            cache.start()
            await until(lambda: cache.serving)
            assert await store.put_manifest(REPO, record(7), []) == []  # no tag: no event
            revision = LAST_REVISION.get()
            assert revision > cache.progress
            assert await cache._caught_up(revision)  # within SETTLE_SECONDS
        finally:
            await cache.close()
            await store.close()

    with start_etcd_member(tmp_path) as (url, tls):
        asyncio.run(main())


def test_the_access_watch_is_back_at_once_after_a_reopen(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="moorage.auth")

    async def main() -> None:
        store = EtcdCluster([url], tls=tls)
        view = AccessView(store)
        try:
            view._ensure_watch()
            await until(lambda: view.live)
            await store.reopen(tls)
            await store.reopen(tls)  # closes the channel the watch ran on
            await until(lambda: not view.live, 5.0)
            await until(lambda: view.live, 5.0)
        finally:
            await view.close()
            await store.close()

    with start_etcd_member(tmp_path) as (url, tls):
        asyncio.run(main())
    # Watched again as after a reopen, not retried as after an outage (a warning, 1 s later).
    assert "retrying" not in caplog.text
    assert caplog.text.count("access watch established") == 2
