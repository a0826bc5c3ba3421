"""OCI distribution-spec conformance, content management workflow, ported to pytest.

Ported from opencontainers/distribution-spec `conformance/`: the Ginkgo suite's
04_management_test.go (tag delete, manifest delete, the deleted manifest and tag list,
blob delete and the deleted blob) and 07_error_codes_test.go, and the newer runner's
TestDelete for every data set (run.go: tag, manifest and blob deletes answer 202 and take
effect at once, checked by HEAD). Deletes answer exactly 202. Plus the error paths of
deletes, checked for status, JSON envelope and code.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import httpx
import pytest
from harness.replica import Replica

from tests.datasets import build_datasets, push_dataset
from tests.legacy_data import LegacyData
from tests.oci import (
    MT_OCI_IMAGE,
    OCI_ERROR_CODES,
    assert_oci_error,
    blob_delete_atomic,
    blob_post_put,
    oci_digest,
    unique_repo,
)

DATASETS = list(build_datasets())


# -- 04_management_test.go -----------------------------------------------------------------


@dataclass
class ManagementState:
    repo: str
    data: LegacyData
    tag: str = "tagtest0"
    num_tags: int = 0


@pytest.fixture(scope="module")
def mgmt(registry: Replica) -> ManagementState:
    """ "Setup": config[3], the layer, manifest[3] as tagtest0; count the tags."""
    data = LegacyData()
    state = ManagementState(unique_repo("conformance-management"), data)
    with registry.client() as c:
        data.push_blob(c, state.repo, data.configs[3])
        data.push_blob(c, state.repo, data.layer)
        data.push_manifest(c, state.repo, state.tag, data.manifests[3])
        data.push_manifest(c, state.repo, "keep", data.manifests[3])
        r = c.get(f"/v2/{state.repo}/tags/list")
        assert r.status_code == 200
        state.num_tags = len(r.json()["tags"])
    return state


def test_delete_tag_is_202(client: httpx.Client, mgmt: ManagementState) -> None:
    r = client.delete(f"/v2/{mgmt.repo}/manifests/{mgmt.tag}")
    assert r.status_code == 202
    assert r.content == b""
    # the tag is gone at once, the manifest stays by digest and under its other tag
    assert client.head(f"/v2/{mgmt.repo}/manifests/{mgmt.tag}").status_code == 404
    digest = oci_digest(mgmt.data.manifests[3])
    assert client.head(f"/v2/{mgmt.repo}/manifests/{digest}").status_code == 200
    assert client.head(f"/v2/{mgmt.repo}/manifests/keep").status_code == 200


def test_delete_manifest_by_digest_is_202(client: httpx.Client, mgmt: ManagementState) -> None:
    r = client.delete(f"/v2/{mgmt.repo}/manifests/{oci_digest(mgmt.data.manifests[3])}")
    assert r.status_code == 202
    assert r.content == b""


def test_get_deleted_manifest_is_404(client: httpx.Client, mgmt: ManagementState) -> None:
    r = client.get(f"/v2/{mgmt.repo}/manifests/{oci_digest(mgmt.data.manifests[3])}")
    assert_oci_error(r, 404, "MANIFEST_UNKNOWN")
    # its remaining tag went with it
    assert_oci_error(client.get(f"/v2/{mgmt.repo}/manifests/keep"), 404, "MANIFEST_UNKNOWN")


def test_tag_list_reflects_manifest_deletion(client: httpx.Client, mgmt: ManagementState) -> None:
    r = client.get(f"/v2/{mgmt.repo}/tags/list")
    assert r.status_code == 200
    tags = r.json()["tags"]
    assert len(tags) < mgmt.num_tags
    assert tags == []


def test_delete_blobs_is_202(client: httpx.Client, mgmt: ManagementState) -> None:
    for blob in (mgmt.data.configs[3], mgmt.data.layer):
        r = client.delete(f"/v2/{mgmt.repo}/blobs/{oci_digest(blob)}")
        assert r.status_code == 202
        assert r.content == b""


def test_get_deleted_blob_is_404(client: httpx.Client, mgmt: ManagementState) -> None:
    r = client.get(f"/v2/{mgmt.repo}/blobs/{oci_digest(mgmt.data.configs[3])}")
    assert_oci_error(r, 404, "BLOB_UNKNOWN")


def test_delete_deleted_tag_has_oci_error_code(client: httpx.Client, mgmt: ManagementState) -> None:
    """07_error_codes_test.go: the response to a tag DELETE carries an OCI code."""
    r = client.delete(f"/v2/{mgmt.repo}/manifests/{mgmt.tag}")
    assert r.status_code == 404
    errors = r.json()["errors"]
    assert errors
    assert errors[0]["code"] in OCI_ERROR_CODES


# -- run.go TestDelete for every data set ----------------------------------------------------


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_delete(client: httpx.Client, name: str) -> None:
    """Tags, then manifests newest first, then blobs: each DELETE is 202 and the next HEAD
    is 404 (the bad-digest manifest was never stored, so its DELETE is 404)."""
    td = build_datasets()[name]
    repo = unique_repo()
    push_dataset(client, repo, td)
    for tag in td.tags:
        if tag not in td.tag_pushed:
            continue
        r = client.delete(f"/v2/{repo}/manifests/{tag}")
        assert r.status_code == 202, (tag, r.text)
        r = client.head(f"/v2/{repo}/manifests/{tag}", headers={"Accept": MT_OCI_IMAGE})
        assert r.status_code == 404
    for dig in reversed(td.man_order):
        r = client.delete(f"/v2/{repo}/manifests/{dig}")
        if dig in td.bad_digest:
            assert_oci_error(r, 404, "MANIFEST_UNKNOWN")
        else:
            assert r.status_code == 202, (dig, r.text)
        assert client.head(f"/v2/{repo}/manifests/{dig}").status_code == 404
    for dig in td.blobs:
        blob_delete_atomic(client, repo, dig)
    r = client.get(f"/v2/{repo}/tags/list")
    assert r.status_code == 200
    assert r.json()["tags"] == []


# -- more management and the error paths of deletes ----------------------------------------


def test_blob_delete_is_per_repository(client: httpx.Client) -> None:
    """Deleting a blob from one repository leaves it in another that has it."""
    repo, other = unique_repo(), unique_repo()
    body = secrets.token_bytes(100)
    digest = oci_digest(body)
    blob_post_put(client, repo, digest, body)
    blob_post_put(client, other, digest, body)
    blob_delete_atomic(client, repo, digest)
    assert client.get(f"/v2/{other}/blobs/{digest}").content == body
    # and it can be pushed (or mounted) back
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"mount": digest, "from": other})
    assert r.status_code == 201
    assert client.get(f"/v2/{repo}/blobs/{digest}").content == body


def test_manifest_delete_by_sha512_digest(client: httpx.Client) -> None:
    td = build_datasets()["sha512"]
    repo = unique_repo()
    push_dataset(client, repo, td)
    top = td.man_order[-1]
    assert top.startswith("sha512:")
    assert client.delete(f"/v2/{repo}/manifests/{top}").status_code == 202
    assert client.head(f"/v2/{repo}/manifests/{top}").status_code == 404
    assert client.head(f"/v2/{repo}/manifests/{td.man_order[0]}").status_code == 200


def test_repush_after_delete(client: httpx.Client) -> None:
    td = build_datasets()["image"]
    repo = unique_repo()
    push_dataset(client, repo, td)
    digest = td.man_order[-1]
    assert client.delete(f"/v2/{repo}/manifests/{digest}").status_code == 202
    r = client.put(
        f"/v2/{repo}/manifests/image",
        content=td.manifests[digest],
        headers={"Content-Type": MT_OCI_IMAGE},
    )
    assert r.status_code == 201
    assert client.get(f"/v2/{repo}/manifests/image").content == td.manifests[digest]


def test_error_delete_unknown(client: httpx.Client) -> None:
    repo = unique_repo()
    digest = oci_digest(secrets.token_bytes(16))
    assert_oci_error(client.delete(f"/v2/{repo}/manifests/{digest}"), 404, "MANIFEST_UNKNOWN")
    for tag in ("latest", LegacyData.NONEXISTENT_MANIFEST, "-x"):
        assert_oci_error(client.delete(f"/v2/{repo}/manifests/{tag}"), 404, "MANIFEST_UNKNOWN")
    assert_oci_error(client.delete(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")


def test_error_delete_invalid(client: httpx.Client) -> None:
    repo = unique_repo()
    for bad in ("sha256:abc", "sha256:" + "Z" * 64, "sha1:" + "a" * 40):
        assert_oci_error(client.delete(f"/v2/{repo}/blobs/{bad}"), 400, "DIGEST_INVALID")
        assert_oci_error(client.delete(f"/v2/{repo}/manifests/{bad}"), 400, "DIGEST_INVALID")
    digest = oci_digest(b"x")
    assert_oci_error(client.delete(f"/v2/NOPE/blobs/{digest}"), 400, "NAME_INVALID")
    assert_oci_error(client.delete("/v2/NOPE/manifests/latest"), 400, "NAME_INVALID")
    assert_oci_error(client.delete(f"/v2/{repo}/referrers/{digest}"), 405, "UNSUPPORTED")
