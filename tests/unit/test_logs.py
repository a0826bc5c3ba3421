"""Log line formats, request ids and the request id in OCI error envelopes (moorage.logs)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys

import pytest

from moorage import logs
from moorage.api.errors import envelope

NEW_ID = re.compile(r"[0-9a-f]{24}")


@pytest.mark.parametrize(
    "sent",
    [b"a", b"push-42.A_b", b"x" * 64, b"0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"],
)
def test_a_short_safe_client_request_id_is_kept(sent: bytes) -> None:
    assert logs.request_id(sent) == sent.decode()


@pytest.mark.parametrize(
    "sent",
    [None, b"", b"x" * 65, b"two words", b"a/b", b"a\nb", b'"}', "é".encode(), b"%41", b"a;b"],
)
def test_any_other_request_id_is_replaced_by_a_new_one(sent: bytes | None) -> None:
    got = logs.request_id(sent)
    assert NEW_ID.fullmatch(got)
    assert got != logs.request_id(sent)


def test_a_forked_api_worker_makes_ids_of_its_own() -> None:
    """The API workers fork from the replica process: their ids must not collide."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first new id, then gone
        os.write(write, logs.request_id(None).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    mine = logs.request_id(None)
    assert NEW_ID.fullmatch(child)
    assert child[:12] != mine[:12]


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("moorage.test", logging.WARNING, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_a_json_line_is_one_object_with_time_level_replica_and_message() -> None:
    line = logs.JsonFormatter("a1b2c3d4e5f6").format(record("two\nlines %s", "\u2028here"))
    assert "\n" not in line
    assert "\u2028" not in line
    doc = json.loads(line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", doc["time"])
    assert doc["level"] == "warning"
    assert doc["replica"] == "a1b2c3d4e5f6"
    assert doc["logger"] == "moorage.test"
    assert doc["message"] == "two\nlines \u2028here"
    assert "request_id" not in doc


def test_a_json_line_carries_the_request_id_extra_fields_and_the_traceback() -> None:
    token = logs.begin_request("req-1")
    try:
        try:
            raise ValueError("broken")
        except ValueError:
            rec = record("failed", status=500, route="/v2/{name}/blobs/{digest}")
            rec.exc_info = sys.exc_info()
        doc = json.loads(logs.JsonFormatter(None).format(rec))
    finally:
        logs.end_request(token)
    assert doc["request_id"] == "req-1"
    assert doc["status"] == 500
    assert doc["route"] == "/v2/{name}/blobs/{digest}"
    assert doc["replica"] is None
    assert "ValueError: broken" in doc["error"]


def test_a_text_line_is_as_before_plus_the_request_id() -> None:
    fmt = logs.TextFormatter()
    rec = record("hello")
    plain = fmt.format(rec)
    assert plain.endswith(" WARNING moorage.test: hello")
    token = logs.begin_request("req-2")
    try:
        assert fmt.format(rec) == f"{plain} request_id=req-2"
    finally:
        logs.end_request(token)


def test_an_envelope_carries_the_request_id_and_keeps_its_detail() -> None:
    assert json.loads(envelope("X", "m"))["errors"][0]["detail"] is None  # outside a request
    token = logs.begin_request("req-3")
    try:
        details = [
            json.loads(envelope("X", "m", detail))["errors"][0]["detail"]
            for detail in (None, {"missing": ["sha256:ab"]}, ["odd"])
        ]
    finally:
        logs.end_request(token)
    assert details == [
        {"request_id": "req-3"},
        {"missing": ["sha256:ab"], "request_id": "req-3"},
        {"value": ["odd"], "request_id": "req-3"},
    ]


def test_a_task_started_during_a_request_stops_naming_it_when_it_ends() -> None:
    async def main() -> list[str | None]:
        seen: list[str | None] = []
        ended = asyncio.Event()

        async def background() -> None:  # a watch or batcher a request happened to start
            seen.append(logs.current_request_id())
            await ended.wait()
            seen.append(logs.current_request_id())

        token = logs.begin_request("req-4")
        task = asyncio.create_task(background())
        await asyncio.sleep(0)
        logs.end_request(token)
        ended.set()
        await task
        return seen

    assert asyncio.run(main()) == ["req-4", None]
    assert logs.current_request_id() is None


def test_an_unknown_log_format_is_refused() -> None:
    with pytest.raises(ValueError, match="expected one of text, json"):
        logs.configure("xml")


def test_a_repeating_failure_is_logged_once_a_minute_and_again_after_it_clears(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [500.0]
    monkeypatch.setattr("moorage.logs.time.monotonic", lambda: now[0])
    logger = logging.getLogger("moorage.test.repeating")
    warn = logs.Repeating(logger, every=60.0)
    caplog.set_level(logging.INFO, logger=logger.name)
    logged = []
    for _ in range(59):  # a watch retrying every second with the same reason
        logged.append(warn("watch: no leader; retrying"))
        now[0] += 1.0
    assert logged == [True] + [False] * 58
    assert warn("watch: connection refused; retrying")  # another reason: at once
    assert not warn("watch: connection refused; retrying")
    now[0] += 60.0
    assert warn("watch: connection refused; retrying")  # a minute on: again
    warn.clear()  # it worked again; the next failure shows at once
    assert warn("watch: connection refused; retrying")
    assert [r.levelno for r in caplog.records] == [logging.WARNING] * 4
    assert [r.getMessage() for r in caplog.records] == [
        "watch: no leader; retrying",
        *["watch: connection refused; retrying"] * 3,
    ]
