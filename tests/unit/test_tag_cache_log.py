"""The tag cache's warning while it is off (meta/tag_cache.py): a worker that starts during
quorum loss retries every second; its log says why once, then once a minute."""

from __future__ import annotations

import logging
from typing import Any, cast

import pytest

from moorage.meta import tag_cache
from moorage.meta.tag_cache import TagCache


def test_the_same_reason_is_logged_once_a_minute(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr("moorage.logs.time.monotonic", lambda: now[0])
    cache = TagCache(cast(Any, None), "r1-1")
    caplog.set_level(logging.WARNING, logger=tag_cache.__name__)
    for _ in range(30):  # thirty retries, a second apart
        cache._warn("tag cache off: no leader; retrying")
        now[0] += 1.0
    assert len(caplog.records) == 1
    cache._warn("tag cache off: connection refused; retrying")  # another reason: at once
    assert len(caplog.records) == 2
    now[0] += tag_cache.WARN_EVERY
    cache._warn("tag cache off: connection refused; retrying")  # the minute is over
    assert len(caplog.records) == 3
    assert [r.getMessage() for r in caplog.records][1:] == [
        "tag cache off: connection refused; retrying"
    ] * 2
