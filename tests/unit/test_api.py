"""The /v2 surface through an in-process client: the in-memory store, blobs in tmp."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.app import InProcessClient, in_process_registry

MT_IMAGE = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessClient]:
    with in_process_registry(tmp_path_factory.mktemp("api")) as client:
        yield client


def assert_error(resp: object, status: int, code: str) -> dict[str, object]:
    from httpx import Response

    assert isinstance(resp, Response)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    doc = resp.json()
    assert isinstance(doc["errors"], list)
    assert doc["errors"], doc
    first: dict[str, object] = doc["errors"][0]
    assert first["code"] == code, doc
    assert isinstance(first["message"], str)
    assert first["message"]
    return first


def push_blob(api: InProcessClient, repo: str, data: bytes) -> str:
    digest = sha256(data)
    resp = api.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
    assert resp.status_code == 201, resp.text
    assert resp.headers["docker-content-digest"] == digest
    return digest


def push_image(api: InProcessClient, repo: str, tag: str, layer: bytes) -> tuple[str, bytes]:
    config = json.dumps({"architecture": "amd64", "os": "linux", "tag": tag}).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MT_IMAGE,
            "config": {"mediaType": MT_CONFIG, "digest": push_blob(api, repo, config),
                       "size": len(config)},
            "layers": [{"mediaType": MT_LAYER, "digest": push_blob(api, repo, layer),
                        "size": len(layer)}],
        }
    ).encode()  # fmt: skip
    resp = api.put(
        f"/v2/{repo}/manifests/{tag}", content=manifest, headers={"Content-Type": MT_IMAGE}
    )
    assert resp.status_code == 201, resp.text
    return resp.headers["docker-content-digest"], manifest


def test_base_and_auth_challenge(api: InProcessClient) -> None:
    assert api.get("/v2/").status_code == 200
    resp = api.get("/v2/", auth=None)
    assert_error(resp, 401, "UNAUTHORIZED")
    assert "basic realm=" in resp.headers["www-authenticate"].lower()
    assert_error(api.get("/v2/", auth=("admin", "wrong")), 401, "UNAUTHORIZED")
    assert_error(api.get("/v2/", auth=("nobody", "wrong")), 401, "UNAUTHORIZED")
    # A header that is not Basic at all is no identity either.
    resp = api.get("/v2/", auth=None, headers={"Authorization": "Bearer abc"})
    assert_error(resp, 401, "UNAUTHORIZED")


def test_ping_and_health(api: InProcessClient) -> None:
    assert api.get("/_ping").json() == {"healthy": True}
    doc = api.get("/api/v0/health").json()
    assert doc["healthy"] is True
    assert doc["components"]["storage"]["healthy"] is True


def test_monolithic_push_then_pull(api: InProcessClient) -> None:
    repo = "unit/mono"
    layer = b"layer bytes " * 100
    digest, manifest = push_image(api, repo, "v1", layer)
    assert digest == sha256(manifest)
    resp = api.get(f"/v2/{repo}/manifests/v1", headers={"Accept": MT_IMAGE})
    assert resp.status_code == 200
    assert resp.content == manifest
    assert resp.headers["content-type"] == MT_IMAGE
    assert resp.headers["docker-content-digest"] == digest
    by_digest = api.get(f"/v2/{repo}/manifests/{digest}")
    assert by_digest.content == manifest
    head = api.head(f"/v2/{repo}/manifests/v1")
    assert head.status_code == 200
    assert int(head.headers["content-length"]) == len(manifest)
    blob = api.get(f"/v2/{repo}/blobs/{sha256(layer)}")
    assert blob.status_code == 200
    assert blob.content == layer
    assert blob.headers["docker-content-digest"] == sha256(layer)


def test_blob_range_reads(api: InProcessClient) -> None:
    repo = "unit/ranges"
    data = bytes(range(256)) * 4
    digest = push_blob(api, repo, data)
    resp = api.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=10-19"})
    assert resp.status_code == 206
    assert resp.content == data[10:20]
    assert resp.headers["content-range"] == f"bytes 10-19/{len(data)}"
    resp = api.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": f"bytes={len(data)}-"})
    assert resp.status_code == 416


def test_chunked_push(api: InProcessClient) -> None:
    repo = "unit/chunked"
    data = b"0123456789" * 300
    start = api.post(f"/v2/{repo}/blobs/uploads/")
    assert start.status_code == 202
    location = start.headers["location"]
    assert start.headers["range"] == "0-0" or "range" not in start.headers
    offset = 0
    for chunk in (data[:1000], data[1000:2500], data[2500:]):
        end = offset + len(chunk) - 1
        resp = api.patch(
            location,
            content=chunk,
            headers={
                "Content-Range": f"{offset}-{end}",
                "Content-Type": "application/octet-stream",
            },
        )
        assert resp.status_code == 202, resp.text
        assert resp.headers["range"] == f"0-{end}"
        location = resp.headers["location"]
        offset = end + 1
    status = api.get(location)
    assert status.status_code == 204
    assert status.headers["range"] == f"0-{len(data) - 1}"
    # A chunk that does not start where the upload ends is refused with the current range.
    resp = api.patch(location, content=b"x", headers={"Content-Range": "5-5"})
    assert resp.status_code == 416
    assert resp.headers["range"] == f"0-{len(data) - 1}"
    done = api.put(location, params={"digest": sha256(data)})
    assert done.status_code == 201, done.text
    assert api.get(f"/v2/{repo}/blobs/{sha256(data)}").content == data
    # The finished upload is gone.
    assert_error(api.get(location), 404, "BLOB_UPLOAD_UNKNOWN")


def test_upload_with_the_wrong_digest_is_refused(api: InProcessClient) -> None:
    repo = "unit/wrongdigest"
    start = api.post(f"/v2/{repo}/blobs/uploads/")
    resp = api.put(start.headers["location"], params={"digest": sha256(b"other")}, content=b"x")
    assert_error(resp, 400, "DIGEST_INVALID")
    assert api.head(f"/v2/{repo}/blobs/{sha256(b'x')}").status_code == 404


@pytest.mark.parametrize("header", ["0-", "-9", "0-9/abc", "abc", "9-0"])
def test_a_malformed_content_range_says_so(api: InProcessClient, header: str) -> None:
    """Not "chunk out of order" (a probe's chunk did start at the upload's end): what is wrong
    with the header, and the upload's Range as it stands."""
    start = api.post("/v2/unit/ranges/blobs/uploads/")
    location = start.headers["location"]
    assert api.patch(location, content=b"abc", headers={"Content-Range": "0-2"}).status_code == 202
    for method in ("PATCH", "PUT"):
        resp = api.request(
            method,
            location,
            params={"digest": sha256(b"abcdef")} if method == "PUT" else None,
            content=b"def",
            headers={"Content-Range": header},
        )
        doc = assert_error(resp, 416, "BLOB_UPLOAD_INVALID")
        assert "Content-Range" in str(doc), doc
        assert "out of order" not in str(doc), doc
        assert resp.headers["range"] == "0-2"
    assert api.patch(location, content=b"def", headers={"Content-Range": "3-5"}).status_code == 202


def test_an_index_child_of_the_wrong_size_is_refused(api: InProcessClient) -> None:
    """As a config's or a layer's: a client pulling through the index would fail on it."""
    repo = "unit/index"
    child, body = push_image(api, repo, "amd64", b"index child layer")
    mt_index = "application/vnd.oci.image.index.v1+json"

    def index(size: int) -> bytes:
        entry = {"mediaType": MT_IMAGE, "digest": child, "size": size,
                 "platform": {"architecture": "amd64", "os": "linux"}}  # fmt: skip
        return json.dumps(
            {"schemaVersion": 2, "mediaType": mt_index, "manifests": [entry]}
        ).encode()

    headers = {"Content-Type": mt_index}
    refused = api.put(f"/v2/{repo}/manifests/multi", content=index(1), headers=headers)
    doc = assert_error(refused, 400, "MANIFEST_INVALID")
    assert f"manifest {child} is 1 bytes; it is {len(body)}" in str(doc["message"])
    assert_error(api.get(f"/v2/{repo}/manifests/multi"), 404, "MANIFEST_UNKNOWN")
    ok = api.put(f"/v2/{repo}/manifests/multi", content=index(len(body)), headers=headers)
    assert ok.status_code == 201, ok.text


def test_cancelled_upload(api: InProcessClient) -> None:
    start = api.post("/v2/unit/cancel/blobs/uploads/")
    location = start.headers["location"]
    assert api.delete(location).status_code == 204
    assert_error(api.get(location), 404, "BLOB_UPLOAD_UNKNOWN")


def test_tags_list_pages(api: InProcessClient) -> None:
    repo = "unit/tags"
    tags = [f"t{i:02d}" for i in range(7)]
    for tag in tags:
        push_image(api, repo, tag, b"same layer")
    assert api.get(f"/v2/{repo}/tags/list").json() == {"name": repo, "tags": tags}
    seen: list[str] = []
    url = f"/v2/{repo}/tags/list?n=3"
    while url:
        resp = api.get(url)
        assert resp.status_code == 200
        page = resp.json()["tags"]
        assert len(page) <= 3
        seen += page
        link = resp.headers.get("link")
        url = link.split(";")[0].strip("<>") if link else ""
    assert seen == tags
    last = api.get(f"/v2/{repo}/tags/list", params={"n": 2, "last": "t04"}).json()
    assert last["tags"] == ["t05", "t06"]
    assert api.get(f"/v2/{repo}/tags/list", params={"n": 0}).json()["tags"] == []


def test_delete_manifest_by_digest(api: InProcessClient) -> None:
    repo = "unit/delete"
    digest, _ = push_image(api, repo, "gone", b"delete me")
    assert api.delete(f"/v2/{repo}/manifests/{digest}").status_code == 202
    assert_error(api.get(f"/v2/{repo}/manifests/gone"), 404, "MANIFEST_UNKNOWN")
    assert_error(api.get(f"/v2/{repo}/manifests/{digest}"), 404, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v2/UPPER/tags/list", 400, "NAME_INVALID"),
        ("/v2/a..b/manifests/latest", 400, "NAME_INVALID"),
        ("/v2/unit/x/manifests/bad%0atag", 404, "MANIFEST_UNKNOWN"),
        ("/v2/unit/x/blobs/sha256:abc", 400, "DIGEST_INVALID"),
        ("/v2/unit/x/blobs/md5:" + "0" * 32, 400, "DIGEST_INVALID"),
        ("/v2/unit/x/blobs/" + sha256(b"absent"), 404, "BLOB_UNKNOWN"),
        ("/v2/unit/absent/manifests/latest", 404, "MANIFEST_UNKNOWN"),
        ("/v2/unit/absent/tags/list", 404, "NAME_UNKNOWN"),
        ("/v2/unit/x/blobs/uploads/not-an-upload-id", 404, "BLOB_UPLOAD_UNKNOWN"),
        ("/v2/unit/x/blobs/uploads/" + "0" * 32, 404, "BLOB_UPLOAD_UNKNOWN"),
        ("/v2/unit/x/nothing-here", 404, "NOT_FOUND"),
    ],
)
def test_error_envelope(api: InProcessClient, path: str, status: int, code: str) -> None:
    assert_error(api.get(path), status, code)


def test_method_not_allowed_and_bad_ranges(api: InProcessClient) -> None:
    assert_error(api.post("/v2/"), 405, "UNSUPPORTED")
    assert_error(api.put("/v2/unit/x/tags/list"), 405, "UNSUPPORTED")
    digest = push_blob(api, "unit/badrange", b"abcdef")
    url = f"/v2/unit/badrange/blobs/{digest}"
    resp = api.get(url, headers={"Range": "bytes=5-2"})
    assert resp.status_code == 416
    assert resp.headers["content-range"] == "bytes */6"
    assert resp.json()["errors"]
    # Suffix and open ranges are served.
    resp = api.get(url, headers={"Range": "bytes=-2"})
    assert (resp.status_code, resp.content, resp.headers["content-range"]) == (
        206, b"ef", "bytes 4-5/6"
    )  # fmt: skip
    resp = api.get(url, headers={"Range": "bytes=3-"})
    assert (resp.status_code, resp.content) == (206, b"def")
    # A Range header that is not one byte range is ignored: the whole blob (RFC 9110).
    for ignored in ("bytes=abc", "items=0-1", "bytes=0-0,2-3"):
        resp = api.get(url, headers={"Range": ignored})
        assert (resp.status_code, resp.content) == (200, b"abcdef"), ignored


def test_bad_tags_digests_and_page_sizes(api: InProcessClient) -> None:
    resp = api.put(
        "/v2/unit/x/manifests/bad%0atag", content=b"{}", headers={"Content-Type": MT_IMAGE}
    )
    assert "invalid tag" in str(assert_error(resp, 400, "MANIFEST_INVALID")["message"])
    resp = api.post("/v2/unit/x/blobs/uploads/", params={"digest": "sha256:zz"}, content=b"x")
    assert_error(resp, 400, "DIGEST_INVALID")
    for n in ("abc", "-1"):
        resp = api.get("/v2/unit/x/tags/list", params={"n": n})
        assert_error(resp, 400, "PAGINATION_NUMBER_INVALID")


def test_manifest_referring_to_a_missing_blob_is_refused(api: InProcessClient) -> None:
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MT_IMAGE,
            "config": {"mediaType": MT_CONFIG, "digest": sha256(b"no"), "size": 2},
            "layers": [],
        }
    ).encode()
    resp = api.put(
        "/v2/unit/missing/manifests/v1", content=manifest, headers={"Content-Type": MT_IMAGE}
    )
    assert_error(resp, 400, "MANIFEST_BLOB_UNKNOWN")


def test_invalid_manifest_json(api: InProcessClient) -> None:
    resp = api.put(
        "/v2/unit/badjson/manifests/v1", content=b"{not json", headers={"Content-Type": MT_IMAGE}
    )
    assert_error(resp, 400, "MANIFEST_INVALID")


def test_catalog_lists_pushed_repositories(api: InProcessClient) -> None:
    push_image(api, "unit/catalog", "v1", b"catalog layer")
    repos = api.get("/v2/_catalog", params={"n": 1000}).json()["repositories"]
    assert "unit/catalog" in repos
    assert repos == sorted(repos)


def test_fresh_registry_is_empty(tmp_path: Path) -> None:
    with in_process_registry(tmp_path) as api:
        assert api.get("/v2/_catalog").json() == {"repositories": []}


def _open_files_under(root: Path) -> list[str]:
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(root)):
            found.append(target)
    return found


def test_no_file_stays_open_after_the_app_stops(tmp_path: Path) -> None:
    """Regression: the journal's descriptor outlived the app (one leaked per app)."""
    with in_process_registry(tmp_path) as api:
        push_image(api, "unit/leak", "v1", b"journaled")
        assert list((tmp_path / "blobs" / "journal").glob("*.jsonl"))
    assert _open_files_under(tmp_path) == []


def test_a_call_cancelled_by_a_library_is_a_503_to_retry(
    api: InProcessClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """grpc cancels calls in flight on a channel being closed: a CancelledError that is not
    the request's own cancellation is answered in the envelope as 503, never a bare 500."""
    import asyncio

    from moorage.api import v2

    async def cancelled(request: object) -> object:
        raise asyncio.CancelledError()

    monkeypatch.setattr(v2, "dispatch", cancelled)
    first = assert_error(api.get("/v2/some/repo/manifests/latest"), 503, "UNAVAILABLE")
    assert "retry" in str(first["message"])
