"""The disk's own ceiling for durable writes, measured in the benchmark's directory (the disk
both registries write to), the way Moorage writes.

A push to Moorage returns once its bytes are fsynced; one to Distribution does not wait for
the disk. On a virtual disk a block never written before can cost far more than one written
earlier (the host allocates it on first write): a push fills a new file, so its ceiling is
the fresh-file figure. Two figures:

- sequential: a new file of the push size, in 4 MiB `pwritev`s with early writeback (as the
  upload path writes), then fsync: MB/s;
- small installs: 4 KiB files at 16 in parallel, each written, fsynced, renamed into a
  directory and that directory fsynced (as a blob or manifest is installed, without the
  group commit's sharing): installs/s.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from moorage.storage.fileio import fsync_dir, pwritev_all, start_writeback

MB = 1_000_000
_CHUNK = 4 * 1024 * 1024
_PIECE = 256 * 1024


def sequential_mb_s(directory: Path, size: int, name: str) -> float:
    """MB/s of writing `size` random bytes into a new file `name` and fsyncing it."""
    pieces = [os.urandom(_PIECE) for _ in range(_CHUNK // _PIECE)]
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        start = time.perf_counter()
        offset = 0
        while offset < size:
            length = min(_CHUNK, size - offset)
            chunk = pieces if length == _CHUNK else [os.urandom(length)]
            pwritev_all(fd, chunk, offset)
            start_writeback(fd, offset, length)
            offset += length
        os.fsync(fd)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
    return size / MB / elapsed


def small_installs_per_s(directory: Path, count: int, size: int, parallel: int = 16) -> float:
    """Durable installs of `count` new `size`-byte files per second, `parallel` at a time."""
    staging = directory / "staging"
    final = directory / "final"
    staging.mkdir(parents=True)
    final.mkdir()
    fsync_dir(directory)
    bodies = [os.urandom(size) for _ in range(count)]

    def install(i: int) -> None:
        temporary = staging / f"{i}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            pwritev_all(fd, [bodies[i]], 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, final / f"{i}")
        fsync_dir(final)

    with ThreadPoolExecutor(parallel) as pool:
        start = time.perf_counter()
        list(pool.map(install, range(count)))
        elapsed = time.perf_counter() - start
    return count / elapsed


def measure(directory: Path, blob_size: int, small_count: int, small_size: int) -> dict[str, float]:
    """The disk ceiling's figures, best of two runs each (a ceiling is what the disk can
    give); the files stay until the benchmark's directory is removed."""
    directory.mkdir(parents=True, exist_ok=True)
    found: dict[str, float] = {}
    for run in range(2):
        figures = {
            "fsynced write of a new file, MB/s": sequential_mb_s(
                directory, blob_size, f"sequential-{run}"
            ),
            f"durable {small_size // 1024} KiB file installs/s, 16 in parallel": (
                small_installs_per_s(directory / f"small-{run}", small_count, small_size)
            ),
        }
        for key, value in figures.items():
            found[key] = max(value, found.get(key, 0.0))
    return found
