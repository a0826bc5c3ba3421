"""Garbage collection on S3 blob storage (issue #11): one replica whose blobs live in a real
SeaweedFS bucket, images pushed and pulled with skopeo, `moorage gc`, and the bucket listed
with botocore to see exactly which objects went.

The tests share one replica and run in order; each leaves no garbage older than its own
pushes behind, so the next knows exactly what is unreferenced."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from chaos.gc import stored_blobs
from harness.process import moorage
from harness.replica import Replica
from harness.seaweed import BUCKET, SeaweedFS

from tests.conftest import s3_replica
from tests.gc_images import delete, image, layer, pull_identical, push, write_layout
from tests.oci import MT_OCI_CONFIG, MT_OCI_LAYER, OCI_MANIFEST, sha256
from tests.test_gc_race import check_pulls, race

PREFIX = f"s3-gc-{uuid.uuid4().hex[:8]}"
MiB = 1 << 20


@pytest.fixture(scope="module")
def replica(seaweed: SeaweedFS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    """One replica on S3 for this module (the store's credentials in its environment and in
    this process's, for the driver the checks list the bucket with)."""
    data = tmp_path_factory.mktemp("s3gc") / "data"
    with s3_replica(seaweed, data, seaweed.storage_url(PREFIX)) as r:
        yield r


def gc(r: Replica, *args: str) -> dict[str, Any]:
    out = moorage("gc", "--existing", r.url, "--json", *args)
    return dict(json.loads(out.stdout))


def listed(result: dict[str, Any]) -> dict[str, set[str]]:
    """The digests a result lists, per repository ("": no repository links them)."""
    assert result["digests_truncated"] is False
    return {repo: set(u["digests"]) for repo, u in result["repositories"].items()}


def blob_keys(seaweed: SeaweedFS) -> set[str]:
    """The digest of every blob object in the bucket under the replica's prefix."""
    out = set()
    for key in seaweed.keys(f"{PREFIX}/blobs/"):
        algorithm, _, hexpart = key[len(f"{PREFIX}/blobs/") :].split("/")
        out.add(f"{algorithm}:{hexpart}")
    return out


def test_walkthrough_on_s3_deletes_exactly_the_unreferenced_objects(
    replica: Replica, seaweed: SeaweedFS, tmp_path: Path
) -> None:
    host = replica.host
    base, shared = layer("s3-base", 256 * 1024), layer("s3-shared", 128 * 1024)
    apps = [
        image(f"v{i}", [base, *([shared] if i < 2 else []), layer(f"s3-app-{i}")], f"s3-app-{i}")
        for i in range(5)
    ]
    layout = write_layout(tmp_path / "app", apps)
    for img in apps:
        push(layout, img.tag, f"{host}/s3gc/app:{img.tag}")
    with replica.client() as c:  # an image no tag reaches: --untagged takes it
        loose = _small_image(c, "s3gc/loose", "loose")
        r = c.put(
            f"/v2/s3gc/loose/manifests/{sha256(loose)}",
            content=loose,
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert r.status_code == 201, r.text
    deleted = [apps[0], apps[3]]
    for img in deleted:
        delete(f"{host}/s3gc/app:{img.tag}")
    kept = [img for img in apps if img not in deleted]

    # Only what the deleted images alone used: their own layer and config (apps[0]'s shared
    # layer is still apps[1]'s), and their manifests.
    expected = {
        "s3gc/app": {d for img in deleted for d in (sha256(img.config), img.layers[-1].digest)},
        "": {img.digest for img in deleted},
    }
    before = blob_keys(seaweed)
    assert set().union(*expected.values()) <= before
    assert stored_blobs(str(replica.storage)) == before  # the chaos check lists through the driver

    # Everything is younger than the default grace period: nothing would go.
    assert gc(replica, "--dry-run")["blobs"] == 0
    dry = gc(replica, "--dry-run", "--grace", "0s")
    assert listed(dry) == expected
    assert dry["blobs"] == 6
    assert blob_keys(seaweed) == before  # a dry run deletes nothing

    done = gc(replica, "--grace", "0s", "--untagged")
    loose_blobs = {sha256(loose), *_refs(loose)}
    assert done["manifests"] == 1
    assert listed(done) == {
        **expected,
        "": expected[""] | {sha256(loose)},
        "s3gc/loose": {sha256(loose), *_refs(loose)},
    }
    assert done["rescued"] == 0
    gone = set().union(*expected.values()) | loose_blobs
    assert done["blobs"] == len(gone)
    assert blob_keys(seaweed) == before - gone  # exactly the unreferenced objects went
    for img in kept:
        pull_identical(f"{host}/s3gc/app:{img.tag}", img, tmp_path)
    again = gc(replica, "--grace", "0s", "--untagged")
    assert (again["blobs"], again["manifests"], again["bytes"]) == (0, 0, 0)
    assert blob_keys(seaweed) == before - gone


def test_uploads_in_flight_and_their_multipart_uploads_survive_a_collection(
    replica: Replica, seaweed: SeaweedFS
) -> None:
    big = random.Random(11).randbytes(9 * MiB)  # one 8 MiB part goes out, 1 MiB waits
    small = b"a chunk waiting in its session " * 100
    s3 = seaweed.client()
    with replica.client() as c:
        sessions = {}
        for name, data in (("big", big), ("small", small)):
            r = c.post("/v2/s3gc/inflight/blobs/uploads/")
            assert r.status_code == 202, r.text
            r = c.patch(
                r.headers["location"],
                content=data,
                headers={"Content-Type": "application/octet-stream"},
            )
            assert r.status_code == 202, r.text
            sessions[name] = (r.headers["location"], data)
        uploads_before = set(seaweed.keys(f"{PREFIX}/uploads/"))
        mpus_before = _multipart_uploads(s3)
        assert uploads_before
        assert mpus_before

        result = gc(replica, "--grace", "0s", "--untagged")
        assert (result["blobs"], result["manifests"]) == (0, 0)
        assert set(seaweed.keys(f"{PREFIX}/uploads/")) == uploads_before
        assert _multipart_uploads(s3) == mpus_before

        for location, data in sessions.values():  # both finish, and pull back identical
            r = c.put(location, params={"digest": sha256(data)})
            assert r.status_code == 201, r.text
            got = c.get(f"/v2/s3gc/inflight/blobs/{sha256(data)}")
            assert got.status_code == 200
            assert got.content == data
    # Uploaded, but no manifest names them: the next collection frees both, and only them.
    done = gc(replica, "--grace", "0s")
    assert listed(done) == {"s3gc/inflight": {sha256(big), sha256(small)}}
    assert sha256(big) not in blob_keys(seaweed)


def test_pushes_racing_collections_on_s3_lose_no_acknowledged_image(
    replica: Replica, seaweed: SeaweedFS
) -> None:
    """tests/test_gc_race.py on S3: pushers (HEAD, upload what is missing, PUT the manifest,
    start again when refused), a deleter and collections with a grace of 0 back to back,
    half of them --untagged. Blobs uploaded and manifests pushed while a collection marks
    survive it."""
    pushers, images = 2, 10
    baseline = blob_keys(seaweed)  # the earlier tests' kept images
    result = race([replica], "s3race", pushers=pushers, images=images, seed=5, timeout=300)
    summary = result.summary()
    assert len(result.pushed) == pushers * images, summary
    assert len(result.runs) >= 2, summary
    assert result.deleted, summary

    live = result.live()
    check_pulls(replica, live)
    gc(replica, "--grace", "0s")
    check_pulls(replica, live)
    # What is left in the bucket is exactly what the live images need.
    needed = {d for p in live for d in (sha256(p.manifest), *p.blobs)}
    assert blob_keys(seaweed) == baseline | needed, summary


def _small_image(c: httpx.Client, repo: str, seed: str) -> bytes:
    """A manifest (config and one layer, both uploaded) whose blobs nothing else uses."""
    config, data = json.dumps({"seed": seed}).encode(), f"s3 layer {seed}".encode() * 300
    for blob in (config, data):
        r = c.post(f"/v2/{repo}/blobs/uploads/?digest={sha256(blob)}", content=blob)
        assert r.status_code == 201, r.text
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": MT_OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": MT_OCI_LAYER, "digest": sha256(data), "size": len(data)}],
    }
    return json.dumps(doc).encode()


def _refs(manifest: bytes) -> set[str]:
    doc = json.loads(manifest)
    return {doc["config"]["digest"], *(x["digest"] for x in doc["layers"])}


def _multipart_uploads(s3: Any) -> set[tuple[str, str]]:
    page = s3.list_multipart_uploads(Bucket=BUCKET, Prefix=f"{PREFIX}/uploads/", MaxUploads=1000)
    assert not page.get("IsTruncated")
    return {(u["Key"], u["UploadId"]) for u in page.get("Uploads", [])}
