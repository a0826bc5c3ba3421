"""File primitives of the filesystem driver: whole writes, early writeback, durable renames."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path
from typing import Any

# Bytes gathered before one write+hash runs in a worker thread; two such buffers at most
# are alive per upload, which keeps memory flat whatever the blob size.
FLUSH_BYTES = 4 * 1024 * 1024
# A streamed read (a ranged GET, a backup): the server queues a few of these per response, so
# a client that stops reading holds ~2.5 MiB of the worker (1 MiB reads: 7.2 MiB, measured),
# and 256 KiB still streams a ranged GET at 1.3-2.6 GB/s (128 KiB: 0.9-1.0).
READ_BYTES = 256 * 1024
# Bodies up to this size are hashed and written without leaving the event loop.
INLINE_BYTES = 64 * 1024

# A data file whose owner-write bit is cleared belongs to an ended session: committed (it is
# now a blob, read-only) or cancelled/purged (unlinked). Both are done under the lock.
ENDED_MODE = 0o444


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_sync_file_range() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):  # not Linux: the final fsync does all the work
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return fn


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


#: Most buffers one pwritev takes (IOV_MAX).
_IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)


def pwritev_all(fd: int, chunks: list[bytes], offset: int) -> None:
    """Write `chunks` one after the other at `offset`, without joining them first."""
    for i in range(0, len(chunks), _IOV_MAX):
        group = chunks[i : i + _IOV_MAX]
        total = sum(len(c) for c in group)
        written = os.pwritev(fd, group, offset)
        if written < total:  # a short write (rare): the rest one buffer at a time
            skip = written
            for chunk in group:
                if skip >= len(chunk):
                    skip -= len(chunk)
                    continue
                pwrite_all(fd, memoryview(chunk)[skip:], offset + written)
                written += len(chunk) - skip
                skip = 0
        offset += total


def rename_into_place(source: Path, target: Path) -> None:
    """Rename a file to `target`, creating (durably) its parent directory if needed; the
    caller fsyncs `target.parent` to make the rename itself durable."""
    parent = target.parent
    if not parent.exists():
        parent.mkdir(parents=True, exist_ok=True)
        fsync_dir(parent.parent)
    os.rename(source, target)
