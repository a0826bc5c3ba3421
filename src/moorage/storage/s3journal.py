"""The journal on S3 (see moorage.storage.journal for what it holds and why).

S3 has no append. Each group commit is one new object,
`<prefix>/journal/<writer>-<random>/<sequence>-<epoch>-<revision>-<cluster id>.jsonl`
(`<revision>`: the newest of its entries, so a trim decides from the listing alone, without
reading it; moorage.storage.journal_trim), holding the batch's lines; the PUT
returns before any write in the batch is acknowledged, and an object appears whole or not at
all, so there are no torn lines (a batch whose PUT failed is answered with an error, and may
or may not be replayed, like any write answered with an error). The random part keeps a
restarted worker that got the same pid from ever writing over its predecessor's objects; the
PUT is also a conditional create. `s3_entries` lists the objects page by page and reads each
as a stream of lines with the filesystem journal's rules (lines over MAX_LINE and a last line
without its newline are skipped); replay orders entries by (epoch, revision) itself.

Growth: one object per group commit, until moorage.storage.journal_trim deletes those no
recovery can need.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from moorage.errors import StorageUnavailable
from moorage.storage.control import S3Control, error_code
from moorage.storage.journal import JOURNAL_DIR, MAX_LINE, Journal, entry_of
from moorage.storage.s3location import S3Location

CHUNK = 1024 * 1024


class S3Journal(Journal):
    def __init__(self, location: S3Location, writer: str, epoch: int, cluster_id: str) -> None:
        self.cluster_id = cluster_id
        self.epoch = epoch
        self.control = S3Control(location)
        self.stream = f"{JOURNAL_DIR}/{writer}-{secrets.token_hex(4)}"
        self._sequence = 0
        self._fd = None
        self._torn = False
        self._start_queue()

    @property
    def where(self) -> str:
        return f"{self.control.where} ({self.stream}/)"

    async def _write(self, data: bytes) -> None:
        # A number is never used twice, even when its PUT failed (it may have landed).
        self._sequence += 1
        name = f"{self.stream}/{self._sequence:012d}{_suffix(data)}.jsonl"
        if not await self.control.create(name, data):
            raise StorageUnavailable(f"journal object {name} exists already")

    def close(self) -> None:
        return None

    async def aclose(self) -> None:
        await self.control.aclose()


# The last component of a journal object's name written with its epoch, newest revision and
# cluster id (objects without them are read to find out).
_NAMED = re.compile(r"^[0-9]{12}-([0-9]+)-([0-9]+)-([A-Za-z0-9_]+)\.jsonl$")


@dataclass(frozen=True)
class ObjectSpan:
    """What one journal object's name says of its entries: one cluster, one epoch, and no
    revision above `revision`."""

    cluster_id: str
    epoch: int
    revision: int


def span_of(name: str) -> ObjectSpan | None:
    """The span a journal object's name declares, or None (an older name: read it)."""
    m = _NAMED.match(name.rpartition("/")[2])
    if m is None:
        return None
    return ObjectSpan(m.group(3), int(m.group(1)), int(m.group(2)))


def _suffix(data: bytes) -> str:
    """`-<epoch>-<newest revision>-<cluster id>` of a batch whose entries all agree on the
    epoch and cluster (they do: one Journal writes one of each); '' otherwise."""
    spans: set[tuple[Any, Any]] = set()
    newest = -1
    for raw in data.splitlines():
        entry = entry_of(raw) if raw else None
        if entry is None or not isinstance(entry.get("r"), int):
            return ""
        spans.add((entry.get("c"), entry.get("e")))
        newest = max(newest, entry["r"])
    if len(spans) != 1:
        return ""
    cluster, epoch = spans.pop()
    if not isinstance(epoch, int) or not isinstance(cluster, str):
        return ""
    if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", cluster) or epoch < 0 or newest < 0:
        return ""
    return f"-{epoch}-{newest}-{cluster}"


async def object_entries(control: S3Control, name: str) -> AsyncIterator[dict[str, Any]]:
    """The readable entries of one journal object (none if it was deleted meanwhile)."""
    async for raw in _lines(control, name):
        entry = entry_of(raw)
        if entry is not None:
            yield entry


async def s3_entries(control: S3Control) -> AsyncIterator[dict[str, Any]]:
    """Every readable entry of every journal object (not validated: replay does that)."""
    async for page in control.names(f"{JOURNAL_DIR}/"):
        for name in page:
            if name.endswith(".jsonl"):
                async for raw in _lines(control, name):
                    entry = entry_of(raw)
                    if entry is not None:
                        yield entry


async def _lines(control: S3Control, name: str) -> AsyncIterator[bytes]:
    """The complete lines of one object, streamed; a line over MAX_LINE is skipped unread."""
    s3 = await control.client()
    loc = control.location
    try:
        resp = await s3.get_object(Bucket=loc.bucket, Key=loc.key(name))
    except Exception as exc:
        if error_code(exc) in ("NoSuchKey", "404"):
            return  # deleted between the listing and the read
        raise control._failed("GET", name, exc) from exc
    buf = b""
    skipping = False
    async with resp["Body"] as body:
        while chunk := await _read(control, name, body):
            buf += chunk
            while True:
                end = buf.find(b"\n")
                if end < 0:
                    if len(buf) > MAX_LINE:
                        buf, skipping = b"", True
                    break
                line, buf = buf[: end + 1], buf[end + 1 :]
                if skipping:
                    skipping = False
                elif len(line) <= MAX_LINE:
                    yield line


async def _read(control: S3Control, name: str, body: Any) -> bytes:
    try:
        chunk: bytes = await body.read(CHUNK)
    except Exception as exc:  # the connection broke mid-object
        raise control._failed("GET", name, exc) from exc
    return chunk


async def journal_entries(spec: str) -> AsyncIterator[dict[str, Any]]:
    """Every readable entry of the journal in `--storage` `spec` (a directory or s3://)."""
    import asyncio
    import itertools

    from moorage.storage.journal import read_entries
    from moorage.storage.s3location import is_s3, parse

    if not is_s3(spec):
        # Read in a thread, a batch at a time: a journal of months (no backup ever trimmed
        # it) is never held in memory whole.
        entries = read_entries(spec)
        while batch := await asyncio.to_thread(lambda: list(itertools.islice(entries, 1000))):
            for entry in batch:
                yield entry
        return
    control = S3Control(parse(spec))
    try:
        async for entry in s3_entries(control):
            yield entry
    finally:
        await control.aclose()
