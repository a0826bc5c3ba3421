"""Which watch responses move a tag cache's progress (meta.tag_watch.progress_of).

etcd 3.4 answers an explicit progress request (watch id -1) on a channel of its own with
its current revision, which can overtake events still queued for the watch: a cache that
took it vouched for a re-point it had not applied, and a tag was served stale after its 201
(seen once by a probe under load). Only the watch's own periodic notifications, which etcd
queues behind the watch's events, count."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aetcd import rpc

from moorage.errors import StoreUnavailable
from moorage.meta import tag_watch
from moorage.meta.tag_watch import TagEvent, progress_of


def _response(watch_id: int, revision: int) -> rpc.WatchResponse:
    return rpc.WatchResponse(header=rpc.ResponseHeader(revision=revision), watch_id=watch_id)


def test_events_vouch_for_their_newest_revision_only() -> None:
    events = [TagEvent(b"k", 7, b"v", None), TagEvent(b"j", 9, None, b"v")]
    assert progress_of(_response(0, 50), events, 0) == 9


def test_the_watchs_own_notification_vouches_for_its_header() -> None:
    assert progress_of(_response(0, 50), [], 0) == 50
    assert progress_of(_response(3, 51), [], 3) == 51


def test_an_answer_to_a_progress_request_vouches_for_nothing() -> None:
    assert progress_of(_response(-1, 50), [], 0) == 0
    assert progress_of(_response(4, 50), [], 3) == 0  # another watch's
    assert progress_of(_response(0, 50), [], None) == 0  # not open


def test_a_watch_the_member_never_creates_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """A member that never answers the watch's creation (paused, stuck catching up) would
    keep the tag cache off for good: open() gives up after OPEN_SECONDS as a store failure,
    and cancels the stream."""
    cancelled: list[bool] = []

    class Hung:
        async def write(self, request: object) -> None:
            pass

        async def read(self) -> object:
            await asyncio.sleep(3600)
            raise AssertionError("never answered")

        def cancel(self) -> None:
            cancelled.append(True)

    class Stub:
        def __init__(self, channel: object) -> None:
            pass

        def Watch(self, metadata: object) -> Hung:  # the gRPC method's name
            return Hung()

    async def connect() -> None:
        pass

    monkeypatch.setattr(rpc, "WatchStub", Stub)
    monkeypatch.setattr(tag_watch, "OPEN_SECONDS", 0.05)
    store = SimpleNamespace(_client=SimpleNamespace(connect=connect, channel=None, metadata=None))
    with pytest.raises(StoreUnavailable, match="not created within"):
        asyncio.run(tag_watch.TagWatch(store).open())  # type: ignore[arg-type]
    assert cancelled == [True]
