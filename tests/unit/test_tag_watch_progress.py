"""Which watch responses move a tag cache's progress (meta.tag_watch.progress_of).

etcd 3.4 answers an explicit progress request (watch id -1) on a channel of its own with
its current revision, which can overtake events still queued for the watch: a cache that
took it vouched for a re-point it had not applied, and a tag was served stale after its 201
(seen once by a probe under load). Only the watch's own periodic notifications, which etcd
queues behind the watch's events, count."""

from __future__ import annotations

from aetcd import rpc

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
