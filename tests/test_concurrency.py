"""Many clients at once: the same blob, the same tag, interleaved pushes and deletes."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from harness.replica import Replica

from tests.oci import OCI_MANIFEST, image_manifest, sha256


def _push_blob(registry: Replica, repo: str, blob: bytes, chunked: bool) -> int:
    with registry.client() as c:
        if not chunked:
            return c.post(
                f"/v2/{repo}/blobs/uploads/?digest={sha256(blob)}", content=blob
            ).status_code
        loc = c.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
        half = len(blob) // 2
        resp = c.patch(loc, content=blob[:half], headers={"Content-Range": f"0-{half - 1}"})
        loc = resp.headers["location"]
        sep = "&" if "?" in loc else "?"
        return c.put(f"{loc}{sep}digest={sha256(blob)}", content=blob[half:]).status_code


def test_same_blob_pushed_by_many_clients(registry: Replica) -> None:
    blob = bytes(range(256)) * 8192  # 2 MiB
    with ThreadPoolExecutor(16) as pool:
        codes = list(
            pool.map(lambda i: _push_blob(registry, "conc/same", blob, i % 2 == 0), range(32))
        )
    assert codes == [201] * 32
    with registry.client() as c:
        got = c.get(f"/v2/conc/same/blobs/{sha256(blob)}")
        assert got.content == blob
        assert got.headers["docker-content-digest"] == sha256(blob)


def _manifest(config: bytes, n: int) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(config),
                "size": len(config),
            },
            "layers": [],
            "annotations": {"n": str(n)},
        }
    ).encode()


def test_same_tag_pushed_by_many_clients(registry: Replica) -> None:
    repo = "conc/tag"
    config = b'{"os":"linux"}'
    assert _push_blob(registry, repo, config, False) == 201
    bodies = [_manifest(config, n) for n in range(40)]

    def put(body: bytes) -> int:
        with registry.client() as c:
            return c.put(
                f"/v2/{repo}/manifests/latest", content=body, headers={"Content-Type": OCI_MANIFEST}
            ).status_code

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(put, bodies)) == [201] * 40
    with registry.client() as c:
        got = c.get(f"/v2/{repo}/manifests/latest", headers={"Accept": OCI_MANIFEST})
        assert got.content in bodies  # one of them won, whole
        assert got.headers["docker-content-digest"] == sha256(got.content)
        for body in bodies:  # every pushed manifest stays reachable by digest
            assert c.head(f"/v2/{repo}/manifests/{sha256(body)}").status_code == 200
        assert c.get(f"/v2/{repo}/tags/list").json()["tags"] == ["latest"]


def test_tag_moves_while_manifests_are_deleted(registry: Replica) -> None:
    repo = "conc/churn"
    config = b'{"os":"linux","churn":true}'
    assert _push_blob(registry, repo, config, False) == 201
    bodies = [_manifest(config, n) for n in range(30)]

    def work(i: int) -> tuple[int, int]:
        with registry.client() as c:
            body = bodies[i]
            put = c.put(
                f"/v2/{repo}/manifests/t{i % 3}",
                content=body,
                headers={"Content-Type": OCI_MANIFEST},
            )
            deleted = c.delete(f"/v2/{repo}/manifests/{sha256(bodies[(i + 7) % 30])}")
            return put.status_code, deleted.status_code

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(work, range(30)))
    assert all(p == 201 and d in (202, 404) for p, d in results)
    with registry.client() as c:
        for tag in c.get(f"/v2/{repo}/tags/list").json()["tags"]:
            got = c.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
            assert got.status_code == 200, "a tag never points at a deleted manifest"
            assert got.headers["docker-content-digest"] == sha256(got.content)


def test_many_clients_many_repos(registry: Replica) -> None:
    def push(i: int) -> bool:
        repo = f"conc/many{i}"
        config = f'{{"i":{i}}}'.encode()
        layer = f"layer {i}".encode() * 1000
        with registry.client() as c:
            for blob in (config, layer):
                if (
                    c.post(
                        f"/v2/{repo}/blobs/uploads/?digest={sha256(blob)}", content=blob
                    ).status_code
                    != 201
                ):
                    return False
            body = image_manifest(config, layer)
            if (
                c.put(
                    f"/v2/{repo}/manifests/v1", content=body, headers={"Content-Type": OCI_MANIFEST}
                ).status_code
                != 201
            ):
                return False
            got = c.get(f"/v2/{repo}/blobs/{sha256(layer)}")
            return got.content == layer

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(push, range(48)))
    with registry.client() as c:
        repos = c.get("/v2/_catalog", params={"n": 10000}).json()["repositories"]
        assert {f"conc/many{i}" for i in range(48)} <= set(repos)


def test_one_blob_mounted_into_many_repositories_at_once(registry: Replica) -> None:
    """Every mount of one blob into a repository of its namespace rewrites the blob's record
    there: 16 clients mounting the same layers into new repositories (a CI farm's base image)
    collided, and under a steady stream one lost 200 times in a row: a 503 (seen in the
    benchmark's catalog fill). Links of one blob now take turns in the replica."""
    layer = b"shared base layer " * 1000
    assert _push_blob(registry, "mounts/base", layer, False) == 201
    digest = sha256(layer)

    def mount(i: int) -> int:
        with registry.client() as c:
            return c.post(
                f"/v2/mounts/app{i:04d}/blobs/uploads/?mount={digest}&from=mounts/base"
            ).status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(mount, range(400)))
    assert codes == [201] * 400
    with registry.client() as c:
        assert c.head(f"/v2/mounts/app0399/blobs/{digest}").status_code == 200
