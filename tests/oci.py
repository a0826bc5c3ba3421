"""OCI request helpers for the tests: media types, digests, the push and pull steps of the
distribution-spec conformance suite (a port of opencontainers/distribution-spec/conformance's
request helpers), and a small image to push and pull through a replica."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import uuid

import httpx
from harness.cluster import Node
from harness.replica import Replica

MT_OCTET = "application/octet-stream"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_IMAGE = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_OCI_LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_OCI_LAYER_PREFIX = "application/vnd.oci.image.layer.v1."
MT_OCI_LAYER_ND = "application/vnd.oci.image.layer.nondistributable.v1.tar"
MT_OCI_LAYER_ND_GZ = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
MT_OCI_EMPTY = "application/vnd.oci.empty.v1+json"
MT_EXAMPLE1 = "application/vnd.example.oci.conformance.v1"
MT_EXAMPLE2 = "application/vnd.example.oci.conformance.v2"
CHUNK_MIN = 1024
# The error codes of the distribution spec (setup.go's errorCodes).
OCI_ERROR_CODES = frozenset(
    {
        "BLOB_UNKNOWN",
        "BLOB_UPLOAD_INVALID",
        "BLOB_UPLOAD_UNKNOWN",
        "DIGEST_INVALID",
        "MANIFEST_BLOB_UNKNOWN",
        "MANIFEST_INVALID",
        "MANIFEST_UNKNOWN",
        "MANIFEST_UNVERIFIED",
        "NAME_INVALID",
        "NAME_UNKNOWN",
        "SIZE_INVALID",
        "TAG_INVALID",
        "UNAUTHORIZED",
        "DENIED",
        "UNSUPPORTED",
    }
)


def oci_digest(data: bytes, algo: str = "sha256") -> str:
    return f"{algo}:{hashlib.new(algo, data).hexdigest()}"


def unique_repo(prefix: str = "conformance") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:16]}"


def rand_text() -> str:
    """Like Go's crypto/rand.Text(): 26 random base32 characters."""

    return base64.b32encode(secrets.token_bytes(20)).decode()[:26]


def assert_oci_error(resp: httpx.Response, status: int, code: str) -> None:
    """Status, the spec's JSON envelope and its first code."""
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    assert resp.headers["content-type"].startswith("application/json")
    doc = resp.json()
    assert isinstance(doc, dict)
    assert isinstance(doc["errors"], list)
    assert doc["errors"], doc
    for err in doc["errors"]:
        assert isinstance(err["code"], str)
        assert isinstance(err["message"], str)
        assert "detail" in err
    assert doc["errors"][0]["code"] == code, doc


def verify_digest_header(resp: httpx.Response, digest: str) -> None:
    """api.VerifyDigest with RequireDigestHeader (the 1.1+dev configuration)."""
    assert resp.headers.get("docker-content-digest") == digest, dict(resp.headers)


def verify_blob_location(c: httpx.Client, loc: str, body: bytes) -> None:
    """api.BlobVerifyLocation: the returned Location serves the blob."""
    assert loc, "location header missing"
    r = c.get(loc)
    assert r.status_code == 200, r.text[:300]
    assert r.content == body


def upload_url(loc: str, **params: str) -> httpx.URL:
    return httpx.URL(loc).copy_merge_params(params)


def end_upload(
    c: httpx.Client, r: httpx.Response, digest: str, body: bytes, expect_bad: bool
) -> None:
    """The last step of an upload: 400 when the digest is bad, else 201, the digest header and
    a Location that serves the blob."""
    if expect_bad:
        assert r.status_code == 400, r.text
        return
    assert r.status_code == 201, r.text
    verify_digest_header(r, digest)
    verify_blob_location(c, r.headers.get("location", ""), body)


def blob_post_put(
    c: httpx.Client, repo: str, digest: str, body: bytes, expect_bad: bool = False
) -> None:
    """api.BlobPostPut: POST a session, PUT the whole blob with ?digest=."""
    r = c.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    loc = r.headers.get("location", "")
    assert loc, "blob post did not return a location"
    r = c.put(
        upload_url(loc, digest=digest),
        content=body,
        headers={"Content-Type": MT_OCTET, "Content-Length": str(len(body))},
    )
    end_upload(c, r, digest, body, expect_bad)


def blob_post_only(
    c: httpx.Client, repo: str, digest: str, body: bytes, expect_bad: bool = False
) -> None:
    """api.BlobPostOnly: one POST with ?digest= and the body (201, not the 202 fallback)."""
    r = c.post(
        f"/v2/{repo}/blobs/uploads/",
        params={"digest": digest},
        content=body,
        headers={"Content-Type": MT_OCTET, "Content-Length": str(len(body))},
    )
    end_upload(c, r, digest, body, expect_bad)


def blob_patch_stream(
    c: httpx.Client, repo: str, digest: str, body: bytes, expect_bad: bool = False
) -> None:
    """api.BlobPatchStream: POST, one PATCH without Content-Range, PUT with ?digest=."""
    r = c.post(f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
    assert r.status_code == 202, r.text
    loc = r.headers.get("location", "")
    assert loc
    r = c.patch(loc, content=body, headers={"Content-Type": MT_OCTET})
    assert r.status_code == 202, r.text
    loc = r.headers.get("location", "")
    assert loc, "blob patch did not return a location"
    r = c.put(
        upload_url(loc, digest=digest),
        headers={"Content-Type": MT_OCTET, "Content-Length": "0"},
    )
    end_upload(c, r, digest, body, expect_bad)


def blob_patch_chunked(
    c: httpx.Client,
    repo: str,
    digest: str,
    body: bytes,
    put_last_chunk: bool = False,
    out_of_order: bool = False,
    expect_bad: bool = False,
) -> str:
    """api.BlobPatchChunked, flags included; returns the POST's OCI-Chunk-Min-Length."""
    r = c.post(f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
    assert r.status_code == 202, r.text
    min_str: str = r.headers.get("oci-chunk-min-length", "")
    loc = r.headers.get("location", "")
    chunk_size = len(body) // 3 + 1
    if min_str:
        chunk_size = max(chunk_size, int(min_str))
    chunk_size = max(chunk_size, CHUNK_MIN)
    chunk_size = min(chunk_size, len(body))
    last_byte = -1
    url = httpx.URL(loc)
    final: httpx.Response | None = None
    while last_byte < len(body) - 1:
        if out_of_order:
            assert loc, "blob request did not return a location"
            url = httpx.URL(loc)
            bad_start = last_byte + 1 + chunk_size
            if bad_start >= len(body):
                bad_start = 0
            bad_last = min(bad_start + chunk_size - 1, len(body) - 1)
            method = "PATCH"
            if put_last_chunk and bad_last == len(body) - 1:
                method = "PUT"
                url = url.copy_merge_params({"digest": digest})
            r = c.request(
                method,
                url,
                content=body[bad_start : bad_last + 1],
                headers={
                    "Content-Type": MT_OCTET,
                    "Content-Range": f"{bad_start}-{bad_last}",
                    "Content-Length": str(bad_last - bad_start + 1),
                },
            )
            assert r.status_code == 416, (method, r.status_code, r.text)
            loc = r.headers.get("location") or loc
            # recover with a GET to find the upload's location and range
            r = c.get(url)
            assert r.status_code == 204, r.text
            loc = r.headers.get("location") or loc
            rng = r.headers.get("range", "")
            assert rng.startswith("0-"), rng
            if last_byte >= 0:
                assert int(rng[2:]) == last_byte, (rng, last_byte)
        assert loc, "blob request did not return a location"
        url = httpx.URL(loc)
        start = last_byte + 1
        last_byte = min(start + chunk_size - 1, len(body) - 1)
        headers = {
            "Content-Type": MT_OCTET,
            "Content-Range": f"{start}-{last_byte}",
            "Content-Length": str(last_byte - start + 1),
        }
        chunk = body[start : last_byte + 1]
        if put_last_chunk and last_byte == len(body) - 1:
            url = url.copy_merge_params({"digest": digest})
            r = c.put(url, content=chunk, headers=headers)
            if expect_bad:
                assert r.status_code == 400, r.text
                return min_str
            assert r.status_code == 201, r.text
            loc = r.headers.get("location") or loc
            final = r
        else:
            r = c.patch(url, content=chunk, headers=headers)
            assert r.status_code == 202, r.text
            loc = r.headers.get("location") or loc
    if not put_last_chunk:
        assert loc, "blob patch did not return a location"
        url = httpx.URL(loc).copy_merge_params({"digest": digest})
        r = c.put(url, headers={"Content-Type": MT_OCTET, "Content-Length": "0"})
        if expect_bad:
            assert r.status_code == 400, r.text
            return min_str
        assert r.status_code == 201, r.text
        loc = r.headers.get("location") or loc
        final = r
    assert final is not None
    verify_digest_header(final, digest)
    verify_blob_location(c, loc, body)
    return min_str


BLOB_PUSHERS = (blob_post_put, blob_post_only, blob_patch_stream, blob_patch_chunked)


def blob_head_exists(c: httpx.Client, repo: str, digest: str, body: bytes) -> None:
    """api.BlobHeadExists: 200, empty body, Content-Length, Docker-Content-Digest."""
    r = c.head(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200, r.status_code
    assert r.content == b""
    assert r.headers["content-length"] == str(len(body))
    verify_digest_header(r, digest)


def blob_get_exists(c: httpx.Client, repo: str, digest: str, body: bytes) -> None:
    """api.BlobGetExistsFull: 200, the bytes, Content-Length, Docker-Content-Digest."""
    r = c.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200, r.status_code
    assert r.content == body
    assert r.headers["content-length"] == str(len(body))
    verify_digest_header(r, digest)


def blob_delete_atomic(c: httpx.Client, repo: str, digest: str) -> None:
    """TestDeleteBlob: DELETE answers 202, then HEAD answers 404 at once."""
    r = c.delete(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 202, r.text
    assert c.head(f"/v2/{repo}/blobs/{digest}").status_code == 404


def detect_media_type(body: bytes) -> str:
    """api.go detectMediaType: the body's mediaType, defaulting to the OCI image manifest."""

    try:
        doc = json.loads(body)
    except ValueError:
        return MT_OCI_IMAGE
    mt = doc.get("mediaType") if isinstance(doc, dict) else None
    return mt if isinstance(mt, str) else MT_OCI_IMAGE


def detect_subject(body: bytes) -> str | None:

    try:
        doc = json.loads(body)
    except ValueError:
        return None
    subject = doc.get("subject") if isinstance(doc, dict) else None
    return subject["digest"] if isinstance(subject, dict) else None


# api.go sends the two media types as two Accept headers
ACCEPT_MANIFESTS = [("Accept", MT_OCI_INDEX), ("Accept", MT_OCI_IMAGE)]


def manifest_put(
    c: httpx.Client,
    repo: str,
    ref: str,
    digest: str,
    body: bytes,
    tags: list[str] | tuple[str, ...] = (),
    expect_bad: bool = False,
) -> httpx.Response:
    """api.ManifestPut with referrers, digest header and `?tag=` checks on."""
    mt = detect_media_type(body)
    params: list[tuple[str, str | int | float | bool | None]] = [("tag", t) for t in tags]
    r = c.put(
        f"/v2/{repo}/manifests/{ref}",
        params=params,
        content=body,
        headers={"Content-Type": mt},
    )
    if expect_bad:
        assert r.status_code == 400, r.text
        return r
    assert r.status_code == 201, r.text
    subject = detect_subject(body)
    if subject is not None:
        assert r.headers.get("oci-subject") == subject
    verify_digest_header(r, digest)
    loc = r.headers.get("location", "")
    assert loc, "manifest put did not return a location"
    g = c.get(loc, headers=ACCEPT_MANIFESTS)
    assert g.status_code == 200
    assert g.headers["content-type"] == mt
    assert g.headers["content-length"] == str(len(body))
    assert g.content == body
    for tag in tags:
        values = [v.strip() for h in r.headers.get_list("oci-tag") for v in h.split(",")]
        assert tag in values, f"header missing OCI-Tag: {tag}"
    return r


def manifest_get_exists(c: httpx.Client, repo: str, ref: str, digest: str, body: bytes) -> None:
    """api.ManifestGetExists: status, bytes, Content-Type, Content-Length, digest header."""
    r = c.get(
        f"/v2/{repo}/manifests/{ref}",
        headers=ACCEPT_MANIFESTS,
    )
    assert r.status_code == 200, r.text[:300]
    assert r.content == body
    assert r.headers["content-type"] == detect_media_type(body)
    assert r.headers["content-length"] == str(len(body))
    verify_digest_header(r, digest)


def manifest_head_exists(c: httpx.Client, repo: str, ref: str, digest: str, body: bytes) -> None:
    """api.ManifestHeadExists: 200, no body, Content-Type, Content-Length, digest header."""
    r = c.head(
        f"/v2/{repo}/manifests/{ref}",
        headers=ACCEPT_MANIFESTS,
    )
    assert r.status_code == 200, r.status_code
    assert r.content == b""
    assert r.headers["content-type"] == detect_media_type(body)
    assert r.headers["content-length"] == str(len(body))
    verify_digest_header(r, digest)


def assert_deleted_or_absent(resp: httpx.Response, *allowed: int) -> None:
    """Teardown checks: 2xx, or one of the statuses the suite allows."""
    assert 200 <= resp.status_code < 300 or resp.status_code in allowed, resp.text


# -- a small image through one replica (the cluster tests) -------------------------------------

OCI_MANIFEST = MT_OCI_IMAGE


def sha256(data: bytes) -> str:
    return oci_digest(data)


def image_manifest(config: bytes, layer: bytes) -> bytes:
    """The JSON of an OCI image manifest of one config and one layer."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": MT_OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": MT_OCI_LAYER, "digest": sha256(layer), "size": len(layer)}],
        }
    ).encode()


def push_image(node: Node | Replica, repo: str, tag: str, seed: str) -> bytes:
    """Push a config, a layer and a manifest through `node`; return the manifest bytes."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    layer = f"layer of {seed}".encode() * 500
    with node.client() as c:
        for blob in (config, layer):
            r = c.post(f"/v2/{repo}/blobs/uploads/?digest={sha256(blob)}", content=blob)
            assert r.status_code == 201, r.text
        body = image_manifest(config, layer)
        r = c.put(
            f"/v2/{repo}/manifests/{tag}", content=body, headers={"Content-Type": OCI_MANIFEST}
        )
        assert r.status_code == 201, r.text
    return body


def pull_image(node: Node, repo: str, tag: str) -> bytes:
    with node.client() as c:
        r = c.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
        assert r.status_code == 200, (node.url, r.text)
        doc = json.loads(r.content)
        for desc in [doc["config"], *doc["layers"]]:
            blob = c.get(f"/v2/{repo}/blobs/{desc['digest']}")
            assert blob.status_code == 200
            assert sha256(blob.content) == desc["digest"]
        return r.content
