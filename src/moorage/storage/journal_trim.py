"""Trimming the journal (moorage.storage.journal): delete the segments (filesystem) and
objects (S3) that no recovery can still replay.

What replays the journal, and from where (moorage.recovery):
- emergency repair replays the entries of its cluster newer than (the old epoch, the
  survivor's newest registry-data revision);
- restore replays the entries of the backup's cluster newer than (the backup's epoch, the
  backup's revision).

So an entry of cluster C at (epoch e, revision r) is needed by no recovery once (e, r) is at
or below a `Floor` of C that is below both: every etcd member's newest registry-data revision
in the current epoch (a member's revision only grows, so any future survivor already holds
the entry), and the newest recorded backup (moorage.cluster.journal_trim computes it). A
segment or object goes only when every entry in it is at or below the floor and of the
floor's cluster: entries of other clusters (a restore into the same storage) stay.

A filesystem segment may still be appended to while its writer lives, so only one untouched
for twice `segment_seconds()` is considered (a live writer starts a new one after
`segment_seconds()`). S3 objects never change; their names declare their span (s3journal),
and only objects named the older way are read.

Every trim works page by page (PAGE names) and deletes at most `limit` files per call;
concurrent trims are safe (deleting what is gone is fine, and each decides from the floor
alone).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moorage.errors import StorageUnavailable
from moorage.storage.control import ControlStore, FilesystemControl, S3Control, open_control
from moorage.storage.journal import JOURNAL_DIR, file_entries, segment_seconds
from moorage.storage.s3journal import object_entries, span_of


@dataclass(frozen=True)
class Floor:
    """Entries of `cluster_id` at or below (`epoch`, `revision`) may be trimmed."""

    cluster_id: str
    epoch: int
    revision: int

    def covers(self, entries: Iterable[dict[str, Any]]) -> bool:
        """Whether every entry is this cluster's and at or below the floor (True for
        none: a file holding no readable entry serves no replay)."""
        top = (self.epoch, self.revision)
        for e in entries:
            epoch, rev = e.get("e"), e.get("r")
            if e.get("c") != self.cluster_id or not isinstance(epoch, int):
                return False
            if not isinstance(rev, int) or (epoch, rev) > top:
                return False
        return True


@dataclass
class TrimResult:
    deleted: int = 0
    kept: int = 0  # journal files looked at and kept
    skipped_recent: int = 0  # filesystem segments a writer may still append to
    errors: list[str] = field(default_factory=list)

    def sentence(self) -> str:
        text = f"deleted {self.deleted} journal file(s), kept {self.kept + self.skipped_recent}"
        return text + (f"; {len(self.errors)} error(s): {self.errors[0]}" if self.errors else "")


async def trim(
    spec: str, floor: Floor, limit: int = 10_000, now: float | None = None
) -> TrimResult:
    """Delete the journal files of blob storage `spec` that `floor` covers (at most
    `limit`)."""
    control = open_control(spec)
    result = TrimResult()
    closed_before = (time.time() if now is None else now) - 2 * segment_seconds()
    try:
        await _mark(control, floor)
        async for page in control.names(f"{JOURNAL_DIR}/"):
            if result.deleted >= limit:
                break  # the next round goes on
            for name in page:
                if not name.endswith(".jsonl") or result.deleted >= limit:
                    continue
                if isinstance(control, FilesystemControl):
                    covered = await _segment_covered(control.root / name, floor, closed_before)
                else:
                    assert isinstance(control, S3Control)
                    covered = await _object_covered(control, name, floor)
                if covered is None:
                    result.skipped_recent += 1
                elif covered:
                    await control.delete(name)
                    result.deleted += 1
                else:
                    result.kept += 1
    except StorageUnavailable as exc:
        result.errors.append(str(exc))
    finally:
        await control.aclose()
    return result


TRIMMED_DIR = "journal-trimmed"  # <cluster id>.json: the highest floor trimmed to


async def _mark(control: ControlStore, floor: Floor) -> None:
    """Record the floor before deleting anything, so a replay from below it can say what
    the journal no longer holds (`trimmed_to`)."""
    name = f"{TRIMMED_DIR}/{floor.cluster_id}.json"
    if await _floor_of(control, name) >= (floor.epoch, floor.revision):
        return
    await control.put(name, json.dumps({"epoch": floor.epoch, "revision": floor.revision}).encode())


async def _floor_of(control: ControlStore, name: str) -> tuple[int, int]:
    stored = await control.get(name, limit=4096)
    try:
        doc = json.loads(stored.data) if stored is not None else {}
        epoch, revision = doc.get("epoch", -1), doc.get("revision", -1)
    except (ValueError, AttributeError):
        return (-1, -1)
    ok = isinstance(epoch, int) and isinstance(revision, int)
    return (epoch, revision) if ok else (-1, -1)


async def trimmed_to(spec: str, cluster_id: str) -> tuple[int, int] | None:
    """The highest floor the journal of `cluster_id` in storage `spec` was trimmed to."""
    control = open_control(spec)
    try:
        found = await _floor_of(control, f"{TRIMMED_DIR}/{cluster_id}.json")
    finally:
        await control.aclose()
    return found if found >= (0, 0) else None


async def _segment_covered(path: Path, floor: Floor, closed_before: float) -> bool | None:
    """Whether `floor` covers a filesystem segment; None while a writer may append to it."""
    try:
        mtime = (await asyncio.to_thread(os.stat, path)).st_mtime
    except FileNotFoundError:
        return False  # gone meanwhile: nothing to do
    if mtime >= closed_before:
        return None
    return floor.covers(await asyncio.to_thread(lambda: list(file_entries(path))))


async def _object_covered(control: S3Control, name: str, floor: Floor) -> bool:
    span = span_of(name)
    if span is not None:  # decided from the name
        return floor.covers([{"c": span.cluster_id, "e": span.epoch, "r": span.revision}])
    return floor.covers([e async for e in object_entries(control, name)])


async def journal_size(spec: str) -> int:
    """How many journal files (segments or objects) blob storage `spec` holds (one listing,
    paged)."""
    control = open_control(spec)
    count = 0
    try:
        async for page in control.names(f"{JOURNAL_DIR}/"):
            count += sum(1 for n in page if n.endswith(".jsonl"))
    finally:
        await control.aclose()
    return count
