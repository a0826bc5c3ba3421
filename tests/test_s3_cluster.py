"""A 3-replica cluster whose blob storage is one S3 prefix (a real SeaweedFS gateway), built
with the real commands (`install --storage s3://…`, `join --storage s3://…` on the others),
and the whole OCI conformance set on it: every test and fixture of tests/test_conformance_*.py
(pull, push, discovery, management, sparse), unchanged, with its data set up through one
replica and its requests sent to another. Beside them: skopeo round trips through each
replica, a chunked upload started on one replica and finished on another, a cancel and a
mount across replicas, and a join that names another prefix refused. The destructive cases
(outage, emergency repair, restore) are in tests/test_s3_recovery.py."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from harness.seaweed import BUCKET, SeaweedFS

from moorage.storage.s3location import parse
from tests import (
    test_clients,
    test_conformance_discovery,
    test_conformance_management,
    test_conformance_pull,
    test_conformance_push,
    test_conformance_sparse,
)
from tests.cluster import Cluster, Node, cluster_of
from tests.test_clients import build_image, image_blobs, read_blob, skopeo_copy

PREFIX = f"t/s3-cluster-{uuid.uuid4().hex[:8]}"
MIB = 1024 * 1024

CONFORMANCE = (
    test_conformance_push,
    test_conformance_pull,
    test_conformance_discovery,
    test_conformance_management,
    test_conformance_sparse,
)


def defined_in(module: ModuleType) -> dict[str, object]:
    """What `module` itself defines (its tests, fixtures and their helpers), in its order:
    pytest collects a module's namespace in that order, and the flows (the push, pull,
    discovery and management sequences) share state test to test."""
    return {
        name: value
        for name, value in vars(module).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == module.__name__
    }


def _take(module: ModuleType) -> None:
    for name, value in defined_in(module).items():
        if name in globals() and globals()[name] is not value:
            raise RuntimeError(f"{module.__name__}.{name} would shadow another module's {name}")
        globals()[name] = value


@pytest.fixture(scope="module")
def cluster(seaweed: SeaweedFS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three replicas on one S3 prefix; the store's credentials in every command's env."""
    with cluster_of(
        3, tmp_path_factory.mktemp("s3cluster"), env=seaweed.env(), s3=seaweed.storage_url(PREFIX)
    ) as c:
        yield c


class Entry:
    """The replica the conformance tests set their data up through (their `registry`): the
    first one; `host` as the clients name it (with the port)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.host = f"{node.host}:{node.port}"

    def client(self) -> httpx.Client:
        return self.node.client()


@pytest.fixture(scope="module")
def registry(cluster: Cluster) -> Entry:
    """The conformance tests' setup pushes through the first replica..."""
    return Entry(cluster.nodes[0])


@pytest.fixture
def client(cluster: Cluster) -> Iterator[httpx.Client]:
    """...and their requests go to the second."""
    with cluster.nodes[1].client() as c:
        yield c


# The conformance set, bound in this module's namespace in each module's order (the flows
# share state test to test); this module's `registry` and `client` override the shared ones.
for _module in CONFORMANCE:
    _take(_module)
test_skopeo_two_layer_image_round_trip = test_clients.test_skopeo_two_layer_image_round_trip


def test_the_cluster_is_healthy_and_on_s3(cluster: Cluster, seaweed: SeaweedFS) -> None:
    doc = cluster.status()
    assert doc["scenario"] == "healthy", doc
    assert doc["quorum"] == {"members": 3, "needed": 2, "healthy": 3}
    for node in cluster.nodes:
        config = json.loads((node.data_dir / "moorage.json").read_text())
        assert config["storage"] == seaweed.storage_url(PREFIX)
        with node.client() as c:
            storage = c.get("/api/v0/health").json()["components"]["storage"]
        assert storage["healthy"] is True, storage
    assert not cluster.storage.exists()  # nothing went to a local directory


def test_the_cluster_keeps_its_blobs_in_the_bucket(
    cluster: Cluster, client: httpx.Client, seaweed: SeaweedFS
) -> None:
    """A blob pushed through a replica is an object under the prefix, never a local file; it
    streams back through the replica (pulls by redirect are off by default)."""
    body = b"kept in S3"
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    r = client.post(f"/v2/s3/check/blobs/uploads/?digest={digest}", content=body)
    assert r.status_code == 201, r.text
    key = f"{PREFIX}/blobs/sha256/{digest[7:9]}/{digest[7:]}"
    assert key in seaweed.keys(f"{PREFIX}/blobs/")
    for node in cluster.nodes:
        assert not (node.data_dir / "blobs").exists()
    got = client.get(f"/v2/s3/check/blobs/{digest}")
    assert got.status_code == 200
    assert got.content == body
    assert "location" not in got.headers


def test_skopeo_round_trip_through_each_replica(cluster: Cluster, tmp_path: Path) -> None:
    """skopeo pushes an image through each replica and copies it back out of the next one."""
    src = tmp_path / "src"
    digest = build_image(
        src,
        "v1",
        "amd64",
        [
            {"etc/hello.txt": b"hello from S3\n"},
            {"srv/data.bin": bytes(range(256)) * 512},
        ],
        tmp_path,
    )
    config_digest, layers = image_blobs(src, digest)
    nodes = cluster.nodes
    for i, node in enumerate(nodes):
        repo = f"s3c/skopeo{i}"
        ref = f"docker://{node.host}:{node.port}/{repo}"
        assert skopeo_copy(f"oci:{src}:v1", f"{ref}:v1", work=tmp_path) == digest
        reader = nodes[(i + 1) % len(nodes)]
        out = tmp_path / f"out{i}"
        back = f"docker://{reader.host}:{reader.port}/{repo}:v1"
        assert skopeo_copy(back, f"oci:{out}:back", work=tmp_path) == digest
        assert read_blob(out, digest) == read_blob(src, digest)
        for blob in (config_digest, *layers):
            assert read_blob(out, blob) == read_blob(src, blob)


def test_chunked_upload_started_on_one_replica_finished_on_another(cluster: Cluster) -> None:
    """PATCH on A, PATCH and PUT on B, chunks that are not multiples of S3's 5 MiB part
    minimum (the first is over it, the second across a part boundary); pulled from C."""
    a, b, c = cluster.nodes
    blob = hashlib.sha256(b"seed").digest() * (13 * MIB // 32 + 3)  # 13 MiB + 96 bytes
    cuts = [0, 5 * MIB + 123, 11 * MIB + 77, len(blob)]
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    with a.client() as ca, b.client() as cb, c.client() as cc:
        loc = ca.post("/v2/s3c/roam/blobs/uploads/").headers["location"]
        first = ca.patch(
            loc,
            content=blob[: cuts[1]],
            headers={"Content-Range": f"0-{cuts[1] - 1}"},
        )
        assert first.status_code == 202, first.text
        loc = first.headers["location"]
        # The session as another replica sees it: the bytes so far.
        assert cc.get(loc).headers["range"] == f"0-{cuts[1] - 1}"
        second = cb.patch(
            loc,
            content=blob[cuts[1] : cuts[2]],
            headers={"Content-Range": f"{cuts[1]}-{cuts[2] - 1}"},
        )
        assert second.status_code == 202, second.text
        assert second.headers["range"] == f"0-{cuts[2] - 1}"
        loc = second.headers["location"]
        sep = "&" if "?" in loc else "?"
        done = cb.put(f"{loc}{sep}digest={digest}", content=blob[cuts[2] :])
        assert done.status_code == 201, done.text
        assert done.headers["docker-content-digest"] == digest
        pulled = cc.get(f"/v2/s3c/roam/blobs/{digest}")
        assert pulled.status_code == 200
        assert hashlib.sha256(pulled.content).hexdigest() == digest[7:]
        assert len(pulled.content) == len(blob)
        head = ca.head(f"/v2/s3c/roam/blobs/{digest}")
        assert head.headers["content-length"] == str(len(blob))


def test_join_naming_another_prefix_is_refused(cluster: Cluster, seaweed: SeaweedFS) -> None:
    spare = Node(cluster.root, "spare")
    other = seaweed.storage_url(f"{PREFIX}-other")
    out = cluster.cli(
        "join", "--existing", cluster.nodes[0].url, *spare.flags(), "--storage", other,
        node=spare, check=False,
    )  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
    assert "does not see the cluster's blob storage" in out.stderr, out.stderr
    assert "--storage" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (spare.data_dir / "moorage.json").exists()
    assert cluster.status()["quorum"]["members"] == 3


def test_join_with_another_redirect_setting_is_refused(
    cluster: Cluster, seaweed: SeaweedFS
) -> None:
    """Pulls by redirect are one setting per cluster: a replica asking for redirect=on in a
    cluster installed without it is a usage error (exit 2) naming the value to use."""
    spare = Node(cluster.root, "spare-redirect")
    same = seaweed.storage_url(PREFIX)
    out = cluster.cli(
        "join", "--existing", cluster.nodes[0].url, *spare.flags(),
        "--storage", same + "&redirect=on", node=spare, check=False,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert "redirect=on but the cluster's replicas use redirect=off" in out.stderr, out.stderr
    assert f"--storage '{parse(same).url()}'" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (spare.data_dir / "moorage.json").exists()
    assert cluster.status()["quorum"]["members"] == 3


def test_cancel_on_another_replica_aborts_the_multipart_upload(
    cluster: Cluster, seaweed: SeaweedFS
) -> None:
    """A session holding a full part (a multipart upload in the bucket) cancelled through
    another replica: the session is gone everywhere and its multipart upload aborted."""
    a, b, c = cluster.nodes
    chunk = b"\x5a" * (8 * MIB + 1)
    with a.client() as ca, b.client() as cb, c.client() as cc:
        loc = ca.post("/v2/s3c/cancel/blobs/uploads/").headers["location"]
        resp = ca.patch(loc, content=chunk, headers={"Content-Range": f"0-{len(chunk) - 1}"})
        assert resp.status_code == 202, resp.text
        loc = resp.headers["location"]
        uploads = seaweed.client().list_multipart_uploads(
            Bucket=BUCKET, Prefix=f"{PREFIX}/uploads/"
        )
        before = {u["UploadId"] for u in uploads.get("Uploads", [])}
        assert before, uploads
        assert cb.delete(loc).status_code == 204
        gone = cc.get(loc)
        assert gone.status_code == 404, gone.text
        assert gone.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
        uploads = seaweed.client().list_multipart_uploads(
            Bucket=BUCKET, Prefix=f"{PREFIX}/uploads/"
        )
        after = {u["UploadId"] for u in uploads.get("Uploads", [])}
        assert not before & after, (before, after)


def test_mount_across_replicas(cluster: Cluster) -> None:
    """A blob pushed through A is mounted into another repository through B (no bytes sent)
    and pulled from there through C."""
    a, b, c = cluster.nodes
    blob = b"mounted on S3 " * 1000
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    with a.client() as ca, b.client() as cb, c.client() as cc:
        assert (
            ca.post(f"/v2/s3c/src/blobs/uploads/?digest={digest}", content=blob).status_code == 201
        )
        mounted = cb.post(f"/v2/s3c/dst/blobs/uploads/?mount={digest}&from=s3c/src")
        assert mounted.status_code == 201, mounted.text
        assert cc.get(f"/v2/s3c/dst/blobs/{digest}").content == blob
