"""The journal on S3 (moorage.storage.s3journal) against a real SeaweedFS: one object per group
commit, durable before append returns, replayed in (epoch, revision) order with the filesystem
journal's skip rules, and the recovery replay reading it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from harness.seaweed import SeaweedFS

from moorage.errors import StorageUnavailable
from moorage.meta.memory import MemoryMetaStore
from moorage.meta.records import ManifestRecord
from moorage.oci import mediatypes as mt
from moorage.recovery.journal_replay import apply, plan_replay, read_plan
from moorage.storage import open_journal, s3journal
from moorage.storage.control import S3Control
from moorage.storage.s3journal import S3Journal, journal_entries
from moorage.storage.s3location import parse

DIGEST = "sha256:" + "a" * 64


def _entries(spec: str) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        return [e async for e in journal_entries(spec)]

    return asyncio.run(run())


def _untag(r: int, tag: str = "v1") -> dict[str, Any]:
    return {"r": r, "op": "untag", "repo": "app/one", "tag": tag}


def test_concurrent_appends_share_one_object_and_all_replay(
    seaweed: SeaweedFS, s3_url: str
) -> None:
    loc = parse(s3_url)

    async def run() -> S3Journal:
        journal = open_journal(s3_url, "r1-100", 1, "c1")
        assert isinstance(journal, S3Journal)
        try:
            await asyncio.gather(*(journal.append(_untag(r, f"t{r}")) for r in range(1, 51)))
            await journal.append(_untag(51))  # a later flush: its own object
        finally:
            await journal.aclose()
        return journal

    journal = asyncio.run(run())
    objects = seaweed.keys(loc.key("journal/"))
    # group commit: the 50 concurrent appends are one PUT (they all queue before the flush
    # starts), the later append another
    assert len(objects) == 2
    assert all(o.startswith(loc.key(journal.stream + "/")) for o in objects)
    found = _entries(s3_url)
    assert sorted(e["r"] for e in found) == list(range(1, 52))
    assert {e["c"] for e in found} == {"c1"}
    assert {e["e"] for e in found} == {1}


def test_an_aborted_flush_answers_an_error_and_the_next_one_lands(s3_url: str) -> None:
    async def run() -> list[int]:
        journal = S3Journal(parse(s3_url), "w", 1, "c1")
        failures = []
        try:
            await journal.append(_untag(1))
            pending = asyncio.create_task(journal.append(_untag(2)))
            for _ in range(1000):  # until the second flush's PUT is on its way
                if journal._sequence == 2:
                    break
                await asyncio.sleep(0)
            assert journal._sequence == 2
            assert journal._flusher is not None
            journal._flusher.cancel()
            with pytest.raises(StorageUnavailable, match="cannot write the journal s3://"):
                await pending
            failures.append(2)
            await journal.append(_untag(3))  # a new object number, never the aborted one's
            assert journal._sequence == 3
        finally:
            await journal.aclose()
        return failures

    assert asyncio.run(run()) == [2]
    # the aborted batch may or may not have landed (like any write answered with an error);
    # what was acknowledged is there
    assert {1, 3} <= {e["r"] for e in _entries(s3_url)}


def test_a_journal_the_store_refuses_says_so(s3_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")

    async def run() -> None:
        journal = S3Journal(parse(s3_url), "w", 1, "c1")
        try:
            await journal.append(_untag(1))
        finally:
            await journal.aclose()

    with pytest.raises(StorageUnavailable) as info:
        asyncio.run(run())
    assert "The change was committed but not journaled" in str(info.value)
    assert "SignatureDoesNotMatch" in str(info.value)


def test_replay_skips_torn_long_and_foreign_lines_across_chunks(
    s3_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3journal, "CHUNK", 7)  # lines cross chunk boundaries
    monkeypatch.setattr(s3journal, "MAX_LINE", 200)
    good = [{"c": "c1", "e": 1, **_untag(r)} for r in (1, 2, 3)]
    lines = [
        json.dumps(good[0]) + "\n",
        json.dumps({"c": "c1", "e": 1, "r": 9, "op": "untag", "pad": "x" * 300}) + "\n",
        "not json\n",
        json.dumps(["a", "list"]) + "\n",
        json.dumps(good[1]) + "\n",
        json.dumps({"no": "op"}) + "\n",
        json.dumps(good[2]) + "\n",
        '{"c":"c1","e":1,"r":4,"op":"untag"',  # no newline: never acknowledged
    ]

    async def write() -> None:
        control = S3Control(parse(s3_url))
        try:
            await control.put("journal/foreign-0/000000000001.jsonl", "".join(lines).encode())
            await control.put("journal/foreign-0/notes.txt", json.dumps(good[0]).encode())
        finally:
            await control.aclose()

    asyncio.run(write())
    assert _entries(s3_url) == good


def test_recovery_replays_an_s3_journal_in_order(s3_url: str) -> None:
    """Two writers, two epochs, another cluster's entries and a forged one: the plan keeps
    this cluster's valid entries past (epoch, revision), in order; apply untags."""

    async def write() -> None:
        a = S3Journal(parse(s3_url), "a", 1, "c1")
        b = S3Journal(parse(s3_url), "b", 2, "c1")
        other = S3Journal(parse(s3_url), "x", 1, "c2")
        try:
            await b.append(_untag(3, "v3"))
            await a.append(_untag(7, "v7"))
            await a.append(_untag(5, "v5"))  # epoch 1, revision 5: at or before `after`
            await other.append(_untag(8, "v1"))
            await a.append({"r": 9, "op": "untag", "repo": "../etc", "tag": "v1"})
            await b.append({"r": 4, "op": "delete", "repo": "app/one", "digest": DIGEST})
        finally:
            for j in (a, b, other):
                await j.aclose()

    asyncio.run(write())
    plan = plan_replay(s3_url, "c1", (1, 6))  # synchronous callers (the repair's plan)
    assert [(e["e"], e["r"]) for e in plan.entries] == [(1, 7), (2, 3), (2, 4)]
    assert len(plan.rejected) == 1
    assert "../etc" in plan.rejected[0]

    async def replay() -> tuple[int, list[str], list[str]]:
        store = MemoryMetaStore()
        record = ManifestRecord(DIGEST, mt.OCI_MANIFEST, 10)
        await store.put_manifest("app/one", record, tags=["v1", "v3", "v7"])
        same = await read_plan(s3_url, "c1", (1, 6))  # what emergency repair and restore use
        assert same.entries == plan.entries
        result = await apply(store, s3_url, same)
        tags, _ = await store.list_tags("app/one", None, None)
        return result.applied, result.unrecoverable, tags

    applied, unrecoverable, tags = asyncio.run(replay())
    assert applied == 3
    assert len(unrecoverable) == 1
    assert unrecoverable[0].startswith("refused invalid journal entry")
    assert tags == []  # v7 and v3 untagged, then the manifest (and v1 with it) deleted
