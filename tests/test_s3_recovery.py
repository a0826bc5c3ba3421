"""The destructive cases of a 3-replica cluster on S3, on a SeaweedFS of this module's own
(stopped and started again here), in order on one cluster: the object store's outage, an
emergency repair whose survivor missed acknowledged pushes (the journal replayed from S3),
then backup --include-blobs and restore on S3 (to a fresh prefix, and to the same one with
the journal replayed). The journal is trimmed every second (after each backup): not one
acknowledged push may be lost."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.seaweed import SeaweedFS

from tests.cluster import Cluster, Node, cluster_of, moorage, pull_image, push_image, sha256

PREFIX = "reg"

#: Every acknowledged push of the module, still tagged: (repo, tag) -> manifest.
PUSHED: dict[tuple[str, str], bytes] = {}
#: Every manifest pushed (an untag keeps the manifest).
MANIFESTS: set[bytes] = set()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A SeaweedFS of this module's own: the outage test stops it."""
    s = SeaweedFS(tmp_path_factory.mktemp("weed"))
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def cluster(store: SeaweedFS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # One API worker per replica (the default, pinned): the outage test reads a manifest
    # from the cache of the worker that read it before.
    env = {**store.env(), "MOORAGE_WORKERS": "1", "MOORAGE_JOURNAL_TRIM_INTERVAL": "1"}
    with cluster_of(
        3, tmp_path_factory.mktemp("s3rec"), env=env, s3=store.storage_url(PREFIX)
    ) as c:
        yield c


def push(node: Node, repo: str, tag: str) -> bytes:
    body = push_image(node, repo, tag, f"{repo}:{tag}")
    PUSHED[(repo, tag)] = body
    MANIFESTS.add(body)
    return body


def all_pull(node: Node) -> None:
    """Every acknowledged push pulls from `node`, byte for byte."""
    for (repo, tag), body in PUSHED.items():
        assert pull_image(node, repo, tag) == body, (repo, tag)


def wait_trimmed(store: SeaweedFS, before: list[str]) -> None:
    """Until every journal object listed in `before` (all older than the last backup) is
    trimmed."""
    deadline = time.monotonic() + 120
    while left := set(before) & set(store.keys(f"{PREFIX}/journal/")):
        assert time.monotonic() < deadline, f"not trimmed: {sorted(left)[:5]}"
        time.sleep(0.5)


def test_store_outage_then_back(cluster: Cluster, store: SeaweedFS) -> None:
    """SeaweedFS stops (SIGKILL) under a running cluster: pushes answer a clear 503 in the OCI
    envelope, never a bare 500. What keeps working comes from etcd and the replicas' caches:
    tag lists, the catalog, and a manifest a replica read before (its in-memory cache of
    manifest bytes); a manifest not read before and every blob GET answer 503, since their
    bytes live only in the store. Started again: nothing acknowledged is lost, and pushes
    work again without restarting a replica."""
    a, b, c = cluster.nodes
    seen = push(a, "out/seen", "v1")
    unseen = push(a, "out/unseen", "v1")
    pull_image(b, "out/seen", "v1")  # b has now read (and cached) this manifest's bytes
    store.stop()
    try:
        body = b"pushed during the outage"
        with b.client(timeout=120) as cb:
            resp = cb.post(f"/v2/out/during/blobs/uploads/?digest={sha256(body)}", content=body)
            assert resp.status_code == 503, resp.text
            error = resp.json()["errors"][0]
            assert error["code"] == "UNAVAILABLE"
            assert "S3 blob storage unreachable" in error["message"], error
            # Metadata is in etcd: tag lists and the catalog answer.
            assert cb.get("/v2/out/seen/tags/list").json()["tags"] == ["v1"]
            assert {"out/seen", "out/unseen"} <= set(cb.get("/v2/_catalog").json()["repositories"])
            # A manifest this replica read before: served from its cache, by tag and digest.
            # (Each API worker has its own cache; these replicas run one worker.)
            for ref in ("v1", sha256(seen)):
                got = cb.get(f"/v2/out/seen/manifests/{ref}", headers={"Accept": "*/*"})
                assert got.status_code == 200, got.text
                assert got.content == seen
            # A manifest never read here, and any blob: their bytes are in the store only.
            missing = cb.get(f"/v2/out/unseen/manifests/{sha256(unseen)}")
            assert missing.status_code == 503, missing.text
            assert missing.json()["errors"][0]["code"] == "UNAVAILABLE"
            config = json.loads(seen)["config"]["digest"]
            blob = cb.get(f"/v2/out/seen/blobs/{config}")
            assert blob.status_code == 503, blob.text
            assert blob.json()["errors"][0]["code"] == "UNAVAILABLE"
        # Once every replica has seen the store fail, status says to fix blob storage, and
        # never to start, remove or repair a replica (etcd is healthy; none is broken). The
        # replicas first report the failed storage probe, then (past the fence grace) refuse
        # the admin API as they cannot read the fence marker: the advice is the same.
        deadline = time.monotonic() + 60
        while True:
            doc = cluster.status()
            for word in ("emergency-repair", "restore"):  # not even while they notice
                assert f"moorage {word} " not in doc["action"], doc
            if "fix blob storage first" in doc["action"] + str(doc["commands"]):
                break
            assert time.monotonic() < deadline, doc
            time.sleep(1)
        for word in ("remove", "start", "repair", "join"):
            assert f"moorage {word} " not in doc["action"], doc
        [advice] = doc["commands"]
        assert advice["command"].startswith("moorage status --existing "), advice
        assert doc["scenario"] in ("replicas-unhealthy", "unreachable"), doc
    finally:
        store.start()
    # Back: the same replicas (no restart) take pushes again once they reach the store,
    # every one of them (b answered requests all through the outage).
    deadline = time.monotonic() + 120
    for node in cluster.nodes:
        while True:
            with node.client() as cn:
                url = f"/v2/out/after/blobs/uploads/?digest={sha256(body)}"
                resp = cn.post(url, content=body)
            if resp.status_code == 201:
                break
            assert resp.status_code == 503, resp.text
            assert time.monotonic() < deadline, resp.text
            time.sleep(0.5)
    push(c, "out/after", "v1")
    for node in cluster.nodes:
        all_pull(node)


def test_emergency_repair_replays_the_journal_from_s3(
    cluster: Cluster, store: SeaweedFS, tmp_path: Path
) -> None:
    """Lose the majority while the survivor's etcd lacks acknowledged pushes (it was stopped
    while they were made): the repair replays them from the journal objects in S3, after a
    backup let the journal be trimmed."""
    r0, r1, r2 = cluster.nodes
    push(r1, "rep/before", "v1")
    before = store.keys(f"{PREFIX}/journal/")
    moorage("backup", "--existing", r0.url, "--out", str(tmp_path / "b.tar"), env=cluster.env)
    wait_trimmed(store, before)
    moorage("stop", "--data-dir", str(r2.data_dir), env=cluster.env)
    missed = [push(r0, "rep/missed", "v1"), push(r1, "rep/missed", "v2")]
    with r0.client() as c:  # an untag the survivor missed too
        assert c.delete("/v2/out/unseen/manifests/v1").status_code == 202
    del PUSHED[("out/unseen", "v1")]
    journal = store.keys(f"{PREFIX}/journal/")
    assert journal, "no journal object in the bucket"
    cluster.kill_and_wait(r0, r1)  # the majority's processes, by pid

    out = json.loads(
        moorage(
            "emergency-repair", "--data-dir", str(r2.data_dir), "--yes", "--json",
            env=cluster.env,
        ).stdout
    )  # fmt: skip
    assert out["chosen"]["replica_id"] == r2.replica_id
    assert out["result"]["epoch"] == 2
    replayed = out["result"]["journal_replayed"]
    assert replayed["unrecoverable"] == []
    assert replayed["applied"] >= len(missed) + 1, replayed
    assert f"{PREFIX}/fence.json" in store.keys(f"{PREFIX}/fence")
    doc = cluster.status([r2])
    assert doc["scenario"] == "healthy", doc
    assert doc["epoch"] == 2
    all_pull(r2)
    with r2.client() as c:
        assert c.get("/v2/out/unseen/tags/list").json()["tags"] == []
        assert c.get("/v2/rep/missed/tags/list").json()["tags"] == ["v1", "v2"]
    push(r2, "rep/after", "v1")
    # A replica left out of the repair is fenced: it refuses to start.
    refused = moorage("start", "--data-dir", str(r0.data_dir), check=False, env=cluster.env)
    assert refused.returncode == 1
    assert "fenced" in refused.stderr
    cluster.nodes.remove(r0)
    cluster.nodes.remove(r1)
    cluster.retired += [r0, r1]


def test_backup_and_restore_on_s3(cluster: Cluster, store: SeaweedFS, tmp_path: Path) -> None:
    """backup --include-blobs; restore into a fresh prefix (blobs copied from the archive),
    then into the same prefix (the journal replays what came after the backup)."""
    (r2,) = cluster.nodes
    archive = tmp_path / "b.tar"
    made = json.loads(
        moorage(
            "backup", "--existing", r2.url, "--out", str(archive), "--include-blobs", "--json",
            env=cluster.env,
        ).stdout
    )  # fmt: skip
    assert made["counts"]["manifests"] == len(MANIFESTS)
    assert json.loads(moorage("backup", "verify", str(archive), "--json").stdout)["ok"] is True
    in_backup = dict(PUSHED)
    before = store.keys(f"{PREFIX}/journal/")
    push(r2, "bk/after", "v1")
    wait_trimmed(store, before)
    moorage("destroy", "--yes", "--data-dir", str(r2.data_dir), env=cluster.env)
    cluster.nodes.remove(r2)
    cluster.retired.append(r2)

    fresh = Node(cluster.root, "fresh")
    fresh_url = store.storage_url(f"{PREFIX}-fresh")
    doc = json.loads(
        moorage(
            "restore", "--yes", "--in", str(archive), *fresh.flags(), "--storage", fresh_url,
            "--json", env=cluster.env,
        ).stdout
    )  # fmt: skip
    cluster.nodes.append(fresh)
    assert doc["missing_blobs"] == []
    assert doc["blobs_copied"] > 0
    assert store.keys(f"{PREFIX}-fresh/blobs/")
    for (repo, tag), body in in_backup.items():
        assert pull_image(fresh, repo, tag) == body
    with fresh.client() as c:  # made after the backup, journaled in the other prefix
        assert c.get("/v2/bk/after/manifests/v1").status_code == 404
    cluster.stop(fresh)

    again = Node(cluster.root, "again")
    doc = json.loads(
        moorage(
            "restore", "--yes", "--in", str(archive), *again.flags(),
            "--storage", store.storage_url(PREFIX), "--json", env=cluster.env,
        ).stdout
    )  # fmt: skip
    cluster.nodes.append(again)
    assert doc["missing_blobs"] == []
    assert doc["journal_replayed"]["requested"] is True
    assert doc["journal_replayed"]["applied"] >= 1, doc
    assert doc["journal_replayed"]["unrecoverable"] == [], doc
    all_pull(again)
    assert cluster.status([again])["scenario"] == "healthy"
    layer = hashlib.sha256(b"after restore").hexdigest()
    with again.client() as c:
        resp = c.post(f"/v2/bk/new/blobs/uploads/?digest=sha256:{layer}", content=b"after restore")
        assert resp.status_code == 201, resp.text
