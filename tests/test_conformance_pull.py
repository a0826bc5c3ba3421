"""OCI distribution-spec conformance, pull workflow, ported to pytest.

Ported from opencontainers/distribution-spec `conformance/`: the Ginkgo suite's
01_pull_test.go (setup, blob and manifest HEAD/GET, error codes, teardown) and the newer
runner's pull checks (run.go/api.go: ping, missing blobs and manifests, invalid digest
format, range requests for sha256 and sha512, HEAD and GET of every data set by tag and by
digest with Content-Type, Content-Length, body and Docker-Content-Digest). Plus the error
paths a puller can trigger, each checked for status, JSON envelope and code.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import httpx
import pytest
from harness.replica import Replica

from tests.datasets import Dataset, build_datasets, push_dataset
from tests.legacy_data import LegacyData
from tests.oci import (
    BLOB_PUSHERS,
    MT_OCI_IMAGE,
    OCI_ERROR_CODES,
    assert_deleted_or_absent,
    assert_oci_error,
    blob_delete_atomic,
    blob_get_exists,
    blob_head_exists,
    blob_post_put,
    manifest_get_exists,
    manifest_head_exists,
    oci_digest,
    rand_text,
    unique_repo,
)

DATASETS = list(build_datasets())


# -- 01_pull_test.go ----------------------------------------------------------------------


@dataclass
class PullState:
    repo: str
    data: LegacyData
    tag: str


@pytest.fixture(scope="module")
def pull(registry: Replica) -> PullState:
    """01_pull_test.go "Setup": two configs, a layer, manifest[0] by tag, [1] by digest."""
    data = LegacyData()
    repo = unique_repo("conformance-pull")
    with registry.client() as c:
        data.push_blob(c, repo, data.configs[0])
        data.push_blob(c, repo, data.configs[1])
        data.push_blob(c, repo, data.layer)
        data.push_manifest(c, repo, "tagtest0", data.manifests[0])
        data.push_manifest(c, repo, oci_digest(data.manifests[1]), data.manifests[1])
    return PullState(repo, data, "tagtest0")


def test_head_nonexistent_blob_is_404(client: httpx.Client, pull: PullState) -> None:
    r = client.head(f"/v2/{pull.repo}/blobs/{LegacyData.DUMMY_DIGEST}")
    assert r.status_code == 404


def test_head_existing_blob_is_200(client: httpx.Client, pull: PullState) -> None:
    digest = oci_digest(pull.data.configs[0])
    r = client.head(f"/v2/{pull.repo}/blobs/{digest}")
    assert r.status_code == 200
    assert r.headers["docker-content-digest"] == digest


def test_get_nonexistent_blob_is_404(client: httpx.Client, pull: PullState) -> None:
    r = client.get(f"/v2/{pull.repo}/blobs/{LegacyData.DUMMY_DIGEST}")
    assert r.status_code == 404


def test_get_existing_blob_is_200(client: httpx.Client, pull: PullState) -> None:
    r = client.get(f"/v2/{pull.repo}/blobs/{oci_digest(pull.data.configs[0])}")
    assert r.status_code == 200
    assert r.content == pull.data.configs[0]


def test_head_nonexistent_manifest_is_404(client: httpx.Client, pull: PullState) -> None:
    r = client.head(f"/v2/{pull.repo}/manifests/{LegacyData.NONEXISTENT_MANIFEST}")
    assert r.status_code == 404


@pytest.mark.parametrize("index", [0, 1])
def test_head_manifest_by_digest_is_200(client: httpx.Client, pull: PullState, index: int) -> None:
    digest = oci_digest(pull.data.manifests[index])
    r = client.head(f"/v2/{pull.repo}/manifests/{digest}", headers={"Accept": MT_OCI_IMAGE})
    assert r.status_code == 200
    assert r.headers["docker-content-digest"] == digest


def test_head_manifest_by_tag_is_200(client: httpx.Client, pull: PullState) -> None:
    r = client.head(f"/v2/{pull.repo}/manifests/{pull.tag}", headers={"Accept": MT_OCI_IMAGE})
    assert r.status_code == 200
    assert r.headers["docker-content-digest"] == oci_digest(pull.data.manifests[0])


def test_get_nonexistent_manifest_is_404(client: httpx.Client, pull: PullState) -> None:
    r = client.get(f"/v2/{pull.repo}/manifests/{LegacyData.NONEXISTENT_MANIFEST}")
    assert_oci_error(r, 404, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize("index", [0, 1])
def test_get_manifest_by_digest_is_200(client: httpx.Client, pull: PullState, index: int) -> None:
    digest = oci_digest(pull.data.manifests[index])
    r = client.get(f"/v2/{pull.repo}/manifests/{digest}", headers={"Accept": MT_OCI_IMAGE})
    assert r.status_code == 200
    assert r.content == pull.data.manifests[index], "manifests are served byte for byte"


def test_get_manifest_by_tag_is_200(client: httpx.Client, pull: PullState) -> None:
    r = client.get(f"/v2/{pull.repo}/manifests/{pull.tag}", headers={"Accept": MT_OCI_IMAGE})
    assert r.status_code == 200
    assert r.content == pull.data.manifests[0]


def test_400_body_is_oci_conforming_json(client: httpx.Client, pull: PullState) -> None:
    """ "Error codes": GET of a malformed digest (with a bogus body) is 400 or 404."""
    r = client.request(
        "GET",
        f"/v2/{pull.repo}/manifests/sha256:totallywrong",
        content=LegacyData.INVALID_MANIFEST,
        headers={"Content-Type": MT_OCI_IMAGE},
    )
    assert r.status_code in (400, 404)
    if r.status_code == 400:
        errors = r.json()["errors"]
        assert errors
        assert errors[0]["code"] in OCI_ERROR_CODES


def test_teardown(client: httpx.Client, pull: PullState) -> None:
    """ "Teardown" (manifests before blobs): deletes answer 2xx (or 404/405 where allowed)."""
    for body in pull.data.manifests[:2]:
        r = client.delete(f"/v2/{pull.repo}/manifests/{oci_digest(body)}")
        assert_deleted_or_absent(r, 405)
        assert r.status_code == 202
    for blob in (pull.data.configs[0], pull.data.configs[1], pull.data.layer):
        r = client.delete(f"/v2/{pull.repo}/blobs/{oci_digest(blob)}")
        assert_deleted_or_absent(r, 404, 405)
        assert r.status_code == 202


# -- the newer runner (run.go) --------------------------------------------------------------


def test_ping(client: httpx.Client) -> None:
    """TestPing: GET /v2/."""
    r = client.get("/v2/")
    assert r.status_code == 200
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"


@pytest.mark.parametrize("algo", ["sha256", "sha512"])
def test_get_missing_blob(client: httpx.Client, algo: str) -> None:
    """TestBlobAPIs "get-missing": a blob never pushed is 404."""
    repo = unique_repo()
    digest = oci_digest(secrets.token_bytes(512), algo)
    assert_oci_error(client.get(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    r = client.head(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 404
    assert r.content == b""


def test_missing_manifest_by_digest(client: httpx.Client) -> None:
    """TestManifestErrors "missing-manifest/by-digest"."""
    digest = oci_digest(secrets.token_bytes(1024))
    r = client.get(
        f"/v2/{unique_repo()}/manifests/{digest}",
        headers={"Accept": "application/vnd.oci.image.index.v1+json, " + MT_OCI_IMAGE},
    )
    assert_oci_error(r, 404, "MANIFEST_UNKNOWN")


def test_missing_manifest_by_tag(client: httpx.Client) -> None:
    """TestManifestErrors "missing-manifest/by-tag"."""
    tag = f"missing-{rand_text().lower()[:20]}"
    r = client.get(f"/v2/{unique_repo()}/manifests/{tag}")
    assert_oci_error(r, 404, "MANIFEST_UNKNOWN")


def test_invalid_digest_format(client: httpx.Client) -> None:
    """TestManifestErrors "invalid-digest-format": PUT is 400, GET is 404 or 400."""
    repo = unique_repo()
    td = Dataset("invalid-manifest-digest")
    digest = td.gen_manifest_full(layer_count=1)
    for i, (dig, body) in enumerate(td.blobs.items()):
        BLOB_PUSHERS[i % len(BLOB_PUSHERS)](client, repo, dig, body)
    r = client.put(
        f"/v2/{repo}/manifests/sha256:baddigeststring",
        content=td.manifests[digest],
        headers={"Content-Type": MT_OCI_IMAGE},
    )
    assert_oci_error(r, 400, "DIGEST_INVALID")
    r = client.get(f"/v2/{repo}/manifests/sha256:baddigeststring")
    assert r.status_code in (404, 400)
    assert r.json()["errors"][0]["code"] in OCI_ERROR_CODES
    # cleanup (TestDelete): the manifest was never stored, the blobs go
    r = client.delete(f"/v2/{repo}/manifests/{digest}")
    assert r.status_code == 404
    for dig in td.blobs:
        blob_delete_atomic(client, repo, dig)


@pytest.mark.parametrize("algo", ["sha256", "sha512"])
def test_range_requests(client: httpx.Client, algo: str) -> None:
    """TestBlobAPIs "range requests": 206 with Content-Range, 416 when unsatisfiable."""
    repo = unique_repo()
    size = 2048
    body = secrets.token_bytes(size)
    digest = oci_digest(body, algo)
    blob_post_put(client, repo, digest, body)
    partial = [
        ("bytes=500-1499", body[500:1500], 500, 1499),
        ("bytes=500-", body[500:], 500, size - 1),
        ("bytes=-500", body[size - 500 :], size - 500, size - 1),
        ("bytes=2000-5000", body[2000:], 2000, size - 1),
    ]
    for header, want, first, last in partial:
        r = client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": header})
        assert r.status_code == 206, (header, r.status_code)
        assert r.content == want, header
        assert r.headers["content-length"] == str(len(want))
        assert r.headers["content-range"] in (
            f"bytes {first}-{last}/{size}",
            f"bytes {first}-{last}/*",
        )
    for header in ("bytes=500-0", "bytes=5000-10000"):
        r = client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": header})
        assert r.status_code == 416, (header, r.status_code)
        assert r.headers["content-range"] == f"bytes */{size}"
    blob_delete_atomic(client, repo, digest)


def test_range_request_edge_cases(client: httpx.Client) -> None:
    """Ranges the suite does not send: ignored when malformed, never a 500."""
    repo = unique_repo()
    body = secrets.token_bytes(100)
    digest = oci_digest(body)
    blob_post_put(client, repo, digest, body)
    url = f"/v2/{repo}/blobs/{digest}"
    for header in ("bytes=abc", "items=0-5", "bytes=0-1,5-6", "bytes=", "bytes=--1"):
        r = client.get(url, headers={"Range": header})
        assert r.status_code == 200, header
        assert r.content == body
    r = client.get(url, headers={"Range": "bytes=0-0"})
    assert (r.status_code, r.content) == (206, body[:1])
    r = client.get(url, headers={"Range": "bytes=99-"})
    assert (r.status_code, r.content) == (206, body[99:])
    r = client.get(url, headers={"Range": "bytes=-1000"})
    assert (r.status_code, r.content) == (206, body)
    for header in ("bytes=100-", "bytes=-0"):
        assert client.get(url, headers={"Range": header}).status_code == 416
    r = client.head(url, headers={"Range": "bytes=0-9"})
    assert r.status_code in (200, 206)
    assert r.content == b""


def test_conditional_requests(client: httpx.Client) -> None:
    """If-None-Match naming the ETag (the digest) is a 304 without a body, for blobs and
    manifests, GET and HEAD; If-Range naming another ETag sends the whole blob (RFC 9110)."""
    repo = unique_repo()
    td = build_datasets()[DATASETS[0]]
    push_dataset(client, repo, td)
    tag, digest = next((t, d) for t, d in td.tags.items() if d not in td.bad_digest)
    etag = f'"{digest}"'
    for method in ("GET", "HEAD"):
        r = client.request(method, f"/v2/{repo}/manifests/{tag}", headers={"If-None-Match": etag})
        assert r.status_code == 304, (method, r.status_code)
        assert r.content == b""
        assert r.headers["docker-content-digest"] == digest
        assert r.headers["etag"] == etag
        other = {"If-None-Match": '"sha256:' + "0" * 64 + '"'}
        assert (
            client.request(method, f"/v2/{repo}/manifests/{tag}", headers=other).status_code == 200
        )
    body = secrets.token_bytes(100)
    blob = oci_digest(body)
    blob_post_put(client, repo, blob, body)
    url = f"/v2/{repo}/blobs/{blob}"
    for value in (f'"{blob}"', f'W/"{blob}"', f'"x", "{blob}"', "*"):
        for method in ("GET", "HEAD"):
            r = client.request(method, url, headers={"If-None-Match": value})
            assert r.status_code == 304, (value, method, r.status_code)
            assert r.content == b""
    r = client.get(url, headers={"Range": "bytes=0-9", "If-Range": f'"{blob}"'})
    assert (r.status_code, r.content) == (206, body[:10])
    r = client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"sha256:other"'})
    assert (r.status_code, r.content) == (200, body)
    assert r.headers["content-length"] == "100"
    blob_delete_atomic(client, repo, blob)


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_head_and_pull(client: httpx.Client, name: str) -> None:
    """TestHead and TestPull for every data set: tags, manifests by digest, blobs."""
    td = build_datasets()[name]
    repo = unique_repo()
    push_dataset(client, repo, td)
    for tag, dig in td.tags.items():
        if dig in td.bad_digest:
            continue
        manifest_head_exists(client, repo, tag, dig, td.manifests[dig])
        manifest_get_exists(client, repo, tag, dig, td.manifests[dig])
    for dig in td.man_order:
        if dig in td.bad_digest:
            continue
        manifest_head_exists(client, repo, dig, dig, td.manifests[dig])
        manifest_get_exists(client, repo, dig, dig, td.manifests[dig])
    for dig, body in td.blobs.items():
        blob_head_exists(client, repo, dig, body)
        blob_get_exists(client, repo, dig, body)


# -- error paths of pulls --------------------------------------------------------------------


def test_error_name_invalid(client: httpx.Client) -> None:
    digest = oci_digest(b"x")
    for repo in ("UPPER", "a//b", "-lead", "a" * 256, "trail-"):
        assert_oci_error(client.get(f"/v2/{repo}/blobs/{digest}"), 400, "NAME_INVALID")
        assert_oci_error(client.get(f"/v2/{repo}/manifests/latest"), 400, "NAME_INVALID")
        assert_oci_error(client.get(f"/v2/{repo}/tags/list"), 400, "NAME_INVALID")


def test_error_digest_invalid_on_blob_get(client: httpx.Client) -> None:
    repo = unique_repo()
    for bad in (
        "sha256:abc",
        "sha256:" + "A" * 64,
        "sha1:" + "a" * 40,
        "md5:" + "a" * 32,
        "nocolon",
        "sha512:" + "a" * 64,
    ):
        assert_oci_error(client.get(f"/v2/{repo}/blobs/{bad}"), 400, "DIGEST_INVALID")
        assert client.head(f"/v2/{repo}/blobs/{bad}").status_code == 400


def test_error_manifest_unknown(client: httpx.Client) -> None:
    repo = unique_repo()
    for ref in ("latest", ".INVALID_MANIFEST_NAME", "-bad", "x" * 200, oci_digest(b"nope")):
        assert_oci_error(client.get(f"/v2/{repo}/manifests/{ref}"), 404, "MANIFEST_UNKNOWN")
        r = client.head(f"/v2/{repo}/manifests/{ref}")
        assert r.status_code == 404
        assert r.content == b""


def test_error_blob_unknown_in_other_repo(client: httpx.Client) -> None:
    """A blob is visible only in the repositories it was pushed or mounted to."""
    repo, other = unique_repo(), unique_repo()
    body = secrets.token_bytes(64)
    digest = oci_digest(body)
    blob_post_put(client, repo, digest, body)
    assert_oci_error(client.get(f"/v2/{other}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
