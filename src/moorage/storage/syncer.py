"""Group commit of durable installs: concurrent requests share a thread hand-off and the
fsync of each directory they renamed a file into.

A blob or a manifest becomes durable in three steps: its data fsynced, the file renamed into
place, the directory fsynced (which makes the rename durable). Each request used to run the
three in a worker thread of its own. `Syncer.run(job)` queues the job instead; one worker
thread runs every job queued meanwhile (each fsyncs its own file and renames it), then fsyncs
each directory they renamed into once, and only then answers them all, as the journal shares
its fsync (storage.journal). On ext4 the first fsync of a batch commits the filesystem's
journal for the whole batch, so the fsyncs after it find little left to do.

A job that raises fails alone (its waiter gets the exception; its directory is not synced
for it). A directory fsync that fails fails every job that renamed into that directory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from moorage.storage.fileio import fsync_dir

#: A job: runs in the batch's worker thread; returns the directory it renamed a file into
#: (fsynced before its waiter is answered), or None when it renamed nothing.
Job = Callable[[], Path | None]


def run_batch(jobs: list[Job]) -> list[BaseException | None]:
    """Run `jobs` in order, then fsync each directory they returned once; per job, None
    (durable) or what failed it."""
    outcomes: list[BaseException | None] = []
    directories: dict[Path, list[int]] = {}
    for i, job in enumerate(jobs):
        try:
            directory = job()
        except Exception as exc:  # handed to that job's waiter
            outcomes.append(exc)
            continue
        outcomes.append(None)
        if directory is not None:
            directories.setdefault(directory, []).append(i)
    for directory, users in directories.items():
        try:
            fsync_dir(directory)
        except OSError as exc:
            for i in users:
                outcomes[i] = exc
    return outcomes


class Syncer:
    """One per process and event loop (FilesystemStorage holds it)."""

    def __init__(self) -> None:
        self._pending: list[tuple[Job, asyncio.Future[None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flushing = False
        self._flusher: asyncio.Task[None] | None = None
        self.batches = 0  # batches run, for tests and profiling
        self.jobs = 0

    async def run(self, job: Job) -> None:
        """Returns once `job` ran and the directory it returned is fsynced; raises what the
        job (or that fsync) raised."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests): a flusher of the old one is gone
            self._loop, self._pending, self._flushing = loop, [], False
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((job, future))
        if not self._flushing:
            self._flushing = True
            self._flusher = loop.create_task(self._flush())
        await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                self.batches += 1
                self.jobs += len(batch)
                try:
                    outcomes = await asyncio.to_thread(run_batch, [job for job, _ in batch])
                except BaseException as exc:
                    # Every waiter gets an answer, whatever happened (never a hang).
                    failure = exc if isinstance(exc, Exception) else OSError("sync interrupted")
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(failure)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():  # its request was cancelled meanwhile
                        continue
                    if outcome is None:
                        future.set_result(None)
                    else:
                        future.set_exception(outcome)
        finally:
            self._flushing = False


_shared = Syncer()


def shared() -> Syncer:
    """The process's syncer: every blob and manifest install of the process joins it."""
    return _shared
