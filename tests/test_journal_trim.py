"""Journal trimming (moorage.storage.journal_trim, moorage.cluster.journal_trim): only files
every entry of which is this cluster's and at or below the floor go, on the filesystem
(closed segments only) and on S3 (decided from the object names); then, on a 3-replica
filesystem cluster that trimmed after a backup, emergency repair and restore still bring
back every acknowledged push."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from harness.replica import Replica
from harness.seaweed import SeaweedFS

from moorage.config import DataDir
from moorage.meta.memory import MemoryMetaStore
from moorage.recovery.journal_replay import apply, plan_replay
from moorage.storage.control import S3Control
from moorage.storage.journal import Journal, read_entries
from moorage.storage.journal_trim import Floor, journal_size, trim
from moorage.storage.s3journal import S3Journal, journal_entries, span_of
from moorage.storage.s3location import parse
from tests.cluster import Cluster, Node, moorage, pull_image, push_image

FLOOR = Floor("c1", 2, 5)


def _untag(r: int) -> dict[str, Any]:
    return {"r": r, "op": "untag", "repo": "app/one", "tag": f"t{r}"}


def test_the_floor_covers_only_its_cluster_at_or_below_it() -> None:
    assert FLOOR.covers([{"c": "c1", "e": 2, "r": 5}, {"c": "c1", "e": 1, "r": 900}])
    assert FLOOR.covers([])  # a file with no readable entry serves no replay
    assert not FLOOR.covers([{"c": "c1", "e": 2, "r": 6}])
    assert not FLOOR.covers([{"c": "c1", "e": 3, "r": 1}])
    assert not FLOOR.covers([{"c": "c2", "e": 1, "r": 1}])  # another cluster's: kept
    assert not FLOOR.covers([{"c": "c1", "e": "2", "r": 1}])
    assert not FLOOR.covers([{"c": "c1", "e": 2}])


def _replay_says_what_was_trimmed(spec: str) -> None:
    """A replay from below the floor (an older backup) says what the journal lost; one from
    the floor or above (the newest backup, any member) has nothing to say."""
    older = plan_replay(spec, "c1", (2, 3))
    assert older.trimmed is not None
    assert "trimmed up to epoch 2 revision 5" in older.trimmed
    assert older.trimmed in asyncio.run(apply(MemoryMetaStore(), spec, older)).unrecoverable
    assert plan_replay(spec, "c1", (2, 5)).trimmed is None
    assert plan_replay(spec, "c2", (0, 0)).trimmed is None


def test_filesystem_trim_deletes_closed_segments_below_the_floor(tmp_path: Path) -> None:
    async def write(writer: str, cluster: str, epoch: int, revisions: list[int]) -> Path:
        journal = Journal(tmp_path, writer, epoch, cluster)
        for r in revisions:
            await journal.append(_untag(r))
        journal.close()
        return journal.path

    below = asyncio.run(write("a-1", "c1", 2, [1, 2, 5]))
    older_epoch = asyncio.run(write("b-1", "c1", 1, [40]))
    above = asyncio.run(write("c-1", "c1", 2, [4, 6]))
    other = asyncio.run(write("d-1", "c2", 1, [1]))
    spec = str(tmp_path)
    # Just written: a writer may still append to them, so nothing goes.
    recent = asyncio.run(trim(spec, FLOOR))
    assert (recent.deleted, recent.skipped_recent) == (0, 4)
    later = time.time() + 3 * 3600  # every segment closed
    result = asyncio.run(trim(spec, FLOOR, now=later))
    assert (result.deleted, result.kept) == (2, 2), result
    assert not below.exists()
    assert not older_epoch.exists()
    assert above.exists()
    assert other.exists()
    assert sorted(e["r"] for e in read_entries(tmp_path)) == [1, 4, 6]
    assert asyncio.run(journal_size(spec)) == 2
    _replay_says_what_was_trimmed(spec)
    # bounded: at most `limit` deletions per call
    assert asyncio.run(trim(spec, Floor("c1", 9, 0), limit=0, now=later)).deleted == 0


def test_filesystem_writer_rotates_and_survives_a_trimmed_segment(tmp_path: Path) -> None:
    async def run() -> list[Path]:
        journal = Journal(tmp_path, "w-1", 1, "c1")
        await journal.append(_untag(1))
        first = journal.path
        journal._opened -= 2 * 3600  # the segment is older than segment_seconds()
        await journal.append(_untag(2))
        second = journal.path
        second.unlink()  # as a trim would, had this writer stalled past the closing age
        await journal.append(_untag(3))
        journal.close()
        return [first, second, journal.path]

    first, second, third = asyncio.run(run())
    assert first != second != third
    assert first.exists()
    assert not second.exists()
    # the batch written into the deleted file was written again into a new segment
    assert sorted(e["r"] for e in read_entries(tmp_path)) == [1, 3]


def test_s3_trim_decides_from_names_and_reads_older_objects(
    seaweed: SeaweedFS, s3_url: str
) -> None:
    loc = parse(s3_url)

    async def run() -> None:
        for cluster, epoch, revisions in (("c1", 2, [1, 2]), ("c1", 2, [3, 9]), ("c2", 1, [1])):
            journal = S3Journal(loc, f"w{revisions[0]}-1", epoch, cluster)
            try:
                for r in revisions:
                    await journal.append(_untag(r))
            finally:
                await journal.aclose()
        control = S3Control(loc)
        try:  # an object named before names carried their span: read to decide
            lines = b"".join(
                json.dumps({"c": "c1", "e": 1, **_untag(r)}).encode() + b"\n" for r in (7, 8)
            )
            assert await control.create("journal/old-1-abcd/000000000001.jsonl", lines)
        finally:
            await control.aclose()

    asyncio.run(run())
    names = seaweed.keys(loc.key("journal/"))
    spans = [span_of(n) for n in names]
    assert sum(s is None for s in spans) == 1
    assert {(s.cluster_id, s.epoch, s.revision) for s in spans if s} == {
        ("c1", 2, 1), ("c1", 2, 2), ("c1", 2, 3), ("c1", 2, 9), ("c2", 1, 1),
    }  # fmt: skip
    result = asyncio.run(trim(s3_url, FLOOR))
    assert (result.deleted, result.kept) == (4, 2), result

    async def left() -> list[tuple[str, int]]:
        return sorted([(e["c"], e["r"]) async for e in journal_entries(s3_url)])

    assert asyncio.run(left()) == [("c1", 9), ("c2", 1)]
    assert asyncio.run(journal_size(s3_url)) == 2
    _replay_says_what_was_trimmed(s3_url)


def _segments(storage: Path) -> set[str]:
    return {p.name for p in (storage / "journal").glob("*.jsonl")}


def _wait_gone(storage: Path, gone: set[str], patience: float = 120) -> None:
    deadline = time.monotonic() + patience
    while gone & _segments(storage):
        assert time.monotonic() < deadline, f"not trimmed: {sorted(gone & _segments(storage))}"
        time.sleep(0.5)


def _trimmed_metric(node: Node) -> float:
    with node.client() as c:
        text = c.get("/metrics").text
    found = [line.split()[1] for line in text.splitlines() if line.startswith(TRIMMED + " ")]
    return float(found[0]) if found else 0.0


TRIMMED = "moorage_journal_trimmed_files_total"


def test_trimmed_journal_still_recovers_every_push(tmp_path: Path) -> None:
    """Segments of 1 s, a trim round every second: after a backup the journal loses what
    came before it; emergency repair (a survivor that missed pushes) and restore into the
    same storage still bring back every acknowledged push."""
    env = {"MOORAGE_JOURNAL_SEGMENT_SECONDS": "1", "MOORAGE_JOURNAL_TRIM_INTERVAL": "1"}
    cluster = Cluster(tmp_path, env=env)
    try:
        r0 = cluster.install()
        r1 = cluster.join()
        r2 = cluster.join()
        pushed = {
            ("trim/before", f"v{i}"): push_image(r0, "trim/before", f"v{i}", f"b{i}")
            for i in range(3)
        }
        time.sleep(1.2)  # every writer's next append starts a new segment
        before = _segments(cluster.storage)
        archive = tmp_path / "b.tar"
        moorage("backup", "--existing", r0.url, "--out", str(archive), env=cluster.env)
        time.sleep(1.2)
        pushed["trim/after", "v1"] = push_image(r1, "trim/after", "v1", "after")
        _wait_gone(cluster.storage, before)  # every segment of before the backup is trimmed
        assert sum(_trimmed_metric(n) for n in (r0, r1, r2)) >= len(before)

        moorage("stop", "--data-dir", str(r2.data_dir), env=cluster.env)
        pushed["trim/missed", "v1"] = push_image(r0, "trim/missed", "v1", "missed")
        cluster.kill_and_wait(r0, r1)  # the majority's processes, by pid
        out = json.loads(
            moorage(
                "emergency-repair", "--data-dir", str(r2.data_dir), "--yes", "--json",
                env=cluster.env,
            ).stdout
        )  # fmt: skip
        replayed = out["result"]["journal_replayed"]
        assert replayed["unrecoverable"] == [], replayed
        assert replayed["applied"] >= 1, replayed
        for (repo, tag), body in pushed.items():
            assert pull_image(r2, repo, tag) == body, (repo, tag)
        cluster.nodes[:] = [r2]
        cluster.retired += [r0, r1]

        moorage("destroy", "--yes", "--data-dir", str(r2.data_dir), env=cluster.env)
        cluster.nodes.remove(r2)
        cluster.retired.append(r2)
        again = cluster.new_node()
        doc = json.loads(
            moorage(
                "restore", "--yes", "--in", str(archive), *again.flags(),
                "--storage", str(cluster.storage), "--json", env=cluster.env,
            ).stdout
        )  # fmt: skip
        cluster.nodes.append(again)
        assert doc["journal_replayed"]["unrecoverable"] == [], doc
        assert doc["journal_replayed"]["applied"] >= 2, doc  # after and missed
        for (repo, tag), body in pushed.items():
            assert pull_image(again, repo, tag) == body, (repo, tag)
    finally:
        cluster.shutdown()


@pytest.mark.parametrize(
    "body",
    [
        {"epoch": 1, "revision": "9"},
        {"epoch": 0, "revision": 9},
        {"epoch": True, "revision": 9},
        {"epoch": 1, "revision": 10**12, "cluster_id": "OURS"},
        {"epoch": 99, "revision": 2, "cluster_id": "OURS"},
        {"cluster_id": "nope", "epoch": 1, "revision": 2},
        {},
    ],
)
def test_a_bad_backup_record_is_refused(registry: Replica, body: dict[str, Any]) -> None:
    """What `moorage backup` reports when its archive is written: a record the cluster
    could not have made is refused with 400 INVALID, never recorded (it would trim)."""
    if body.get("cluster_id") == "OURS":
        body["cluster_id"] = DataDir(registry.data_dir).load().cluster_id
    with registry.client() as c:
        r = c.post("/api/v0/cluster/backup", json=body)
        assert r.status_code == 400, r.text
        assert r.json()["code"] == "INVALID"
