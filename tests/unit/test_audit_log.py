"""The audit log's batching, retries, retention and paging over the in-memory store (the
same primitives as etcd; tests/test_audit.py runs it on a real cluster)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence

import pytest

from moorage.audit import DENIED, AuditEvent
from moorage.audit.log import END, PREFIX, EtcdAuditLog, Retention, trim
from moorage.audit.query import (
    BadQuery,
    Query,
    decode_cursor,
    encode_cursor,
    parse_time,
    read_events,
)
from moorage.errors import StoreUnavailable
from moorage.meta.base import Guard, Op, Put
from moorage.meta.memory import MemoryMetaStore

NO_TRIM = Retention(max_age=10**9, max_events=10**9, interval=3600)


class Flaky(MemoryMetaStore):
    """Refuses the next `failures` transactions; with `lose_answer`, a refused one was
    applied all the same (etcd committed it, the answer was lost)."""

    def __init__(self, failures: int = 0, lose_answer: bool = False) -> None:
        super().__init__()
        self.failures = failures
        self.lose_answer = lose_answer
        self.txns = 0

    async def _txn(self, guards: Sequence[Guard], ops: Sequence[Op]) -> bool:
        self.txns += 1
        if self.failures > 0:
            self.failures -= 1
            if self.lose_answer:
                await super()._txn(guards, ops)
            raise StoreUnavailable("the metadata store (etcd) is unavailable: test")
        return await super()._txn(guards, ops)


async def stored(store: MemoryMetaStore) -> list[dict[str, object]]:
    kvs, _ = await store._range(PREFIX, END, limit=100_000)
    return [json.loads(kv.value) for kv in kvs]


def push(i: int, at: float | None = None) -> AuditEvent:
    if at is None:
        return AuditEvent("push", "alice", f"acme/app:v{i}", client="10.0.0.1")
    return AuditEvent("push", "alice", f"acme/app:v{i}", client="10.0.0.1", at=at)


def test_pushes_are_batched_into_one_transaction() -> None:
    async def scenario() -> tuple[int, int, list[dict[str, object]]]:
        store = Flaky()
        sink = EtcdAuditLog(store, "r1", flush_interval=0.05, retention=NO_TRIM)
        for i in range(50):
            await sink.record(push(i))
        before = store.txns  # record() only buffers
        await asyncio.sleep(0.3)
        await sink.close()
        return before, store.txns, await stored(store)

    before, txns, events = asyncio.run(scenario())
    assert before == 0
    assert txns == 1
    assert [e["target"] for e in events] == [f"acme/app:v{i}" for i in range(50)]


def test_security_events_are_flushed_at_once() -> None:
    async def scenario() -> list[dict[str, object]]:
        store = MemoryMetaStore()
        sink = EtcdAuditLog(store, "r1", flush_interval=60, retention=NO_TRIM)
        await sink.record(AuditEvent("login", "mallory", "user:mallory", DENIED, "10.9.9.9"))
        await asyncio.sleep(0.1)  # far below the flush interval
        found = await stored(store)
        await sink.close()
        return found

    events = asyncio.run(scenario())
    assert [(e["action"], e["actor"], e["outcome"], e["client"]) for e in events] == [
        ("login", "mallory", "denied", "10.9.9.9")
    ]


@pytest.mark.parametrize("lose_answer", [False, True])
def test_no_event_lost_or_doubled_when_flushes_fail(
    lose_answer: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("moorage.audit.log.RETRY_FIRST", 0.02)

    async def scenario() -> tuple[list[dict[str, object]], int]:
        store = Flaky(failures=3, lose_answer=lose_answer)
        sink = EtcdAuditLog(store, "r1", flush_interval=0.01, flush_count=7, retention=NO_TRIM)
        for i in range(40):
            await sink.record(push(i))
        for _ in range(200):
            await asyncio.sleep(0.05)
            if not sink.buffer:
                break
        await sink.close()
        return await stored(store), sink.dropped

    events, dropped = asyncio.run(scenario())
    assert dropped == 0
    assert [e["target"] for e in events] == [f"acme/app:v{i}" for i in range(40)]


def test_a_full_buffer_drops_into_the_process_log_and_never_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> tuple[int, int]:
        store = Flaky(failures=10**6)
        sink = EtcdAuditLog(store, "r1", flush_interval=10, buffer_max=5, retention=NO_TRIM)
        for i in range(8):
            await sink.record(push(i))
        buffered, dropped = len(sink.buffer), sink.dropped
        await sink.close(patience=0.2)
        return buffered, dropped

    with caplog.at_level(logging.WARNING, logger="moorage.audit"):
        buffered, dropped = asyncio.run(scenario())
    assert (buffered, dropped) == (5, 3)
    assert "acme/app:v7" in caplog.text  # the dropped event is in the process log, whole
    assert "acme/app:v0" in caplog.text  # and so is what close() could not write


def test_fields_are_bounded() -> None:
    async def scenario() -> list[dict[str, object]]:
        store = MemoryMetaStore()
        sink = EtcdAuditLog(store, "r1", retention=NO_TRIM)
        detail = {f"k{i}": "v" * 5000 for i in range(100)}
        await sink.record(AuditEvent("login", "x" * 10_000, "t" * 10_000, DENIED, detail=detail))
        await sink.close()
        return await stored(store)

    (event,) = asyncio.run(scenario())
    assert len(str(event["actor"])) <= 256
    assert len(str(event["target"])) <= 1024
    detail = event["detail"]
    assert isinstance(detail, dict)
    assert len(detail) == 32
    assert all(len(v) <= 1024 for v in detail.values())


def test_retention_trims_by_age_then_by_count_in_bounded_batches() -> None:
    async def scenario() -> tuple[int, list[dict[str, object]], int]:
        store = MemoryMetaStore(max_txn_ops=600)
        sink = EtcdAuditLog(store, "r1", retention=NO_TRIM)
        now = 1_800_000_000.0
        for i in range(1200):  # one per second, the first 200 older than the max age
            await sink.record(push(i, at=now - 1200 + i))
        await sink.close()
        deleted = await trim(store, Retention(max_age=1000.5, max_events=700), now=now)
        again = await trim(store, Retention(max_age=1000.5, max_events=700), now=now)
        return deleted, await stored(store), again

    deleted, events, again = asyncio.run(scenario())
    assert deleted == 500
    assert again == 0
    assert [e["target"] for e in events] == [f"acme/app:v{i}" for i in range(500, 1200)]


def test_paging_has_no_gap_or_duplicate() -> None:
    async def scenario() -> list[list[str]]:
        store = MemoryMetaStore()
        sink = EtcdAuditLog(store, "r1", retention=NO_TRIM)
        for i in range(2500):
            await sink.record(push(i))
        await sink.close()
        pages: list[list[str]] = []
        cursor = None
        while True:
            events, cursor = await read_events(store, Query(cursor=cursor, limit=1000))
            pages.append([str(e["target"]) for e in events])
            if cursor is None:
                return pages

    pages = asyncio.run(scenario())
    assert [len(p) for p in pages] == [1000, 1000, 500]
    assert [t for page in pages for t in page] == [f"acme/app:v{i}" for i in range(2500)]


def test_filters_examine_a_bounded_number_of_keys_per_page() -> None:
    async def scenario() -> list[tuple[int, bool]]:
        store = MemoryMetaStore()
        sink = EtcdAuditLog(store, "r1", retention=NO_TRIM)
        for i in range(250):
            await sink.record(push(i))
            if i % 100 == 0:
                await sink.record(AuditEvent("delete", "bob", f"acme/app:v{i}"))
        await sink.close()
        out = []
        cursor = None
        while True:
            query = Query(cursor=cursor, limit=10, actor="bob")
            events, cursor = await read_events(store, query, max_scan=60)
            assert all(e["actor"] == "bob" for e in events)
            out.append((len(events), cursor is not None))
            if cursor is None:
                return out

    pages = asyncio.run(scenario())
    assert sum(n for n, _ in pages) == 3  # every match, however many pages it took
    assert len(pages) >= 4  # 253 keys, at most 60 examined per page


def test_time_forms_and_cursors() -> None:
    now = 1_800_000_000.0
    assert parse_time("1h", now) == now - 3600
    assert parse_time("1700000000.5", now) == 1700000000.5
    assert parse_time("2026-12-01T04:00:00Z", now) == 1796097600.0
    assert parse_time("2026-12-01T05:00:00+01:00", now) == 1796097600.0
    for bad in ("", "yesterday", "2026-12-01T04:00:00", "1" * 100, "-5h", "1e9", "nan"):
        with pytest.raises(BadQuery):
            parse_time(bad, now)
    key = PREFIX + b"01796097600000000-abc123.77-0000000a"
    assert decode_cursor(encode_cursor(key)) == key
    for bad in ("", "!!", "Zm9v", encode_cursor(PREFIX + b"../../etc"), "A" * 500):
        with pytest.raises(BadQuery):
            decode_cursor(bad)


def test_an_event_at_a_time_no_date_has_is_skipped_not_a_500() -> None:
    """A forged event in etcd whose `at` is out of any date's range (year 0, 1e300, nan)
    is skipped like any unreadable one; the others are listed."""

    async def run() -> None:
        meta = MemoryMetaStore()
        keys_ = [PREFIX + f"0000000000000000{i}-x-0000000{i}".encode() for i in range(5)]
        for key, at in zip(keys_, [1e300, -62135647200.0, float("nan"), 1e20, 1.7e9], strict=True):
            await meta._txn([], [Put(key, json.dumps({"at": at, "action": "x"}).encode())])
        events, _ = await read_events(meta, Query())
        assert [e["at"] for e in events] == [1.7e9]

    asyncio.run(run())


def test_text_lines_escape_control_characters() -> None:
    from moorage.cli.audit import event_line

    line = event_line(
        {
            "time": "2026-12-01T04:00:00.000Z",
            "action": "login",
            "outcome": "denied",
            "actor": "evil\x1b[2J\nroot",
            "client": "10.0.0.1",
            "target": "user:evil\u2028x",
            "detail": {"method": "password\r"},
        }
    )
    assert line.isprintable()
    assert "actor=evil\\u001b[2J\\nroot" in line
    assert line.endswith("method=password\\r")
