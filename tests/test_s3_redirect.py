"""Pulls by redirect (`--storage s3://...&redirect=on`, issue 15 item 3): a blob GET or HEAD
answers 307 to a presigned URL of the object on a real SeaweedFS gateway, after access
control; clients following it get the same bytes (ranges too); skopeo pulls through it."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from harness.replica import Replica
from harness.seaweed import SeaweedFS

from moorage.errors import ConfigError
from moorage.storage.s3location import parse
from tests import test_clients
from tests.conftest import s3_replica
from tests.oci import sha256

PREFIX = f"s3-redirect-{uuid.uuid4().hex[:8]}"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def registry(seaweed: SeaweedFS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    """One replica on S3 with redirects on (the store's credentials in its environment)."""
    data = tmp_path_factory.mktemp("s3r") / "data"
    with s3_replica(seaweed, data, seaweed.storage_url(PREFIX) + "&redirect=on") as r:
        yield r


@pytest.fixture(scope="module")
def pushed(registry: Replica) -> tuple[str, bytes]:
    """A 3 MiB blob pushed into `redirect/blob` (the replica streams pushes as always)."""
    body = os.urandom(3 * MiB + 17)
    with registry.client() as c:
        r = c.post(f"/v2/redirect/blob/blobs/uploads/?digest={sha256(body)}", content=body)
        assert r.status_code == 201, r.text
    return sha256(body), body


def test_a_blob_get_is_a_307_to_a_presigned_url_of_the_store(
    registry: Replica, seaweed: SeaweedFS, pushed: tuple[str, bytes]
) -> None:
    digest, body = pushed
    with registry.client() as c:
        r = c.get(f"/v2/redirect/blob/blobs/{digest}")
    assert r.status_code == 307, r.text
    assert r.headers["docker-content-digest"] == digest
    location = urlsplit(r.headers["location"])
    assert f"{location.scheme}://{location.netloc}" == seaweed.endpoint
    assert location.path == f"/moorage-test/{PREFIX}/blobs/sha256/{digest[7:9]}/{digest[7:]}"
    query = parse_qs(location.query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Expires"] == ["1200"]  # 20 minutes, as Distribution's
    # Followed without the registry's credentials (another origin): the store's bytes.
    with registry.client(follow_redirects=True) as c:
        got = c.get(f"/v2/redirect/blob/blobs/{digest}")
        assert got.status_code == 200, got.text
        assert got.content == body
        assert str(got.url).startswith(seaweed.endpoint)
        # The store serves ranges itself.
        wanted = {"Range": "bytes=1048570-1048585"}
        part = c.get(f"/v2/redirect/blob/blobs/{digest}", headers=wanted)
        assert part.status_code == 206, part.text
        assert part.content == body[1048570:1048586]
        # HEAD is redirected too (Distribution presigns GET and HEAD): the size is the blob's.
        head = c.head(f"/v2/redirect/blob/blobs/{digest}")
        assert head.status_code == 200
        assert head.history[0].status_code == 307
        assert int(head.headers["content-length"]) == len(body)


def test_a_denied_or_unknown_pull_never_gets_a_url(
    registry: Replica, pushed: tuple[str, bytes]
) -> None:
    digest, _ = pushed
    for auth in (None, ("admin", "not-the-password")):
        with registry.client(auth=auth) as c:
            r = c.get(f"/v2/redirect/blob/blobs/{digest}")
            assert r.status_code == 401, r.text
            assert "location" not in r.headers
            assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    with registry.client() as c:
        # Not linked in this repository, or not there at all: 404, no URL.
        for repo, blob in (("redirect/other", digest), ("redirect/blob", sha256(b"absent"))):
            r = c.get(f"/v2/{repo}/blobs/{blob}")
            assert r.status_code == 404, r.text
            assert "location" not in r.headers


def test_skopeo_round_trip_through_redirects(registry: Replica, tmp_path: Path) -> None:
    test_clients.test_skopeo_two_layer_image_round_trip(registry, tmp_path)


def test_redirect_is_a_storage_option_off_unless_on() -> None:
    base = "s3://bucket/p?endpoint=http://127.0.0.1:9000"
    assert parse(base).redirect is False
    assert parse(base + "&redirect=off").url() == parse(base).url()
    on = parse(base + "&redirect=on")
    assert on.redirect is True
    assert on.url() == base + "&region=us-east-1&redirect=on"
    with pytest.raises(ConfigError, match="redirect 'yes': use on or off"):
        parse(base + "&redirect=yes")


def _wait_status(replica: Replica, path: str, wanted: int, passing: int) -> httpx.Response:
    """GET `path` until it answers `wanted` (meanwhile only `passing`): the health loop
    probes the store every 2 s."""
    deadline = time.monotonic() + 60
    while True:
        with replica.client() as c:
            r = c.get(path)
        if r.status_code == wanted:
            return r
        assert r.status_code == passing, r.text
        assert time.monotonic() < deadline, r.text
        time.sleep(0.3)


def test_a_store_known_down_gets_503_not_a_redirect(tmp_path: Path) -> None:
    """With the store stopped (a SeaweedFS of this test's own), once the replica's probe has
    failed a blob GET answers 503 UNAVAILABLE in the OCI envelope, not a 307 to a store that
    does not answer; redirects resume when it is back."""
    store = SeaweedFS(tmp_path / "weed")
    store.start()
    replica: Replica | None = None
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name, value in store.env().items():
                mp.setenv(name, value)
            replica = Replica(tmp_path / "data", storage=store.storage_url(PREFIX) + "&redirect=on")
            replica.start()
        body = os.urandom(1000)
        with replica.client() as c:
            r = c.post(f"/v2/down/blob/blobs/uploads/?digest={sha256(body)}", content=body)
            assert r.status_code == 201, r.text
        path = f"/v2/down/blob/blobs/{sha256(body)}"
        _wait_status(replica, path, 307, 307)
        store.stop()
        try:
            down = _wait_status(replica, path, 503, 307)
            error = down.json()["errors"][0]
            assert error["code"] == "UNAVAILABLE"
            assert "pulls by redirect resume once it answers" in error["message"]
            assert "location" not in down.headers
            assert down.headers["retry-after"] == "5"
            with replica.client() as c:  # a blob the repository lacks is still a 404
                unknown = c.get(f"/v2/down/blob/blobs/{sha256(b'never pushed')}")
                assert unknown.status_code == 404, unknown.text
        finally:
            store.start()
        back = _wait_status(replica, path, 307, 503)
        assert back.headers["location"].startswith(store.endpoint)
    finally:
        if replica is not None:
            replica.stop()
        store.stop()
