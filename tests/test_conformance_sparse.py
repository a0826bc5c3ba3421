"""OCI distribution-spec conformance, the sparse data set (OCI_DATA_SPARSE), ported to pytest.

run.go's "sparse" data (tests/datasets.py `build_sparse`): an image whose one layer is
never pushed, and an index whose arm64 child manifest is never pushed. The runner pushes
it (blobs, manifests by digest, then tags), lists the tags (with `last`), HEADs and GETs
every tag, manifest and pushed blob, then deletes tags, manifests newest first and blobs,
each delete checked by a HEAD answering 404. Here that runs in a namespace with
allow-sparse on (`POST /api/v0/policies`); without it the sparse manifests are refused
with `MANIFEST_BLOB_UNKNOWN` and nothing of them is stored.
"""

from __future__ import annotations

import json
import secrets

import httpx

from tests.datasets import Dataset, build_sparse, push_dataset
from tests.oci import (
    BLOB_PUSHERS,
    MT_OCI_IMAGE,
    MT_OCI_INDEX,
    assert_oci_error,
    blob_delete_atomic,
    blob_get_exists,
    blob_head_exists,
    manifest_get_exists,
    manifest_head_exists,
    manifest_put,
)


def namespace(client: httpx.Client, allow_sparse: bool | None) -> str:
    """A namespace of this test's own, with allow-sparse set as asked (None: no policy)."""
    ns = f"sparse-{secrets.token_hex(6)}"
    if allow_sparse is not None:
        r = client.post("/api/v0/policies", json={"on": ns, "allow_sparse": allow_sparse})
        assert r.status_code == 200, r.text
        assert r.json()["policy"]["allow_sparse"] is allow_sparse
    return ns


def absent_of(td: Dataset) -> tuple[str, str]:
    """The layer the sparse image names but nobody pushed, and the index's absent child."""
    image = json.loads(td.manifests[td.tags["sparse-image"]])
    index = json.loads(td.manifests[td.tags["sparse-index"]])
    (dropped,) = [d["digest"] for d in image["layers"] if d["digest"] not in td.blobs]
    (child,) = [m["digest"] for m in index["manifests"] if m["digest"] not in td.manifests]
    return str(dropped), str(child)


def test_sparse_data_set_where_allowed(client: httpx.Client) -> None:
    """run.go TestPush, TestList, TestHead, TestPull and TestDelete of the sparse data."""
    td = build_sparse()
    repo = f"{namespace(client, True)}/mirror"
    push_dataset(client, repo, td)
    assert len(td.man_order) == 3

    # TestList: every tag listed, and `last` starts after the first half.
    r = client.get(f"/v2/{repo}/tags/list")
    assert r.status_code == 200
    tags = sorted(r.json()["tags"])
    assert tags == sorted(td.tags)
    r = client.get(f"/v2/{repo}/tags/list", params={"last": tags[0]})
    assert r.status_code == 200
    assert r.json()["tags"] == tags[1:]

    # TestHead and TestPull: by tag, by digest, every pushed blob.
    for tag, dig in td.tags.items():
        manifest_head_exists(client, repo, tag, dig, td.manifests[dig])
        manifest_get_exists(client, repo, tag, dig, td.manifests[dig])
    for dig in td.man_order:
        manifest_head_exists(client, repo, dig, dig, td.manifests[dig])
        manifest_get_exists(client, repo, dig, dig, td.manifests[dig])
    for dig, body in td.blobs.items():
        blob_head_exists(client, repo, dig, body)
        blob_get_exists(client, repo, dig, body)
    # What was never pushed stays absent: a pull of it is the spec's 404.
    dropped, child = absent_of(td)
    assert_oci_error(client.get(f"/v2/{repo}/blobs/{dropped}"), 404, "BLOB_UNKNOWN")
    assert client.head(f"/v2/{repo}/blobs/{dropped}").status_code == 404
    r = client.get(f"/v2/{repo}/manifests/{child}", headers={"Accept": MT_OCI_IMAGE})
    assert_oci_error(r, 404, "MANIFEST_UNKNOWN")

    # TestDelete: tags, manifests newest first, blobs; each gone at once.
    for tag in td.tags:
        r = client.delete(f"/v2/{repo}/manifests/{tag}")
        assert r.status_code == 202, (tag, r.text)
        assert client.head(f"/v2/{repo}/manifests/{tag}").status_code == 404
    for dig in reversed(td.man_order):
        r = client.delete(f"/v2/{repo}/manifests/{dig}")
        assert r.status_code == 202, (dig, r.text)
        assert client.head(f"/v2/{repo}/manifests/{dig}").status_code == 404
    for dig in td.blobs:
        blob_delete_atomic(client, repo, dig)
    r = client.get(f"/v2/{repo}/tags/list")
    assert r.status_code == 200
    assert r.json()["tags"] == []


def test_sparse_data_set_refused_without_allow_sparse(client: httpx.Client) -> None:
    """No policy, and a policy saying no: the sparse image and the sparse index are refused
    with 400 MANIFEST_BLOB_UNKNOWN (by digest and by tag) and leave nothing behind; the
    complete amd64 image of the same data set is accepted."""
    for allow in (None, False):
        td = build_sparse()
        repo = f"{namespace(client, allow)}/mirror"
        for i, (dig, body) in enumerate(td.blobs.items()):
            BLOB_PUSHERS[i % len(BLOB_PUSHERS)](client, repo, dig, body)
        sparse_image, index = td.tags["sparse-image"], td.tags["sparse-index"]
        (complete,) = [d for d in td.man_order if d not in (sparse_image, index)]
        manifest_put(client, repo, complete, complete, td.manifests[complete])
        for dig, mt in ((sparse_image, MT_OCI_IMAGE), (index, MT_OCI_INDEX)):
            for ref in (dig, *[t for t, d in td.tags.items() if d == dig]):
                r = client.put(
                    f"/v2/{repo}/manifests/{ref}",
                    content=td.manifests[dig],
                    headers={"Content-Type": mt},
                )
                assert_oci_error(r, 400, "MANIFEST_BLOB_UNKNOWN")
                assert client.head(f"/v2/{repo}/manifests/{ref}").status_code == 404
        r = client.get(f"/v2/{repo}/tags/list")
        assert r.status_code == 200
        assert r.json()["tags"] == []
        # Allowed afterwards, the same bytes go in (the policy is read afresh).
        if allow is False:
            r = client.post(
                "/api/v0/policies", json={"on": repo.split("/")[0], "allow_sparse": True}
            )
            assert r.status_code == 200, r.text
            for tag, dig in td.tags.items():
                manifest_put(client, repo, tag, dig, td.manifests[dig])
