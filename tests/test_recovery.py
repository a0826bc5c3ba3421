"""Quorum loss: pulls continue read-only; emergency repair brings writes back without losing
what was pushed; the journal restores acknowledged pushes the survivor never learned of;
stale replicas are fenced."""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cluster import Cluster, Node, cluster_of, moorage, pull_image, push_image, sha256


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One three-replica cluster for the tests below that start from a healthy three, built
    once (a build is ~15 s of CPU). They run in file order: those that leave it healthy with
    its three replicas first (each checks that it does), the one that loses the quorum last."""
    with cluster_of(3, tmp_path_factory.mktemp("three")) as c:
        yield c


def healthy_three(c: Cluster) -> list[Node]:
    """The shared cluster's replicas, after checking it is as a fresh build leaves it."""
    doc = c.wait_status("healthy")
    assert doc["quorum"] == {"members": 3, "needed": 2, "healthy": 3}, doc
    assert doc["epoch"] == 1, doc
    assert len(c.nodes) == 3
    return c.nodes


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


def test_backup_and_restore(cluster: Cluster) -> None:
    r0 = cluster.install()
    r1 = cluster.join()
    before = {
        f"bk/app{i}": push_image(cluster.nodes[i % 2], f"bk/app{i}", "v1", f"b{i}")
        for i in range(4)
    }
    b1 = cluster.root / "b1.tar"
    out = json.loads(
        moorage(
            "backup", "--existing", r0.url, "--out", str(b1), "--include-blobs", "--json"
        ).stdout
    )
    assert out["counts"]["repositories"] == 4
    assert out["counts"]["manifests"] == 4
    info = json.loads(moorage("backup", "inspect", str(b1), "--json").stdout)
    assert info["cluster_id"] == out["cluster_id"]
    assert info["revision"] == out["revision"]
    assert info["counts"]["tags"] == 4
    assert info["counts"]["users"] == 1
    assert "OK" in moorage("backup", "verify", str(b1)).stdout

    after = push_image(r1, "bk/after", "v1", "after")
    b2 = cluster.root / "b2.tar"
    inc = json.loads(
        moorage(
            "backup",
            "--existing",
            r1.url,
            "--out",
            str(b2),
            "--include-blobs",
            "--since",
            str(b1),
            "--json",
        ).stdout
    )
    assert inc["base"] == "b1.tar"
    # Only the new image: its config and layer, and its manifest (counted apart).
    assert inc["blobs_in_archive"] == 2
    assert inc["manifests_in_archive"] == 1
    assert json.loads(moorage("backup", "verify", str(b2), "--json").stdout)["ok"] is True

    # A corrupt archive is refused, before anything is touched.
    bad = cluster.root / "bad.tar"
    data = bytearray(b1.read_bytes())
    blob_at = data.find(b"layer of b0")
    data[blob_at] ^= 0xFF
    bad.write_bytes(bytes(data))
    verdict = moorage("backup", "verify", str(bad), check=False)
    assert verdict.returncode == 1
    assert "does not match its digest" in verdict.stderr or "checksum mismatch" in verdict.stderr
    target = cluster.root / "restored"
    refused = moorage(
        "restore", "--yes", "--in", str(bad), "--data-dir", str(target),
        "--http-addr", "127.0.0.1:1", "--storage", str(cluster.root / "nowhere"), check=False,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "corrupt" in refused.stderr
    assert not target.exists()

    # Everything lost (data directories gone); blob storage too, for the first restore.
    for node in list(cluster.nodes):
        moorage("destroy", "--yes", "--data-dir", str(node.data_dir))
    fresh = Node(cluster.root, "fresh")
    doc = json.loads(
        moorage(
            "restore", "--yes", "--in", str(b1), *fresh.flags(),
            "--storage", str(cluster.root / "new-blobs"), "--no-replay-journal", "--json",
        ).stdout
    )  # fmt: skip
    cluster.nodes.append(fresh)
    assert doc["journal_replayed"]["requested"] is False
    assert doc["cluster_id"] != out["cluster_id"]
    assert doc["missing_blobs"] == []
    assert doc["blobs_copied"] == 12
    for repo, body in before.items():
        assert pull_image(fresh, repo, "v1") == body
    with fresh.client() as c:
        # Exactly the push made after the backup is missing.
        assert c.get("/v2/bk/after/manifests/v1").status_code == 404
        assert "bk/after" not in c.get("/v2/_catalog").json()["repositories"]
    status = cluster.status([fresh])
    assert status["scenario"] == "healthy"
    assert status["cluster_id"] == doc["cluster_id"]
    moorage("stop", "--data-dir", str(fresh.data_dir))

    # Blob storage survived: by default (no flag) the journal brings back the push made
    # after the backup, and the result says how many changes and from which revision.
    again = Node(cluster.root, "again")
    out_again = moorage(
        "restore",
        "--yes",
        "--in",
        str(b1),
        *again.flags(),
        "--storage",
        str(cluster.storage),
        "--json",
    )
    doc = json.loads(out_again.stdout)
    cluster.nodes.append(again)
    assert doc["journal_replayed"]["requested"] is True
    assert doc["journal_replayed"]["applied"] >= 1
    assert doc["journal_replayed"]["since_revision"] == doc["backup_revision"]
    assert pull_image(again, "bk/after", "v1") == after
    for repo, body in before.items():
        assert pull_image(again, repo, "v1") == body


def test_encrypted_backup(cluster: Cluster) -> None:
    r0 = cluster.install()
    body = push_image(r0, "enc/app", "v1", "secret-layer")
    secret = cluster.root / "pass"
    secret.write_text("correct horse battery staple\n")
    wrong = cluster.root / "wrong"
    wrong.write_text("nope")
    archive = cluster.root / "enc.tar"
    out = json.loads(
        moorage(
            "backup", "--existing", r0.url, "--out", str(archive), "--include-blobs",
            "--passphrase-file", str(secret), "--json",
        ).stdout
    )  # fmt: skip
    assert out["encrypted"] is True
    raw = archive.read_bytes()
    assert b"metadata.json" not in raw
    assert b"layer of secret-layer" not in raw
    refused = moorage("backup", "inspect", str(archive), check=False)
    assert refused.returncode == 1
    assert "encrypted" in refused.stderr
    bad = moorage("backup", "verify", str(archive), "--passphrase-file", str(wrong), check=False)
    assert bad.returncode == 1
    assert "wrong passphrase" in bad.stderr
    info = json.loads(
        moorage(
            "backup", "inspect", str(archive), "--passphrase-file", str(secret), "--json"
        ).stdout
    )
    assert info["encrypted"] is True
    assert info["counts"]["manifests"] == 1
    assert (
        "OK" in moorage("backup", "verify", str(archive), "--passphrase-file", str(secret)).stdout
    )
    # Truncation is detected too.
    cut = cluster.root / "cut.tar"
    cut.write_bytes(raw[: len(raw) - 100])
    assert (
        moorage(
            "backup", "verify", str(cut), "--passphrase-file", str(secret), check=False
        ).returncode
        == 1
    )

    moorage("destroy", "--yes", "--data-dir", str(r0.data_dir))
    fresh = Node(cluster.root, "fresh")
    moorage(
        "restore", "--yes", "--in", str(archive), *fresh.flags(),
        "--storage", str(cluster.root / "s2"), "--passphrase-file", str(secret),
    )  # fmt: skip
    cluster.nodes.append(fresh)
    assert pull_image(fresh, "enc/app", "v1") == body


# -- the shared three-replica cluster, in this order -------------------------------------


def test_emergency_repair_refuses_while_quorum_holds(three: Cluster) -> None:
    cluster = three
    r0, _, _ = healthy_three(cluster)
    out = moorage("emergency-repair", "--data-dir", str(r0.data_dir), "--yes", check=False)
    assert out.returncode == 1
    assert "still has a leader" in out.stderr
    assert cluster.status()["scenario"] == "healthy"


def test_repair_rebuilds_a_replica_in_place(three: Cluster) -> None:
    cluster = three
    _, r1, _ = healthy_three(cluster)
    body = push_image(r1, "repair/app", "v1", "repair")
    moorage("stop", "--data-dir", str(r1.data_dir))
    old_key = (r1.data_dir / "tls" / "replica.key").read_bytes()
    old_cert = (r1.data_dir / "tls" / "replica.crt").read_bytes()
    # Damage its local store: etcd's data is gone (the replica's config survives).
    shutil.rmtree(r1.data_dir / "etcd" / "member")
    out = json.loads(
        moorage(
            "repair",
            "--yes",
            "--existing",
            cluster.urls(),
            "--data-dir",
            str(r1.data_dir),
            "--json",
        ).stdout
    )
    assert out["replica_id"] == r1.replica_id
    assert out["url"] == r1.url
    # Rejoined with a fresh key made on its host and a certificate the cluster signed for it.
    assert (r1.data_dir / "tls" / "replica.key").read_bytes() != old_key
    assert (r1.data_dir / "tls" / "replica.crt").read_bytes() != old_cert
    doc = cluster.wait_status("healthy")
    assert doc["quorum"] == {"members": 3, "needed": 2, "healthy": 3}
    assert r1.replica_id in {r["id"] for r in doc["replicas"]}
    assert pull_image(r1, "repair/app", "v1") == body
    push_image(r1, "repair/after", "v1", "after")


def test_quorum_lost_read_only_then_emergency_repair(three: Cluster) -> None:
    """The last test of the shared cluster: it loses two of its replicas for good."""
    cluster = three
    r0, r1, r2 = healthy_three(cluster)
    images = {
        f"rec/app{i}": push_image(cluster.nodes[i % 3], f"rec/app{i}", "v1", f"s{i}")
        for i in range(6)
    }
    for dead in (r0, r1):
        dead.signal(signal.SIGKILL)

    repair = f"moorage emergency-repair --data-dir {r2.data_dir}"
    deadline = time.monotonic() + 60
    while True:
        doc = cluster.wait_status("quorum-lost", [r2], timeout=60)
        # Right after the kill the survivor may still name the dead leader: 1 of 3 connected.
        assert doc["quorum"]["healthy"] < doc["quorum"]["needed"]
        # On a loaded machine the survivor's own member can miss a status call: status asks
        # it once more when its replica answered the ping (cluster/facts.gather), but if it
        # misses that too no member answered, and the advice is to start the replicas (then,
        # if none can, emergency repair). A later call names the survivor.
        if repair in doc["action"] or time.monotonic() > deadline:
            break
        assert "moorage start --data-dir" in doc["action"], doc["action"]
        time.sleep(0.5)
    assert repair in doc["action"]

    # Read-only: pulls, tag lists, catalog and auth from the local copy; pushes refused clearly.
    deadline = 30.0
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
    # No member can join a cluster without quorum; the refusal says why and what to run.
    late = cluster.join_raw(Node(cluster.root, "late"), via=r2)
    assert late.returncode == 1
    assert "lost quorum" in late.stderr, late.stderr
    assert "emergency-repair" in late.stderr
    assert "moorage start --data-dir" in late.stderr  # the replicas down may just be stopped

    # Without --yes and without a terminal, nothing happens.
    out = moorage("emergency-repair", "--data-dir", str(r2.data_dir), check=False)
    assert out.returncode == 1
    assert "--yes" in out.stderr
    assert "Emergency repair plan" in out.stdout

    tls_before = {f.name: f.read_bytes() for f in (r2.data_dir / "tls").iterdir()}
    out = moorage(
        "emergency-repair", "--data-dir", str(r2.data_dir), "--existing", cluster.urls(),
        "--candidate-dir", str(r0.data_dir), "--yes", "--json",
    )  # fmt: skip
    # The survivor keeps its certificates (its etcd restarted with the same TLS flags).
    assert {f.name: f.read_bytes() for f in (r2.data_dir / "tls").iterdir()} == tls_before
    result = json.loads(out.stdout)
    assert result["chosen"]["replica_id"] == r2.replica_id
    assert result["result"]["epoch"] == 2
    assert sorted(result["result"]["removed_replicas"]) == sorted([r0.replica_id, r1.replica_id])

    doc = cluster.status([r2])
    assert doc["scenario"] == "healthy"
    assert doc["epoch"] == 2
    assert moorage("status", "--existing", r2.url).returncode == 0  # healthy: exit 0
    assert doc["quorum"] == {"members": 1, "needed": 1, "healthy": 1}
    assert doc["fault_tolerance"] == 0  # 1 of 1 after the repair: survives 0 failures
    assert "no fault tolerance" in doc["action"]
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
    # signed by the survivor with the CA key sealed in its etcd data: the same CA
    assert (r3.data_dir / "tls" / "ca.crt").read_bytes() == tls_before["ca.crt"]
    for repo, body in images.items():
        assert pull_image(r3, repo, "v1") == body
