"""The whole OCI conformance set (pull, push, discovery, management, sparse) against one
replica whose blob storage is S3 (a real SeaweedFS gateway), unchanged: this module's
namespace holds every test and fixture of tests/test_conformance_*.py, and its module-scoped
`registry` (one S3 replica for the whole set) overrides the shared filesystem one."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from harness.replica import Replica
from harness.seaweed import SeaweedFS

from tests import (
    test_clients,
    test_conformance_discovery,
    test_conformance_management,
    test_conformance_pull,
    test_conformance_push,
    test_conformance_sparse,
)

MODULES = (
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


for _module in MODULES:
    _take(_module)
test_skopeo_two_layer_image_round_trip = test_clients.test_skopeo_two_layer_image_round_trip

PREFIX = f"s3-conformance-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def registry(seaweed: SeaweedFS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    """One replica on S3 for the whole set (the store's credentials in its environment)."""
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
