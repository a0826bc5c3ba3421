"""Quorum loss: pulls continue read-only; emergency repair brings writes back without losing
what was pushed; the journal restores acknowledged pushes the survivor never learned of;
stale replicas are fenced."""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cluster import Cluster, moorage, pull_image, push_image, sha256


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    c.shutdown()


def test_quorum_lost_read_only_then_emergency_repair(cluster: Cluster) -> None:
    r0 = cluster.install()
    r1 = cluster.join()
    r2 = cluster.join()
    images = {
        f"rec/app{i}": push_image(cluster.nodes[i % 3], f"rec/app{i}", "v1", f"s{i}")
        for i in range(6)
    }
    for dead in (r0, r1):
        dead.signal(signal.SIGKILL)

    doc = cluster.wait_status("quorum-lost", [r2], timeout=60)
    assert doc["quorum"]["healthy"] == 0
    assert f"moorage emergency-repair --data-dir {r2.data_dir}" in doc["action"]

    # Read-only: pulls, tag lists, catalog and auth from the local copy; pushes refused clearly.
    deadline = 30.0
    import time

    start = time.monotonic()
    while httpx.get(f"{r2.url}/_ping").json().get("read_only") is not True:
        assert time.monotonic() - start < deadline
        time.sleep(0.3)
    ping = httpx.get(f"{r2.url}/_ping")
    assert ping.status_code == 200
    assert ping.json()["read_only"] is True
    assert httpx.get(f"{r2.url}/_ping?writable=1").status_code == 503
    for repo, body in images.items():
        assert pull_image(r2, repo, "v1") == body
        with r2.client() as c:
            assert c.get(f"/v2/{repo}/manifests/{sha256(body)}").status_code == 200
            assert c.get(f"/v2/{repo}/tags/list").json()["tags"] == ["v1"]
    with r2.client() as c:
        assert set(images) <= set(c.get("/v2/_catalog").json()["repositories"])
        refused = c.post("/v2/rec/new/blobs/uploads/")
        assert refused.status_code == 503
        assert refused.json()["errors"][0]["code"] == "UNAVAILABLE"
        assert "quorum" in refused.json()["errors"][0]["message"]
        assert "retry-after" in refused.headers
        assert c.delete(f"/v2/rec/app0/manifests/{sha256(images['rec/app0'])}").status_code == 503
    with httpx.Client(base_url=r2.url) as anon:
        assert anon.get("/v2/").status_code == 401

    # Without --yes and without a terminal, nothing happens.
    out = moorage("emergency-repair", "--data-dir", str(r2.data_dir), check=False)
    assert out.returncode == 1
    assert "--yes" in out.stderr
    assert "Emergency repair plan" in out.stdout

    out = moorage(
        "emergency-repair", "--data-dir", str(r2.data_dir), "--existing", cluster.urls(),
        "--candidate-dir", str(r0.data_dir), "--yes", "--json",
    )  # fmt: skip
    result = json.loads(out.stdout)
    assert result["chosen"]["replica_id"] == r2.replica_id
    assert result["result"]["epoch"] == 2
    assert sorted(result["result"]["removed_replicas"]) == sorted([r0.replica_id, r1.replica_id])

    doc = cluster.status([r2])
    assert doc["scenario"] == "healthy"
    assert doc["epoch"] == 2
    assert doc["quorum"] == {"members": 1, "needed": 1, "healthy": 1}
    for repo, body in images.items():
        assert pull_image(r2, repo, "v1") == body
    push_image(r2, "rec/after", "v1", "after")

    # A replica left out of the repair is fenced: it refuses to start.
    out = moorage("start", "--data-dir", str(r0.data_dir), check=False)
    assert out.returncode == 1
    assert "fenced" in out.stderr
    assert "destroy" in out.stderr

    # New replicas join the repaired cluster and serve what was there before.
    r3 = cluster.join(via=r2)
    assert cluster.status([r2, r3])["scenario"] == "healthy"
    for repo, body in images.items():
        assert pull_image(r3, repo, "v1") == body


def test_journal_replays_pushes_the_survivor_missed(cluster: Cluster) -> None:
    """A survivor whose store lacks acknowledged pushes (as after etcd's force-new-cluster
    drops an uncommitted tail) gets them back from the journal in blob storage."""
    r0 = cluster.install()
    before = push_image(r0, "journal/app", "before", "before")
    moorage("stop", "--data-dir", str(r0.data_dir))
    stale = cluster.root / "etcd-before"
    shutil.copytree(r0.data_dir / "etcd", stale)
    moorage("start", "--data-dir", str(r0.data_dir))
    missed = push_image(r0, "journal/app", "missed", "missed")
    missed_other = push_image(r0, "journal/other", "v1", "other")
    with r0.client() as c:
        assert c.delete("/v2/journal/app/manifests/before").status_code == 202
    moorage("stop", "--data-dir", str(r0.data_dir))
    shutil.rmtree(r0.data_dir / "etcd")
    shutil.copytree(stale, r0.data_dir / "etcd")

    plan = moorage("emergency-repair", "--data-dir", str(r0.data_dir), "--dry-run")
    assert "3 change(s) newer than the survivor will be replayed" in plan.stdout
    assert "push journal/app:missed" in plan.stdout
    assert "untag journal/app:before" in plan.stdout

    no_replay = moorage(
        "emergency-repair", "--data-dir", str(r0.data_dir), "--dry-run", "--no-replay", "--json"
    )
    assert json.loads(no_replay.stdout)["journal_replay"] is None

    out = json.loads(
        moorage("emergency-repair", "--data-dir", str(r0.data_dir), "--yes", "--json").stdout
    )
    assert out["result"]["journal_replayed"] == {"applied": 3, "unrecoverable": []}
    assert pull_image(r0, "journal/app", "missed") == missed
    assert pull_image(r0, "journal/other", "v1") == missed_other
    with r0.client() as c:
        assert c.get("/v2/journal/app/tags/list").json()["tags"] == ["missed"]
        assert c.get(f"/v2/journal/app/manifests/{sha256(before)}").status_code == 200


def test_emergency_repair_refuses_while_quorum_holds(cluster: Cluster) -> None:
    r0 = cluster.install()
    cluster.join()
    cluster.join()
    out = moorage("emergency-repair", "--data-dir", str(r0.data_dir), "--yes", check=False)
    assert out.returncode == 1
    assert "still has a leader" in out.stderr
    assert cluster.status()["scenario"] == "healthy"
