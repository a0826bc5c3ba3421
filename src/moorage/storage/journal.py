"""The journal: every tag and manifest change, and every account change (users, teams,
grants, public repositories, access tokens: moorage.meta.account_journal), appended durably
to blob storage before it is acknowledged.

etcd's force-new-cluster (emergency repair) keeps only what the survivor had learned was
committed; a backup holds what existed when it was taken. As long as blob storage survives,
replaying the journal past the survivor's (or the backup's) revision brings back every
acknowledged change.

Each API process appends JSON lines to its own segment file,
`<storage>/journal/<writer>-<start>.jsonl`, and starts a new segment once the current one is
`segment_seconds()` old (1 hour), so old segments stop changing and can be trimmed whole
(moorage.storage.journal_trim). Appends are group-committed: concurrent pushes wait for one
shared fsync. Every entry carries the epoch and the etcd revision of the change, so replay can
order entries exactly and skip what the store already has.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from moorage.errors import StorageUnavailable
from moorage.storage.syncer import fail_waiters

JOURNAL_DIR = "journal"
DEFAULT_SEGMENT_SECONDS = 3600.0


def segment_seconds() -> float:
    """How long a writer appends to one segment (`MOORAGE_JOURNAL_SEGMENT_SECONDS`, tests
    lower it); a segment untouched for twice that is closed for good (journal_trim)."""
    try:
        value = float(os.environ.get("MOORAGE_JOURNAL_SEGMENT_SECONDS", ""))
    except ValueError:
        return DEFAULT_SEGMENT_SECONDS
    return value if value > 0 else DEFAULT_SEGMENT_SECONDS


class Journal:
    def __init__(self, storage_root: str | Path, writer: str, epoch: int, cluster_id: str) -> None:
        self.cluster_id = cluster_id
        self.dir = Path(storage_root) / JOURNAL_DIR
        self.writer = writer
        self.path = self._segment_path()
        self.epoch = epoch
        self._fd: int | None = None
        self._opened = 0.0  # time.monotonic() when the current segment was opened
        self._torn = False  # a failed write may have left part of a line behind
        self._start_queue()

    def _start_queue(self) -> None:
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._flushing = False
        self._flusher: asyncio.Task[None] | None = None

    @property
    def where(self) -> str:
        """Where the journal is written, for messages."""
        return str(self.path)

    async def _write(self, data: bytes) -> None:
        """Make one batch of lines durable (a new S3 object in moorage.storage.s3journal)."""
        await asyncio.to_thread(self._write_sync, data)

    def _segment_path(self) -> Path:
        # The start time first (hex seconds), so a writer's segments sort oldest first.
        return self.dir / f"{self.writer}-{int(time.time()):08x}{secrets.token_hex(2)}.jsonl"

    def _open(self) -> int:
        if self._fd is not None and time.monotonic() - self._opened >= segment_seconds():
            self.close()  # the segment is old enough: a new one (the old one stops changing)
            self.path = self._segment_path()
        if self._fd is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._opened = time.monotonic()
            self._torn = False  # a new file holds no torn line
        return self._fd

    def _write_sync(self, data: bytes) -> None:
        fd = self._open()
        if self._torn:  # end the torn line: replay skips it, and reads this batch whole
            data = b"\n" + data
        self._torn = True
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fdatasync(fd)
        self._torn = False
        # Hazard: a trim deletes only segments untouched for 2 x segment_seconds(), which a
        # live writer never appends to; a writer stalled that long between its age check and
        # its write would have written into a deleted file, so it writes the batch again.
        if os.fstat(fd).st_ino != _inode(self.path):
            self.close()
            self.path = self._segment_path()
            self._write_sync(data.lstrip(b"\n"))

    async def append(
        self, entry: dict[str, Any], seal: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    ) -> None:
        """Returns once the entry is on disk (fsynced, shared with concurrent appends).
        `seal` makes the line of the complete entry (cluster id and epoch included), e.g.
        with its MAC (moorage.meta.account_journal).

        An I/O error (disk full, storage gone) raises StorageUnavailable with the reason.
        """
        entry = {"c": self.cluster_id, "e": self.epoch, **entry}
        if seal is not None:
            entry = seal(entry)
        line = json.dumps(entry, separators=(",", ":")).encode() + b"\n"
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((line, future))
        if not self._flushing:
            self._flushing = True
            self._flusher = asyncio.create_task(self._flush())
        try:
            await future
        except OSError as exc:
            raise self._unavailable(exc.strerror or exc) from exc
        except StorageUnavailable as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, reason: object) -> StorageUnavailable:
        return StorageUnavailable(
            f"cannot write the journal {self.where}: {reason}. The change "
            "was committed but not journaled (an emergency repair could lose it): make "
            "blob storage writable, then repeat the request"
        )

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await self._write(b"".join(line for line, _ in batch))
                except BaseException as exc:
                    fail_waiters((fut for _, fut in batch), exc, "write")
                    if not isinstance(exc, Exception):
                        raise
                else:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_result(None)
        finally:
            self._flushing = False

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def aclose(self) -> None:
        """Release what the journal holds (the file descriptor; an S3 client)."""
        self.close()


def _inode(path: Path) -> int:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return -1


# Longest journal line read (an entry holds a manifest record and its referrer descriptor,
# whose annotations are bounded by the 4 MiB manifest limit); longer lines are skipped.
MAX_LINE = 16 * 1024 * 1024


def read_entries(storage_root: str | Path) -> Iterator[dict[str, Any]]:
    """Every readable entry of every journal file (a torn last line is skipped, and so is
    a line longer than MAX_LINE: never read whole). Entries are not validated here: replay
    does that (moorage.recovery.journal_replay.check_entry)."""
    directory = Path(storage_root) / JOURNAL_DIR
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("*.jsonl")):
        if path.is_file():
            yield from file_entries(path)


def file_entries(path: Path) -> Iterator[dict[str, Any]]:
    """The readable entries of one journal file (none if a trim removed it meanwhile)."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 (closed below; absent is not an error)
    except FileNotFoundError:
        return
    with fh:
        while raw := fh.readline(MAX_LINE + 1):
            if len(raw) > MAX_LINE:
                while raw and not raw.endswith(b"\n"):  # skip the rest of that line
                    raw = fh.readline(MAX_LINE)
                continue
            if not raw.endswith(b"\n"):
                break  # torn by a crash mid-append: never acknowledged
            entry = entry_of(raw)
            if entry is not None:
                yield entry


def entry_of(raw: bytes) -> dict[str, Any] | None:
    """The entry one complete journal line holds, or None when it holds none."""
    try:
        entry = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if isinstance(entry, dict) and "r" in entry and "op" in entry:
        return entry
    return None
