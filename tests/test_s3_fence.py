"""The fencing marker on S3 (moorage.cluster.s3fence) against a real SeaweedFS: of two repairs
writing it at once exactly one wins, an epoch never goes back, and the write path's check
answers from a fresh read only."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from moorage.cluster.fence import (
    Fenced,
    check_fence,
    fence_grace,
    fence_watch,
    put_fence,
    read_fence,
)
from moorage.cluster.replica_config import new_replica_config
from moorage.cluster.s3fence import FenceConflict, S3FenceWatch, read_s3_fence, write_s3_fence
from moorage.config import DataDir, ReplicaConfig
from moorage.meta.records import FenceRecord
from moorage.storage.control import S3Control
from moorage.storage.s3location import parse


def _config(tmp_path: Path, s3_url: str) -> ReplicaConfig:
    config = new_replica_config(DataDir(tmp_path / "d"), storage=s3_url, cluster_id="c1")
    assert config.storage == parse(s3_url).url()
    assert config.epoch == 1
    return config


def test_repairs_racing_for_the_marker_one_wins(s3_url: str) -> None:
    async def race(controls: list[S3Control], epoch: int) -> list[str]:
        outcomes = await asyncio.gather(
            *(write_s3_fence(c, "c1", epoch, f"r{i}") for i, c in enumerate(controls)),
            return_exceptions=True,
        )
        lost = [o for o in outcomes if o is not None]
        assert all(isinstance(o, FenceConflict) for o in lost), lost
        return [f"r{i}" for i, o in enumerate(outcomes) if o is None]

    async def run() -> list[tuple[int, list[str], FenceRecord | None]]:
        controls = [S3Control(parse(s3_url)) for _ in range(3)]  # three repairs
        rounds = []
        try:
            for epoch in range(2, 8):  # the first creates the marker, later ones replace it
                won = await race(controls, epoch)
                rounds.append((epoch, won, await read_s3_fence(controls[0])))
        finally:
            for c in controls:
                await c.aclose()
        return rounds

    for epoch, won, marker in asyncio.run(run()):
        assert len(won) == 1
        assert marker is not None
        assert (marker.cluster_id, marker.epoch, marker.by_replica) == ("c1", epoch, won[0])


def test_a_marker_never_goes_back_and_another_clusters_is_replaced(s3_url: str) -> None:
    async def run() -> FenceRecord | None:
        control = S3Control(parse(s3_url))
        try:
            await write_s3_fence(control, "old-cluster", 9, "x")
            await write_s3_fence(control, "c1", 5, "r1")  # another cluster's: replaced
            for epoch in (5, 4):
                with pytest.raises(FenceConflict, match="already moved cluster c1 to epoch 5"):
                    await write_s3_fence(control, "c1", epoch, "r2")
            return await read_s3_fence(control)
        finally:
            await control.aclose()

    marker = asyncio.run(run())
    assert marker is not None
    assert (marker.cluster_id, marker.epoch, marker.by_replica) == ("c1", 5, "r1")
    assert read_fence(s3_url) == marker  # the synchronous read the supervisor uses


def test_a_replica_of_an_ended_epoch_does_not_start(tmp_path: Path, s3_url: str) -> None:
    config = _config(tmp_path, s3_url)
    check_fence(config)  # no marker
    asyncio.run(put_fence(s3_url, "c1", 2, "r9"))
    with pytest.raises(Fenced, match="moved cluster c1 to epoch 2"):
        check_fence(config)


def test_write_path_answers_only_from_a_fresh_read(
    tmp_path: Path, s3_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOORAGE_FENCE_GRACE", "0")  # on S3 never below 1 s
    assert fence_grace(s3_url) == 1.0
    monkeypatch.delenv("MOORAGE_FENCE_GRACE")
    assert fence_grace(s3_url) == 5.0
    config = _config(tmp_path, s3_url)
    watch = fence_watch(config)
    assert isinstance(watch, S3FenceWatch)

    async def run() -> None:
        try:
            with pytest.raises(OSError, match="was not read yet"):
                watch.check()
            assert await watch.refresh() is None
            assert watch.check() is None
            assert watch._read_at is not None
            watch._read_at -= watch.grace  # the store stopped answering a grace period ago
            with pytest.raises(OSError, match="could not be read for"):
                watch.check()
            await put_fence(s3_url, "c1", 2, "r9")
            verdict = await watch.refresh()
            assert verdict is not None
            assert "is fenced" in verdict
            await watch.refresh()
            assert watch.check() == verdict  # once fenced, always fenced
        finally:
            await watch.control.aclose()

    asyncio.run(run())


def test_the_watch_job_sees_a_new_marker(
    tmp_path: Path, s3_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOORAGE_FENCE_GRACE", "1")
    watch = fence_watch(_config(tmp_path, s3_url))
    assert isinstance(watch, S3FenceWatch)

    async def run() -> str | None:
        job = asyncio.create_task(watch.run())
        try:
            for _ in range(100):
                if watch._read_at is not None:
                    break
                await asyncio.sleep(0.05)
            assert watch.check() is None
            await put_fence(s3_url, "c1", 2, "r9")
            await asyncio.wait_for(job, 10)  # the job ends once the replica is fenced
        finally:
            job.cancel()
        return watch.check()

    verdict = asyncio.run(run())
    assert verdict is not None
    assert "Run 'moorage destroy" in verdict
