"""A replica whose blob storage is S3, refused or cut off: a bad `--storage` location is a usage
error, and an unreachable store makes pushes 503. (The OCI conformance set and skopeo round
trips on a working S3 cluster are in tests/test_s3_cluster.py.)"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from harness.process import free_port, moorage_cmd
from harness.replica import Replica


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
