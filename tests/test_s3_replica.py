"""A replica whose blob storage is S3 (a real SeaweedFS gateway): a subset of the OCI
conformance push and pull tests and a skopeo round trip run against it unchanged, through a
module-scoped `registry` that overrides the shared filesystem one."""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness.process import free_port, moorage_cmd
from harness.replica import Replica
from harness.seaweed import SeaweedFS

from tests import test_clients, test_conformance_pull, test_conformance_push


def _flow(module: object, last: str) -> dict[str, object]:
    """A module's test functions up to `last`, in their order (a flow sharing state)."""
    out: dict[str, object] = {}
    for name, value in vars(module).items():
        if name.startswith("test_") and callable(value):
            out[name] = value
            if name == last:
                break
    return out


# The same tests against the S3 replica: pytest collects what a module's namespace holds,
# in its order (the 02 push flow and the pull flow are sequences sharing state).
push = test_conformance_push.push
pull = test_conformance_pull.pull
globals().update(_flow(test_conformance_push, "test_push_teardown"))
globals().update(_flow(test_conformance_pull, "test_teardown"))
test_blob_api = test_conformance_push.test_blob_api
test_blob_mount = test_conformance_push.test_blob_mount
test_blob_post_cancel = test_conformance_push.test_blob_post_cancel
test_digest_mismatch = test_conformance_push.test_digest_mismatch_error_and_session_end
test_manifest_of_about_four_mib = test_conformance_push.test_manifest_of_about_four_mib
test_skopeo_two_layer_image_round_trip = test_clients.test_skopeo_two_layer_image_round_trip

PREFIX = f"s3-replica-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def registry(seaweed: SeaweedFS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    """One replica on S3 for this module (the store's credentials in its environment)."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in seaweed.env().items():
            mp.setenv(name, value)
        r = Replica(tmp_path_factory.mktemp("s3") / "data", storage=seaweed.storage_url(PREFIX))
        r.start()
        yield r
        r.stop()


def test_the_replica_keeps_its_blobs_in_the_bucket(
    registry: Replica, client: httpx.Client, seaweed: SeaweedFS
) -> None:
    body = b"kept in S3"
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    r = client.post(f"/v2/s3/check/blobs/uploads/?digest={digest}", content=body)
    assert r.status_code == 201, r.text
    key = f"{PREFIX}/blobs/sha256/{digest[7:9]}/{digest[7:]}"
    assert key in seaweed.keys(f"{PREFIX}/blobs/")
    assert not (Path(registry.data_dir) / "blobs").exists()
    health = client.get("/api/v0/health").json()["components"]["storage"]
    assert health["healthy"] is True
    assert health["path"] == seaweed.storage_url(PREFIX)
    # Pulls by redirect are off by default: the replica streams the bytes itself.
    got = client.get(f"/v2/s3/check/blobs/{digest}")
    assert got.status_code == 200
    assert got.content == body
    assert "location" not in got.headers


@pytest.mark.parametrize(
    ("storage", "says"),
    [
        ("s3://Bad_Bucket/p?endpoint=http://127.0.0.1:1", "bucket name 'Bad_Bucket' is not valid"),
        ("s3://bucket/p?endpoint=http://127.0.0.1:1&colour=blue", "unknown S3 option 'colour'"),
        ("s3://key:secret@bucket/p", "S3 credentials do not go in --storage"),
    ],
)
def test_a_bad_s3_location_is_a_usage_error(tmp_path: Path, storage: str, says: str) -> None:
    done = subprocess.run(
        moorage_cmd("run", "--data-dir", str(tmp_path / "data"), "--storage", storage),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert says in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data").exists()


def test_pushes_answer_503_while_the_store_is_unreachable(tmp_path: Path) -> None:
    """A replica whose S3 endpoint refuses connections: a push is a clear 503 in the OCI
    error envelope, never a bare 500; the health check says why."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    r = Replica(tmp_path / "data", storage=f"s3://moorage-test/p?endpoint={endpoint}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "nobody")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "nothing")
        r.start(wait=False)
    try:
        with r.client() as c:
            for _ in range(600):  # up: /v2/ answers (pings say 503: storage is down)
                with contextlib.suppress(httpx.HTTPError):
                    if c.get("/v2/").status_code == 200:
                        break
                time.sleep(0.1)
            digest = "sha256:" + hashlib.sha256(b"x").hexdigest()
            resp = c.post(f"/v2/s3/down/blobs/uploads/?digest={digest}", content=b"x")
            assert resp.status_code == 503, resp.text
            error = resp.json()["errors"][0]
            assert error["code"] == "UNAVAILABLE"
            assert "S3 blob storage unreachable" in error["message"]
            for _ in range(600):
                health = c.get("/api/v0/health").json()["components"]["storage"]
                if health["error"]:
                    break
                time.sleep(0.1)
            assert "S3 blob storage unreachable" in health["error"]
    finally:
        r.stop()
