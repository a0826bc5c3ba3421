"""OCI distribution-spec conformance, push workflow, ported to pytest.

Ported from opencontainers/distribution-spec `conformance/`: the Ginkgo suite's
02_push_test.go (streamed, monolithic and chunked uploads, cross-repository mount,
manifest upload, teardown) and the newer runner's push checks (run.go TestBlobAPIs for
sha256 and sha512: post only, post+put, chunked single/multi/put-last/out-of-order, stream,
mount, anonymous mount, missing mount, cancel, 0-byte and `{}` blobs, bad digests; TestPush
of every data set with Location, Docker-Content-Digest, OCI-Subject and `?tag=`/OCI-Tag
checks). Plus every error a pusher can trigger, checked for status, JSON envelope and code.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from harness.replica import Replica

from tests.datasets import build_datasets, push_dataset
from tests.legacy_data import LegacyData
from tests.oci import (
    CHUNK_MIN,
    MT_OCI_CONFIG,
    MT_OCI_IMAGE,
    MT_OCI_INDEX,
    MT_OCTET,
    assert_deleted_or_absent,
    assert_oci_error,
    blob_delete_atomic,
    blob_get_exists,
    blob_head_exists,
    blob_patch_chunked,
    blob_patch_stream,
    blob_post_only,
    blob_post_put,
    oci_digest,
    unique_repo,
    verify_blob_location,
    verify_digest_header,
)

DATASETS = list(build_datasets())
ALGOS = ["sha256", "sha512"]

# -- 02_push_test.go ----------------------------------------------------------------------


@dataclass
class PushState:
    repo: str
    cross: str
    data: LegacyData
    last: dict[str, httpx.Response] = field(default_factory=dict)


@pytest.fixture(scope="module")
def push(registry: Replica) -> PushState:
    return PushState(
        unique_repo("conformance-push"), unique_repo("conformance-cross"), LegacyData()
    )


def test_streamed_patch_with_blob_is_202(client: httpx.Client, push: PushState) -> None:
    r = client.post(f"/v2/{push.repo}/blobs/uploads/")
    location = r.headers.get("location", "")
    assert location
    r = client.patch(location, content=push.data.blob_a, headers={"Content-Type": MT_OCTET})
    assert r.status_code == 202
    push.last["streamed"] = r


def test_streamed_put_with_digest_is_201(client: httpx.Client, push: PushState) -> None:
    # The Go client sends this PUT without a body, so Content-Length: 0 on the wire.
    r = client.put(
        push.last["streamed"].headers["location"],
        params={"digest": oci_digest(push.data.blob_a)},
        headers={"Content-Type": MT_OCTET, "Content-Length": "0"},
    )
    assert r.status_code == 201
    assert r.headers.get("location")


def test_monolithic_get_nonexistent_blob_is_404(client: httpx.Client, push: PushState) -> None:
    assert client.get(f"/v2/{push.repo}/blobs/{LegacyData.DUMMY_DIGEST}").status_code == 404


def test_monolithic_post_with_digest_and_blob(client: httpx.Client, push: PushState) -> None:
    config = push.data.configs[1]
    r = client.post(
        f"/v2/{push.repo}/blobs/uploads/",
        params={"digest": oci_digest(config)},
        content=config,
        headers={"Content-Type": MT_OCTET},
    )
    assert r.headers.get("location")
    assert r.status_code == 201, "a POST with the whole blob completes the upload"
    push.last["monolithic"] = r


def test_monolithic_get_blob_from_prior_request(client: httpx.Client, push: PushState) -> None:
    r = client.get(f"/v2/{push.repo}/blobs/{oci_digest(push.data.configs[1])}")
    assert push.last["monolithic"].status_code == 201
    assert r.status_code == 200


def test_monolithic_post_yields_session(client: httpx.Client, push: PushState) -> None:
    r = client.post(f"/v2/{push.repo}/blobs/uploads/")
    assert r.status_code == 202
    push.last["session"] = r


def test_monolithic_put_blob_is_201(client: httpx.Client, push: PushState) -> None:
    config = push.data.configs[1]
    r = client.put(
        push.last["session"].headers["location"],
        params={"digest": oci_digest(config)},
        content=config,
        headers={"Content-Type": MT_OCTET},
    )
    assert r.headers.get("location")
    assert r.status_code == 201
    r = client.get(f"/v2/{push.repo}/blobs/{oci_digest(config)}")
    assert r.status_code == 200


def test_monolithic_put_layer_is_201(client: httpx.Client, push: PushState) -> None:
    r = client.post(f"/v2/{push.repo}/blobs/uploads/")
    r = client.put(
        r.headers["location"],
        params={"digest": push.data.layer_digest},
        content=push.data.layer,
        headers={"Content-Type": MT_OCTET},
    )
    assert r.headers.get("location")
    assert r.status_code == 201
    assert client.get(f"/v2/{push.repo}/blobs/{push.data.layer_digest}").status_code == 200


def _chunk(push: PushState, i: int) -> dict[str, object]:
    body = push.data.blob_b_chunks[i]
    return {
        "content": body,
        "headers": {
            "Content-Type": MT_OCTET,
            "Content-Length": str(len(body)),
            "Content-Range": push.data.blob_b_ranges[i],
        },
    }


def test_chunked_out_of_order_is_416(client: httpx.Client, push: PushState) -> None:
    r = client.post(f"/v2/{push.repo}/blobs/uploads/", headers={"Content-Length": "0"})
    location = r.headers.get("location", "")
    assert location
    r = client.patch(location, **_chunk(push, 1))  # type: ignore[arg-type]
    assert r.status_code == 416
    assert r.headers["range"] == "0-0"
    assert r.headers["location"] == location
    assert r.json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"


def test_chunked_first_chunk_is_202(client: httpx.Client, push: PushState) -> None:
    r = client.post(f"/v2/{push.repo}/blobs/uploads/", headers={"Content-Length": "0"})
    assert r.headers.get("location")
    push.last["prev"] = r
    r = client.patch(r.headers["location"], **_chunk(push, 0))  # type: ignore[arg-type]
    assert r.status_code == 202
    assert r.headers["range"] == push.data.blob_b_ranges[0]
    push.last["chunk"] = r


def test_chunked_retry_previous_chunk_is_416(client: httpx.Client, push: PushState) -> None:
    r = client.patch(push.last["prev"].headers["location"], **_chunk(push, 0))  # type: ignore[arg-type]
    assert r.status_code == 416
    assert r.headers["range"] == push.data.blob_b_ranges[0]


def test_chunked_stale_upload_status_is_204(client: httpx.Client, push: PushState) -> None:
    r = client.get(push.last["prev"].headers["location"])
    assert r.status_code == 204
    assert r.headers.get("location")
    assert r.headers["range"] == push.data.blob_b_ranges[0]
    push.last["chunk"] = r


def test_chunked_second_chunk_is_202(client: httpx.Client, push: PushState) -> None:
    r = client.patch(push.last["chunk"].headers["location"], **_chunk(push, 1))  # type: ignore[arg-type]
    assert r.status_code == 202
    assert r.headers.get("location")
    push.last["chunk"] = r


def test_chunked_put_with_digest_is_201(client: httpx.Client, push: PushState) -> None:
    r = client.put(
        push.last["chunk"].headers["location"],
        params={"digest": oci_digest(push.data.blob_b)},
        headers={"Content-Length": "0", "Content-Type": MT_OCTET},
    )
    assert r.status_code == 201
    assert r.headers.get("location")
    assert client.get(r.headers["location"]).content == push.data.blob_b


def test_mount_without_from_yields_session(client: httpx.Client, push: PushState) -> None:
    r = client.post(f"/v2/{push.cross}/blobs/uploads/", params={"mount": LegacyData.DUMMY_DIGEST})
    assert r.status_code == 202
    assert r.headers.get("location", "").startswith(f"/v2/{push.cross}/blobs/uploads/")


def test_mount_from_other_repository(client: httpx.Client, push: PushState) -> None:
    digest = oci_digest(push.data.blob_a)
    r = client.post(f"/v2/{push.cross}/blobs/uploads/", params={"mount": digest, "from": push.repo})
    assert r.status_code == 201
    assert r.headers["location"] == f"/v2/{push.cross}/blobs/{digest}"
    assert client.get(r.headers["location"]).status_code == 200


def test_mount_without_from_automatic_discovery(client: httpx.Client, push: PushState) -> None:
    """With automatic content discovery (OCI_AUTOMATIC_CROSSMOUNT=1) this is a 201."""
    other = unique_repo()
    r = client.post(f"/v2/{other}/blobs/uploads/", params={"mount": oci_digest(push.data.blob_a)})
    assert r.status_code == 201
    assert client.get(r.headers["location"]).content == push.data.blob_a


def test_manifest_get_nonexistent_is_404(client: httpx.Client, push: PushState) -> None:
    r = client.get(f"/v2/{push.repo}/manifests/{LegacyData.NONEXISTENT_MANIFEST}")
    assert r.status_code == 404


def test_manifest_put_under_four_tags(client: httpx.Client, push: PushState) -> None:
    for i in range(4):
        r = client.put(
            f"/v2/{push.repo}/manifests/test{i}",
            content=push.data.manifests[1],
            headers={"Content-Type": MT_OCI_IMAGE},
        )
        assert r.headers.get("location")
        assert r.status_code == 201


def test_manifest_put_with_no_layers(client: httpx.Client, push: PushState) -> None:
    r = client.put(
        f"/v2/{push.repo}/manifests/emptylayer",
        content=push.data.empty_layer_manifest,
        headers={"Content-Type": MT_OCI_IMAGE},
    )
    assert r.status_code == 201
    assert r.headers.get("location")
    assert client.get(r.headers["location"]).content == push.data.empty_layer_manifest


def test_manifest_get_by_digest_is_200(client: httpx.Client, push: PushState) -> None:
    r = client.get(
        f"/v2/{push.repo}/manifests/{oci_digest(push.data.manifests[1])}",
        headers={"Accept": MT_OCI_IMAGE},
    )
    assert r.status_code == 200
    assert r.content == push.data.manifests[1]


def test_push_teardown(client: httpx.Client, push: PushState) -> None:
    for body in (push.data.manifests[1], push.data.empty_layer_manifest):
        r = client.delete(f"/v2/{push.repo}/manifests/{oci_digest(body)}")
        assert_deleted_or_absent(r, 405)
        assert r.status_code == 202
    for blob in (push.data.configs[1], push.data.layer):
        r = client.delete(f"/v2/{push.repo}/blobs/{oci_digest(blob)}")
        assert_deleted_or_absent(r, 404, 405)
        assert r.status_code == 202


# -- run.go TestBlobAPIs, for sha256 and sha512 ----------------------------------------------


def _blob(size: int, algo: str) -> tuple[str, bytes]:
    body = secrets.token_bytes(size)
    return oci_digest(body, algo), body


def _check_and_delete(c: httpx.Client, repo: str, digest: str, body: bytes) -> None:
    blob_head_exists(c, repo, digest, body)
    blob_get_exists(c, repo, digest, body)
    blob_delete_atomic(c, repo, digest)


Pusher = Callable[[httpx.Client, str, str, bytes], object]
BLOB_API_TESTS: dict[str, tuple[int, Pusher]] = {
    "post only": (512, blob_post_only),
    "post+put": (512, blob_post_put),
    "chunked single": (512, blob_patch_chunked),
    "stream": (512, blob_patch_stream),
    "chunked multi": (CHUNK_MIN * 3 - 5, blob_patch_chunked),
    "chunked multi and put chunk": (
        CHUNK_MIN * 3 - 5,
        lambda c, r, d, b: blob_patch_chunked(c, r, d, b, put_last_chunk=True),
    ),
    "chunked out-of-order": (
        CHUNK_MIN * 3 - 5,
        lambda c, r, d, b: blob_patch_chunked(c, r, d, b, out_of_order=True),
    ),
    "chunked out-of-order and put chunk": (
        CHUNK_MIN * 3 - 5,
        lambda c, r, d, b: blob_patch_chunked(c, r, d, b, put_last_chunk=True, out_of_order=True),
    ),
}


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("name", list(BLOB_API_TESTS))
def test_blob_api(client: httpx.Client, name: str, algo: str) -> None:
    size, pusher = BLOB_API_TESTS[name]
    repo = unique_repo()
    digest, body = _blob(size, algo)
    pusher(client, repo, digest, body)
    _check_and_delete(client, repo, digest, body)


@pytest.mark.parametrize("algo", ALGOS)
def test_blob_mount(client: httpx.Client, algo: str) -> None:
    """ "mount": push to repo2, mount into repo with `from` (201, not the 202 fallback)."""
    repo, repo2 = unique_repo(), unique_repo()
    digest, body = _blob(512, algo)
    blob_post_put(client, repo2, digest, body)
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"mount": digest, "from": repo2})
    assert r.status_code == 201, r.text
    verify_digest_header(r, digest)
    verify_blob_location(client, r.headers["location"], body)
    _check_and_delete(client, repo, digest, body)
    blob_delete_atomic(client, repo2, digest)


@pytest.mark.parametrize("algo", ALGOS)
def test_blob_mount_anonymous(client: httpx.Client, algo: str) -> None:
    """ "mount anonymous": a mount without `from` finds the blob (201)."""
    repo, repo2 = unique_repo(), unique_repo()
    digest, body = _blob(512, algo)
    blob_post_put(client, repo2, digest, body)
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"mount": digest})
    assert r.status_code == 201, r.text
    verify_digest_header(r, digest)
    verify_blob_location(client, r.headers["location"], body)
    _check_and_delete(client, repo, digest, body)
    blob_delete_atomic(client, repo2, digest)


def test_blob_mount_with_empty_from_is_anonymous(client: httpx.Client) -> None:
    repo, repo2 = unique_repo(), unique_repo()
    digest, body = _blob(512, "sha256")
    blob_post_put(client, repo2, digest, body)
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"mount": digest, "from": ""})
    assert r.status_code == 201, r.text
    _check_and_delete(client, repo, digest, body)


@pytest.mark.parametrize("algo", ALGOS)
def test_blob_mount_missing(client: httpx.Client, algo: str) -> None:
    """ "mount missing": mounting from a repo without the blob must not succeed; the 202
    session it opens instead takes the blob with a PUT."""
    repo, repo2 = unique_repo(), unique_repo()
    digest, body = _blob(512, algo)
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"mount": digest, "from": repo2})
    assert r.status_code == 202, r.text
    loc = r.headers["location"]
    assert loc.startswith(f"/v2/{repo}/blobs/uploads/")
    r = client.put(
        httpx.URL(loc).copy_merge_params({"digest": digest}),
        content=body,
        headers={"Content-Type": MT_OCTET},
    )
    assert r.status_code == 201, r.text
    verify_digest_header(r, digest)
    verify_blob_location(client, r.headers["location"], body)
    _check_and_delete(client, repo, digest, body)
    assert client.head(f"/v2/{repo2}/blobs/{digest}").status_code == 404


@pytest.mark.parametrize("algo", ALGOS)
def test_blob_post_cancel(client: httpx.Client, algo: str) -> None:
    """ "post cancel": DELETE of an upload session is 204; the session is then gone."""
    repo = unique_repo()
    digest, body = _blob(512, algo)
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202
    loc = r.headers["location"]
    r = client.patch(loc, content=body[:100], headers={"Content-Type": MT_OCTET})
    assert r.status_code == 202
    r = client.delete(loc, headers={"Content-Length": "0"})
    assert r.status_code == 204
    assert_oci_error(client.get(loc), 404, "BLOB_UPLOAD_UNKNOWN")
    r = client.put(httpx.URL(loc).copy_merge_params({"digest": digest}), content=body)
    assert_oci_error(r, 404, "BLOB_UPLOAD_UNKNOWN")
    # TestDeleteBlob on a blob never pushed: 404 (allowed), and HEAD is 404
    assert client.delete(f"/v2/{repo}/blobs/{digest}").status_code == 404
    assert client.head(f"/v2/{repo}/blobs/{digest}").status_code == 404


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize(
    "pusher", [blob_post_put, blob_post_only, blob_patch_stream, blob_patch_chunked]
)
@pytest.mark.parametrize("content", [b"", b"{}"], ids=["empty", "emptyJSON"])
def test_well_known_blobs(client: httpx.Client, algo: str, pusher: Pusher, content: bytes) -> None:
    """ "empty" (0 bytes) and "emptyJSON" (`{}`): push, HEAD, GET, delete."""
    repo = unique_repo()
    digest = oci_digest(content, algo)
    pusher(client, repo, digest, content)
    _check_and_delete(client, repo, digest, content)


BAD_DIGEST_TESTS: dict[str, Callable[[httpx.Client, str, str, bytes], object]] = {
    "bad digest post only": lambda c, r, d, b: blob_post_only(c, r, d, b, expect_bad=True),
    "bad digest post+put": lambda c, r, d, b: blob_post_put(c, r, d, b, expect_bad=True),
    "bad digest chunked": lambda c, r, d, b: blob_patch_chunked(c, r, d, b, expect_bad=True),
    "bad digest chunked and put chunk": lambda c, r, d, b: blob_patch_chunked(
        c, r, d, b, put_last_chunk=True, expect_bad=True
    ),
    "bad digest stream": lambda c, r, d, b: blob_patch_stream(c, r, d, b, expect_bad=True),
}


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("name", list(BAD_DIGEST_TESTS))
def test_blob_bad_digest(client: httpx.Client, name: str, algo: str) -> None:
    """Bytes that do not match the digest: 400, and nothing of them stays visible."""
    repo = unique_repo()
    digest, body = _blob(CHUNK_MIN * 3 - 5, algo)
    BAD_DIGEST_TESTS[name](client, repo, digest, body + b"oh no")
    assert client.head(f"/v2/{repo}/blobs/{digest}").status_code == 404


def test_digest_mismatch_error_and_session_end(client: httpx.Client) -> None:
    """The 400 of a mismatch is DIGEST_INVALID, and the upload session is over."""
    repo = unique_repo()
    body = secrets.token_bytes(100)
    wrong = oci_digest(b"something else")
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    loc = r.headers["location"]
    r = client.put(httpx.URL(loc).copy_merge_params({"digest": wrong}), content=body)
    assert_oci_error(r, 400, "DIGEST_INVALID")
    assert_oci_error(client.get(loc), 404, "BLOB_UPLOAD_UNKNOWN")
    assert client.head(f"/v2/{repo}/blobs/{wrong}").status_code == 404
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": wrong}, content=body)
    assert_oci_error(r, 400, "DIGEST_INVALID")
    assert client.head(f"/v2/{repo}/blobs/{wrong}").status_code == 404


# -- run.go TestPush for every data set ------------------------------------------------------


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_push(client: httpx.Client, name: str) -> None:
    """Blobs, manifests by digest (with `?tag=` where set), then tags; each PUT checked for
    201, Location serving the same bytes and media type, digest header and OCI-Subject."""
    push_dataset(client, unique_repo(), build_datasets()[name])


def test_tag_param_returns_one_oci_tag_per_tag(client: httpx.Client) -> None:
    td = build_datasets()["image"]
    repo = unique_repo()
    for dig, body in td.blobs.items():
        blob_post_put(client, repo, dig, body)
    digest = td.man_order[-1]
    r = client.put(
        f"/v2/{repo}/manifests/{digest}",
        params=[("tag", "one"), ("tag", "two"), ("tag", "one")],
        content=td.manifests[digest],
        headers={"Content-Type": MT_OCI_IMAGE},
    )
    assert r.status_code == 201
    assert r.headers.get_list("oci-tag") == ["one", "two"]
    for tag in ("one", "two"):
        assert client.head(f"/v2/{repo}/manifests/{tag}").headers["docker-content-digest"] == digest


def test_manifest_of_about_four_mib(client: httpx.Client) -> None:
    """The largest manifests the spec asks registries to take (4 MiB) are stored as sent."""
    td = build_datasets()["image"]
    repo = unique_repo()
    for dig, body in td.blobs.items():
        blob_post_put(client, repo, dig, body)
    doc = json.loads(td.manifests[td.man_order[-1]])
    doc["annotations"] = {"filler": ""}
    base = len(json.dumps(doc).encode())
    doc["annotations"]["filler"] = "x" * (4 * 1024 * 1024 - base)
    body = json.dumps(doc).encode()
    assert len(body) == 4 * 1024 * 1024
    r = client.put(
        f"/v2/{repo}/manifests/big", content=body, headers={"Content-Type": MT_OCI_IMAGE}
    )
    assert r.status_code == 201, r.text[:300]
    r = client.get(f"/v2/{repo}/manifests/big")
    assert r.content == body


# -- error paths of pushes -------------------------------------------------------------------


def _image(client: httpx.Client, repo: str) -> tuple[dict[str, object], str]:
    """A pushed config and layer, and a manifest document that refers to them."""
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    layer = secrets.token_bytes(64)
    for blob in (config, layer):
        blob_post_put(client, repo, oci_digest(blob), blob)
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_IMAGE,
        "config": {"mediaType": MT_OCI_CONFIG, "digest": oci_digest(config), "size": len(config)},
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": oci_digest(layer),
                "size": len(layer),
            }
        ],
    }
    return doc, oci_digest(layer)


def test_error_name_invalid_on_push(client: httpx.Client) -> None:
    for repo in ("UPPER", "a..b", "a/-b", "x" * 300):
        assert_oci_error(client.post(f"/v2/{repo}/blobs/uploads/"), 400, "NAME_INVALID")
        r = client.put(f"/v2/{repo}/manifests/latest", content=b"{}")
        assert_oci_error(r, 400, "NAME_INVALID")


def test_error_digest_invalid_on_upload(client: httpx.Client) -> None:
    repo = unique_repo()
    for bad in ("sha256:abc", "sha256:" + "G" * 64, "sha1:" + "a" * 40, "", "sha256"):
        r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": bad}, content=b"x")
        if bad == "":
            assert r.status_code in (202, 400)  # an empty digest parameter opens a session
            continue
        assert_oci_error(r, 400, "DIGEST_INVALID")
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    loc = r.headers["location"]
    for bad in ("sha256:abc", "nope"):
        r = client.put(httpx.URL(loc).copy_merge_params({"digest": bad}), content=b"x")
        assert_oci_error(r, 400, "DIGEST_INVALID")
    r = client.put(loc, content=b"x")  # no digest at all
    assert_oci_error(r, 400, "DIGEST_INVALID")
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"mount": "sha256:bad"})
    assert_oci_error(r, 400, "DIGEST_INVALID")


def test_error_blob_upload_unknown(client: httpx.Client) -> None:
    repo, other = unique_repo(), unique_repo()
    unknown = f"/v2/{repo}/blobs/uploads/{secrets.token_hex(16)}"
    junk = f"/v2/{repo}/blobs/uploads/not-an-upload-id"
    digest = oci_digest(b"x")
    for url in (unknown, junk):
        assert_oci_error(client.get(url), 404, "BLOB_UPLOAD_UNKNOWN")
        assert_oci_error(client.patch(url, content=b"x"), 404, "BLOB_UPLOAD_UNKNOWN")
        r = client.put(url, params={"digest": digest}, content=b"x")
        assert_oci_error(r, 404, "BLOB_UPLOAD_UNKNOWN")
        assert_oci_error(client.delete(url), 404, "BLOB_UPLOAD_UNKNOWN")
    # a session belongs to the repository that opened it
    loc = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
    upload_id = loc.rsplit("/", 1)[1]
    assert_oci_error(
        client.get(f"/v2/{other}/blobs/uploads/{upload_id}"), 404, "BLOB_UPLOAD_UNKNOWN"
    )
    # and ends with the PUT that completes it
    r = client.put(loc, params={"digest": digest}, content=b"x")
    assert r.status_code == 201
    assert_oci_error(client.get(loc), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_oci_error(client.patch(loc, content=b"y"), 404, "BLOB_UPLOAD_UNKNOWN")


def test_error_blob_upload_invalid_and_size_invalid(client: httpx.Client) -> None:
    repo = unique_repo()
    loc = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
    # Content-Range covers 10 bytes, Content-Length says 5
    r = client.patch(loc, content=b"12345", headers={"Content-Range": "0-9"})
    assert_oci_error(r, 400, "SIZE_INVALID")

    def five_bytes() -> Iterator[bytes]:
        yield b"12345"

    # Content-Range covers 10 bytes, the (chunked) body has 5
    r = client.patch(loc, content=five_bytes(), headers={"Content-Range": "0-9"})
    assert_oci_error(r, 400, "BLOB_UPLOAD_INVALID")
    # nothing of the failed requests stayed in the upload
    r = client.get(loc)
    assert r.status_code == 204
    assert r.headers["range"] == "0-0"
    r = client.patch(loc, content=b"12345", headers={"Content-Range": "0-4"})
    assert r.status_code == 202
    assert r.headers["range"] == "0-4"
    for bad in ("bytes=a-b", "9-3", "x"):
        r = client.patch(loc, content=b"1", headers={"Content-Range": bad})
        assert r.status_code in (400, 416), bad
        assert r.json()["errors"][0]["code"] in ("BLOB_UPLOAD_INVALID", "SIZE_INVALID")


def test_error_out_of_order_chunk_reports_range(client: httpx.Client) -> None:
    """416 for overlapping and skipping chunks, with the upload's Range and Location."""
    repo = unique_repo()
    loc = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
    r = client.patch(loc, content=b"a" * 10, headers={"Content-Range": "0-9"})
    assert r.status_code == 202
    for rng, body in (("5-14", b"b" * 10), ("20-29", b"c" * 10), ("0-9", b"a" * 10)):
        r = client.patch(loc, content=body, headers={"Content-Range": rng})
        assert_oci_error(r, 416, "BLOB_UPLOAD_INVALID")
        assert r.headers["range"] == "0-9"
        assert r.headers["location"] == loc
    r = client.get(loc)
    assert (r.status_code, r.headers["range"]) == (204, "0-9")


def test_error_manifest_invalid(client: httpx.Client) -> None:
    repo = unique_repo()
    doc, _ = _image(client, repo)
    config = doc["config"]
    assert isinstance(config, dict)
    bad_docs: list[object] = [
        {**doc, "schemaVersion": 3},
        {k: v for k, v in doc.items() if k != "schemaVersion"},
        {k: v for k, v in doc.items() if k != "config"},
        {**doc, "layers": {"not": "a list"}},
        {**doc, "config": "sha256:abc"},
        {**doc, "config": {**config, "digest": "sha256:short"}},
        {**doc, "config": {**config, "size": -1}},
        {**doc, "config": {**config, "size": "12"}},
        {**doc, "config": {k: v for k, v in config.items() if k != "mediaType"}},
        {**doc, "annotations": {"a": 1}},
        {**doc, "subject": "nope"},
        {**doc, "artifactType": 7},
        {**doc, "mediaType": "application/vnd.example.not-a-manifest"},
        {"schemaVersion": 2, "mediaType": MT_OCI_INDEX},
        {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": [{"digest": 1}]},
        ["a", "list"],
        "a string",
        None,
    ]
    for bad in bad_docs:
        body = json.dumps(bad).encode()
        r = client.put(
            f"/v2/{repo}/manifests/bad", content=body, headers={"Content-Type": MT_OCI_IMAGE}
        )
        assert_oci_error(r, 400, "MANIFEST_INVALID")
    for raw in (b"blablabla", b"", b"\xff\xfe\x00", b"[" * 100000, b'{"a":' * 50000):
        r = client.put(
            f"/v2/{repo}/manifests/bad", content=raw, headers={"Content-Type": MT_OCI_IMAGE}
        )
        assert_oci_error(r, 400, "MANIFEST_INVALID")
    # the Content-Type and the body's mediaType disagree
    r = client.put(
        f"/v2/{repo}/manifests/bad",
        content=json.dumps(doc).encode(),
        headers={"Content-Type": MT_OCI_INDEX},
    )
    assert_oci_error(r, 400, "MANIFEST_INVALID")
    # an invalid tag, in the path or as a `?tag=` parameter
    body = json.dumps(doc).encode()
    for tag in ("-lead", ".dot", "a" * 129, "sp%20ace"):
        r = client.put(
            f"/v2/{repo}/manifests/{tag}", content=body, headers={"Content-Type": MT_OCI_IMAGE}
        )
        assert_oci_error(r, 400, "MANIFEST_INVALID")
        r = client.put(
            f"/v2/{repo}/manifests/{oci_digest(body)}",
            params={"tag": tag},
            content=body,
            headers={"Content-Type": MT_OCI_IMAGE},
        )
        assert_oci_error(r, 400, "MANIFEST_INVALID")
    assert client.get(f"/v2/{repo}/manifests/{oci_digest(body)}").status_code == 404


def test_error_schema1_refused(client: httpx.Client) -> None:
    repo = unique_repo()
    schema1 = {
        "schemaVersion": 1,
        "name": repo,
        "tag": "latest",
        "architecture": "amd64",
        "fsLayers": [],
        "history": [],
    }
    body = json.dumps(schema1).encode()
    for ct in (
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/json",
        None,
    ):
        headers = {"Content-Type": ct} if ct else {}
        r = client.put(f"/v2/{repo}/manifests/latest", content=body, headers=headers)
        assert_oci_error(r, 400, "MANIFEST_INVALID")
    # a schema 1 Content-Type is refused whatever the body says
    r = client.put(
        f"/v2/{repo}/manifests/latest",
        content=b'{"schemaVersion":2}',
        headers={"Content-Type": "application/vnd.docker.distribution.manifest.v1+prettyjws"},
    )
    assert_oci_error(r, 400, "MANIFEST_INVALID")


def test_error_manifest_blob_unknown(client: httpx.Client) -> None:
    repo = unique_repo()
    doc, layer = _image(client, repo)
    missing = oci_digest(secrets.token_bytes(32))
    config = doc["config"]
    layers = doc["layers"]
    assert isinstance(config, dict)
    assert isinstance(layers, list)
    for bad in (
        {**doc, "config": {**config, "digest": missing}},
        {**doc, "layers": [*layers, {**layers[0], "digest": missing}]},
    ):
        r = client.put(
            f"/v2/{repo}/manifests/t",
            content=json.dumps(bad).encode(),
            headers={"Content-Type": MT_OCI_IMAGE},
        )
        assert_oci_error(r, 400, "MANIFEST_BLOB_UNKNOWN")
    # a blob pushed to another repository does not count
    other = unique_repo()
    r = client.put(
        f"/v2/{other}/manifests/t",
        content=json.dumps(doc).encode(),
        headers={"Content-Type": MT_OCI_IMAGE},
    )
    assert_oci_error(r, 400, "MANIFEST_BLOB_UNKNOWN")
    # an index whose child manifest is not in the repository
    index = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_INDEX,
        "manifests": [{"mediaType": MT_OCI_IMAGE, "digest": missing, "size": 100}],
    }
    r = client.put(
        f"/v2/{repo}/manifests/i",
        content=json.dumps(index).encode(),
        headers={"Content-Type": MT_OCI_INDEX},
    )
    assert_oci_error(r, 400, "MANIFEST_BLOB_UNKNOWN")
    # a deleted blob is unknown again
    assert client.delete(f"/v2/{repo}/blobs/{layer}").status_code == 202
    r = client.put(
        f"/v2/{repo}/manifests/t",
        content=json.dumps(doc).encode(),
        headers={"Content-Type": MT_OCI_IMAGE},
    )
    assert_oci_error(r, 400, "MANIFEST_BLOB_UNKNOWN")


def test_error_manifest_digest_mismatch(client: httpx.Client) -> None:
    repo = unique_repo()
    doc, _ = _image(client, repo)
    body = json.dumps(doc).encode()
    for algo in ALGOS:
        wrong = oci_digest(body + b" ", algo)
        r = client.put(
            f"/v2/{repo}/manifests/{wrong}", content=body, headers={"Content-Type": MT_OCI_IMAGE}
        )
        assert_oci_error(r, 400, "DIGEST_INVALID")
        assert client.get(f"/v2/{repo}/manifests/{wrong}").status_code == 404
    for algo in ALGOS:  # the right digest in either algorithm is accepted
        r = client.put(
            f"/v2/{repo}/manifests/{oci_digest(body, algo)}",
            content=body,
            headers={"Content-Type": MT_OCI_IMAGE},
        )
        assert r.status_code == 201
        assert r.headers["docker-content-digest"] == oci_digest(body, algo)


def test_error_manifest_too_large(client: httpx.Client) -> None:
    """Over 4 MiB: 413 (declared by Content-Length, or found while streaming)."""
    repo = unique_repo()
    body = b'{"schemaVersion":2,"x":"' + b"a" * (4 * 1024 * 1024) + b'"}'
    r = client.put(
        f"/v2/{repo}/manifests/big", content=body, headers={"Content-Type": MT_OCI_IMAGE}
    )
    assert_oci_error(r, 413, "SIZE_INVALID")

    def streamed() -> Iterator[bytes]:
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    r = client.put(
        f"/v2/{repo}/manifests/big", content=streamed(), headers={"Content-Type": MT_OCI_IMAGE}
    )
    assert_oci_error(r, 413, "SIZE_INVALID")
    assert client.get(f"/v2/{repo}/manifests/big").status_code == 404


def test_error_unsupported_methods(client: httpx.Client) -> None:
    repo = unique_repo()
    digest = oci_digest(b"x")
    for method, url in (
        ("PATCH", f"/v2/{repo}/manifests/latest"),
        ("POST", f"/v2/{repo}/manifests/latest"),
        ("PUT", f"/v2/{repo}/blobs/{digest}"),
        ("PATCH", f"/v2/{repo}/blobs/{digest}"),
        ("DELETE", f"/v2/{repo}/tags/list"),
        ("PUT", "/v2/_catalog"),
        ("POST", f"/v2/{repo}/referrers/{digest}"),
        ("GET", f"/v2/{repo}/blobs/uploads/"),
    ):
        r = client.request(method, url)
        assert_oci_error(r, 405, "UNSUPPORTED")
