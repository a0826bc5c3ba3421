"""Group commit of durable installs: concurrent requests share a thread hand-off, the
filesystem's journal commits and the fsync of each directory they renamed a file into.

A blob or a manifest becomes durable in three steps: its data fsynced, the file renamed into
place, the directory fsynced (which makes the rename durable). Each request used to run the
three in a worker thread of its own. `Syncer.run(job)` queues the job instead; one worker
thread takes every job queued in the same turn of the event loop and runs the batch in
phases, answering none of them before the end: every job stages its file
(writes or marks it), the files are fsynced in parallel (the filesystem then shares one
journal commit and disk flush between them; one after another, each pays its own, measured
~10x slower on the development VM), each is renamed once its own fsync succeeded, and each
directory renamed into is fsynced once, in parallel.

A job that raises fails alone (its waiter gets the exception). A directory fsync that fails
fails every job that renamed into that directory.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moorage.storage.fileio import fsync_dir


def fail_waiters(waiters: Iterable[asyncio.Future[Any]], exc: BaseException, what: str) -> None:
    """Every waiter of a failed group commit gets an answer, whatever happened (never a
    hang): `exc`, or an OSError when it is no Exception (a cancellation)."""
    failure = exc if isinstance(exc, Exception) else OSError(f"{what} interrupted")
    for waiter in waiters:
        if not waiter.done():
            waiter.set_exception(failure)


@dataclass(slots=True)
class Staged:
    """A file written and ready to install: `fd` is fsynced, then `install` renames it into
    place and returns the directory to fsync; `cleanup` always runs last, told whether the file
    was renamed (it closes descriptors, releases locks, undoes what a failed job staged)."""

    fd: int
    install: Callable[[], Path]
    cleanup: Callable[[bool], None]


#: A job: runs in the batch's worker thread and stages a file (None: nothing to install, e.g.
#: the bytes were there already).
Job = Callable[[], Staged | None]

#: fsyncs of one batch run in parallel: the filesystem then shares one journal commit and one
#: disk flush between them (one after another, each pays its own: ~10x slower measured here).
_POOL_THREADS = 16
_pool: ThreadPoolExecutor | None = None


def _parallel(calls: list[Callable[[], None]]) -> list[BaseException | None]:
    global _pool
    if len(calls) <= 1:
        return [_outcome(c) for c in calls]
    if _pool is None:
        _pool = ThreadPoolExecutor(_POOL_THREADS, thread_name_prefix="moorage-fsync")
    # The batch's own thread makes the first call while the pool makes the others: one
    # hand-off fewer per phase (each wakes a thread and hands the GIL over twice).
    others = [_pool.submit(_outcome, c) for c in calls[1:]]
    try:
        first = _outcome(calls[0])
    finally:  # the batch's cleanup closes the descriptors: never while the pool uses them
        rest = [f.result() for f in others]
    return [first, *rest]


def _outcome(call: Callable[[], None]) -> BaseException | None:
    try:
        call()
    except Exception as exc:  # handed to the waiters it concerns
        return exc
    return None


def _fsync(fd: int) -> Callable[[], None]:
    return lambda: os.fsync(fd)


def _fsync_dir(path: Path) -> Callable[[], None]:
    return lambda: fsync_dir(path)


def run_batch(jobs: list[Job]) -> list[BaseException | None]:
    """Stage every job, fsync their files together, rename them, fsync each directory they
    renamed into once (together); per job, None (durable) or what failed it."""
    outcomes: list[BaseException | None] = [None] * len(jobs)
    staged: dict[int, Staged] = {}
    for i, job in enumerate(jobs):
        try:
            found = job()
        except Exception as exc:  # handed to that job's waiter
            outcomes[i] = exc
            continue
        if found is not None:
            staged[i] = found
    installed: dict[int, Path] = {}
    try:
        order = list(staged)
        for i, failed in zip(order, _parallel([_fsync(staged[i].fd) for i in order]), strict=True):
            if failed is not None:
                outcomes[i] = failed
                continue
            try:
                installed[i] = staged[i].install()
            except Exception as exc:
                outcomes[i] = exc
        directories: dict[Path, list[int]] = {}
        for i, directory in installed.items():
            directories.setdefault(directory, []).append(i)
        dirs = list(directories)
        for directory, failed in zip(dirs, _parallel([_fsync_dir(d) for d in dirs]), strict=True):
            if failed is not None:
                for i in directories[directory]:
                    outcomes[i] = failed
    finally:
        for i, item in staged.items():
            try:
                item.cleanup(i in installed)
            except Exception as exc:
                outcomes[i] = outcomes[i] or exc
    return outcomes


class Syncer:
    """One per process (`shared`). A batch is what was queued by the time the event loop
    gets to it (the requests ready in the same turn of the loop); it starts at once, even
    while earlier batches are still syncing: a request never waits for a batch it was not
    in (a single flusher made arrivals wait for the batch in flight, then for their own,
    and the filesystem already shares commits between concurrent fsyncs)."""

    def __init__(self) -> None:
        self._pending: list[tuple[Job, asyncio.Future[None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self._running: set[asyncio.Task[None]] = set()
        self.batches = 0  # batches run, for tests and profiling
        self.jobs = 0

    async def run(self, job: Job) -> None:
        """Returns once `job`'s file is fsynced, renamed and its directory fsynced; raises
        what failed it."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests): what the old one scheduled is gone
            self._loop, self._pending, self._scheduled = loop, [], False
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((job, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._start_batch, loop)
        await future

    def _start_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        if batch:
            task = loop.create_task(self._run_batch(batch))
            self._running.add(task)  # kept until done
            task.add_done_callback(self._running.discard)

    async def _run_batch(self, batch: list[tuple[Job, asyncio.Future[None]]]) -> None:
        self.batches += 1
        self.jobs += len(batch)
        try:
            outcomes = await asyncio.to_thread(run_batch, [job for job, _ in batch])
        except BaseException as exc:
            fail_waiters((future for _, future in batch), exc, "sync")
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # its request was cancelled meanwhile
                continue
            if outcome is None:
                future.set_result(None)
            else:
                future.set_exception(outcome)


_shared = Syncer()


def shared() -> Syncer:
    """The process's syncer: every blob and manifest install of the process joins it."""
    return _shared
