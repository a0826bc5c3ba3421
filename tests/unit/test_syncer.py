"""storage/syncer.py: the group commit of durable installs (real files, real fsyncs)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from pathlib import Path

import pytest

from moorage.storage import fileio, syncer
from moorage.storage.filesystem import FLUSH_BYTES, FilesystemStorage
from moorage.storage.syncer import Syncer, run_batch


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _renamer(tmp: Path, target: Path, data: bytes, into: Path | None = None) -> syncer.Job:
    """A job like the driver's: write `tmp`, staged to be fsynced and renamed to `target`
    (reporting `into` as its directory when given)."""

    def job() -> syncer.Staged:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        os.write(fd, data)

        def install() -> Path:
            os.rename(tmp, target)
            return into or target.parent

        def cleanup(renamed: bool) -> None:
            os.close(fd)
            cleaned.append((target.name, renamed))

        return syncer.Staged(fd, install, cleanup)

    return job


cleaned: list[tuple[str, bool]] = []


def test_a_batch_fsyncs_each_directory_once_and_a_failure_stays_with_its_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    synced: list[Path] = []
    real = fileio.fsync_dir

    def counting(path: Path) -> None:
        synced.append(path)
        real(path)

    monkeypatch.setattr(syncer, "fsync_dir", counting)
    jobs = [_renamer(tmp_path / f"t{i}", (a if i % 2 else b) / f"f{i}", b"x") for i in range(10)]

    def broken() -> syncer.Staged:
        raise OSError(28, "No space left on device")

    gone = tmp_path / "gone"
    into_gone = _renamer(tmp_path / "tg", a / "g", b"g", into=gone)  # its directory's fsync fails
    cleaned.clear()
    outcomes = run_batch([*jobs[:5], broken, into_gone, *jobs[5:]])
    assert sorted(synced) == sorted([a, b, gone])  # once each, however many renames
    assert [o is None for o in outcomes] == [True] * 5 + [False, False] + [True] * 5
    assert isinstance(outcomes[5], OSError)
    assert outcomes[5].errno == 28
    assert isinstance(outcomes[6], FileNotFoundError)
    names = {f"f{i}" for i in range(1, 10, 2)} | {"g"}
    assert {p.name for p in a.iterdir()} == names
    assert sorted(p.name for p in b.iterdir()) == sorted(f"f{i}" for i in range(0, 10, 2))
    # every staged job was cleaned up once, told it was renamed
    assert sorted(cleaned) == sorted([(f"f{i}", True) for i in range(10)] + [("g", True)])


def test_concurrent_waiters_share_one_batch_and_each_gets_its_own_outcome(tmp_path: Path) -> None:
    s = Syncer()

    async def main() -> list[BaseException | None]:
        jobs: list[syncer.Job] = [
            _renamer(tmp_path / f"t{i}", tmp_path / f"f{i}", bytes([i])) for i in range(16)
        ]

        def broken() -> syncer.Staged:
            raise PermissionError(13, "Permission denied")

        jobs.insert(7, broken)
        return await asyncio.gather(*(s.run(j) for j in jobs), return_exceptions=True)

    outcomes = asyncio.run(main())
    assert s.batches == 1
    assert s.jobs == 17
    assert isinstance(outcomes[7], PermissionError)
    assert [o for i, o in enumerate(outcomes) if i != 7] == [None] * 16
    assert all((tmp_path / f"f{i}").read_bytes() == bytes([i]) for i in range(16))
    # a waiter arriving later starts the next batch, on another event loop too
    asyncio.run(s.run(_renamer(tmp_path / "late-tmp", tmp_path / "late", b"l")))
    assert s.batches == 2
    assert (tmp_path / "late").read_bytes() == b"l"


def test_concurrent_put_bytes_and_commits_are_durable_installs_in_shared_batches(
    tmp_path: Path,
) -> None:
    fs = FilesystemStorage(tmp_path / "blobs")
    shared = syncer.shared()
    small = [os.urandom(4096) for _ in range(16)]
    uploaded = [os.urandom(8192) for _ in range(15)]
    uploaded.append(os.urandom(FLUSH_BYTES + 1))  # large: its data synced before its job

    async def upload(i: int, data: bytes) -> None:
        handle = await fs.create_upload(f"{i:032x}")
        try:
            writer = await handle.append(None)
            await writer.write(data)
            await writer.close()
        finally:
            await handle.release()
        held = await fs.open_upload(f"{i:032x}")
        try:
            await held.commit(sha256(data))
        finally:
            await held.release()

    async def main() -> None:
        await asyncio.gather(
            *(fs.put_bytes(sha256(d), d) for d in small),
            *(upload(i, d) for i, d in enumerate(uploaded)),
        )

    batches, jobs = shared.batches, shared.jobs
    asyncio.run(main())
    assert shared.jobs - jobs == 32
    assert shared.batches - batches < 32  # shared: fewer batches than installs
    for data in [*small, *uploaded]:
        path = fs.local_path(sha256(data))
        assert path is not None
        assert path.read_bytes() == data
        assert not path.stat().st_mode & stat.S_IWUSR  # read-only, like every blob
    assert list(fs.layout.tmp.iterdir()) == []
    assert list(fs.layout.uploads.iterdir()) == []


def test_a_file_whose_fsync_fails_is_not_renamed(tmp_path: Path) -> None:
    """fsync of a pipe fails (EINVAL): that job is never installed, the others are."""
    read_end, write_end = os.pipe()
    calls: list[str] = []

    def unsyncable() -> syncer.Staged:
        def install() -> Path:
            calls.append("install")
            return tmp_path

        def cleanup(renamed: bool) -> None:
            calls.append(f"cleanup renamed={renamed}")

        return syncer.Staged(read_end, install, cleanup)

    good = _renamer(tmp_path / "t", tmp_path / "f", b"ok")
    try:
        outcomes = run_batch([unsyncable, good])
    finally:
        os.close(read_end)
        os.close(write_end)
    assert isinstance(outcomes[0], OSError)
    assert outcomes[1] is None
    assert calls == ["cleanup renamed=False"]
    assert (tmp_path / "f").read_bytes() == b"ok"
