"""Repository policies on a real 2-replica cluster (issue #10 items 2-5): an immutable tag
refuses a skopeo push that would move it and every delete of it with 403 DENIED naming the
rule; a quota refuses a push over it with the numbers while a layer shared by two
repositories counts once; pushes racing through both replicas for the last bytes of a quota
never take the namespace over it; retention keeps exactly the last N tags (dry run first,
then apply, each deletion audited); sparse manifests are refused unless allowed."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster import AUTH, Cluster, cluster_of, moorage
from tests.oci import OCI_MANIFEST, image_manifest, sha256

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"  # skopeo keeps it as it is


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster_of(2, tmp_path_factory.mktemp("policies")) as c:
        yield c


def cli(c: Cluster, *args: str, check: bool = True) -> Any:
    out = moorage(*args, "--existing", c.nodes[0].url, "--json", check=check)
    return json.loads(out.stdout) if check else out


def layout(root: Path, tag: str, layers: list[bytes], seed: str) -> tuple[Path, str]:
    """An OCI image layout holding one image (a config and `layers`) tagged `tag`: what
    skopeo pushes from. Returns the layout and the manifest digest."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def put(data: bytes) -> str:
        digest = sha256(data)
        (blobs / digest.split(":")[1]).write_bytes(data)
        return digest

    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": put(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": LAYER_TYPE, "digest": put(layer), "size": len(layer)}
                for layer in layers
            ],
        }
    ).encode()
    digest = put(manifest)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (root / "index.json").write_text(json.dumps(index))
    return root, digest


def skopeo_push(c: Cluster, src: Path, tag: str, dest: str) -> subprocess.CompletedProcess[str]:
    host = c.nodes[0].url.removeprefix("http://")
    return subprocess.run(
        ["skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", f"{AUTH[0]}:{AUTH[1]}",
         f"oci:{src}:{tag}", f"docker://{host}/{dest}"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip


def error_of(r: httpx.Response) -> dict[str, Any]:
    doc: dict[str, Any] = r.json()["errors"][0]
    return doc


def random_bytes(n: int, seed: str) -> bytes:
    out = b""
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}/{counter}".encode()).digest()
        counter += 1
    return out[:n]


def test_immutable_tag_refuses_a_push_and_a_delete(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    doc = cli(c, "policy", "set", "frozen", "--immutable-tags", "v*", "--immutable-tags", "rel-?")
    assert doc["policy"]["immutable_tags"] == ["v*", "rel-?"]
    first, first_digest = layout(tmp_path / "a", "v1", [b"first layer" * 100], "a")
    second, second_digest = layout(tmp_path / "b", "v1", [b"second layer" * 100], "b")
    assert skopeo_push(c, first, "v1", "frozen/app:v1").returncode == 0
    # The same digest again is allowed.
    assert skopeo_push(c, first, "v1", "frozen/app:v1").returncode == 0
    # Moving the tag is refused, and skopeo shows the rule.
    moved = skopeo_push(c, second, "v1", "frozen/app:v1")
    assert moved.returncode != 0
    assert "immutable" in moved.stderr, moved.stderr
    assert "'v*' on frozen" in moved.stderr, moved.stderr
    # Through the API, on the other replica: 403 DENIED naming the rule.
    body = (second / "blobs" / "sha256" / second_digest.split(":")[1]).read_bytes()
    with httpx.Client(base_url=c.nodes[1].url, auth=AUTH, timeout=30) as h:
        r = h.put("/v2/frozen/app/manifests/v1", content=body,
                  headers={"Content-Type": OCI_MANIFEST})  # fmt: skip
        assert r.status_code == 403, r.text
        err = error_of(r)
        assert err["code"] == "DENIED"
        assert err["message"].startswith("tag frozen/app:v1 is immutable (rule 'v*' on frozen)")
        rid = r.headers["x-request-id"]  # every envelope names its request
        assert err["detail"] == {"tag": "v1", "rule": "v*", "target": "frozen", "request_id": rid}
        # A delete by tag and by digest are refused too (skopeo may rewrite the manifest:
        # its digest is the registry's).
        pushed = h.head("/v2/frozen/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
        first_digest = pushed.headers["Docker-Content-Digest"]
        r = h.delete("/v2/frozen/app/manifests/v1")
        assert r.status_code == 403
        assert error_of(r)["code"] == "DENIED"
        assert "tag frozen/app:v1 cannot be deleted" in error_of(r)["message"]
        r = h.delete(f"/v2/frozen/app/manifests/{first_digest}")
        assert r.status_code == 403, r.text
        assert f"manifest {first_digest} (tagged v1) cannot be deleted" in error_of(r)["message"]
        # The tag still points at the first image.
        r = h.get("/v2/frozen/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert r.headers["Docker-Content-Digest"] == first_digest
        # Its layers cannot be unlinked one by one either (the image would break).
        layer = r.json()["layers"][0]["digest"]
        r = h.delete(f"/v2/frozen/app/blobs/{layer}")
        assert r.status_code == 403, r.text
        assert error_of(r)["code"] == "DENIED"
        assert f"blob {layer} cannot be deleted from frozen/app" in error_of(r)["message"]
        assert h.get(f"/v2/frozen/app/blobs/{layer}").status_code == 200
        # Where no rule applies, a blob delete goes through (here a blob no manifest uses:
        # the shared cluster's other tests back it up whole).
        loose = b"a blob of a repository without rules"
        digest = "sha256:" + hashlib.sha256(loose).hexdigest()
        r = h.post("/v2/thawed/app/blobs/uploads/", params={"digest": digest}, content=loose)
        assert r.status_code == 201, r.text
        assert h.delete(f"/v2/thawed/app/blobs/{digest}").status_code == 202
        # A tag no pattern matches moves and deletes as usual.
        assert skopeo_push(c, second, "v1", "frozen/app:latest").returncode == 0
        assert skopeo_push(c, first, "v1", "frozen/app:latest").returncode == 0
        assert h.delete("/v2/frozen/app/manifests/latest").status_code == 202
    # Unset, the tag moves.
    cli(c, "policy", "unset", "frozen", "--immutable-tags")
    assert skopeo_push(c, second, "v1", "frozen/app:v1").returncode == 0
    # A pattern that could never match a tag is refused, not stored.
    for never in ("[", "release-[0-9", "a]", "!x"):
        out = cli(c, "policy", "set", "frozen", "--immutable-tags", never, check=False)
        assert out.returncode != 0
        assert "can never match a tag" in out.stderr + out.stdout
    assert (cli(c, "policy", "show", "frozen")["policy"] or {}).get("immutable_tags", []) == []


def test_quota_refuses_a_push_with_the_numbers_and_shared_layers_count_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    c = cluster
    shared = random_bytes(40_000, "shared")
    src, _ = layout(tmp_path / "one", "t", [shared], "quota-one")
    assert skopeo_push(c, src, "t", "quota/one:t").returncode == 0
    doc = cli(c, "policy", "set", "quota", "--quota", "100KB")  # counts what is there first
    pushed = httpx.get(f"{c.nodes[0].url}/v2/quota/one/manifests/t", auth=AUTH,
                       headers={"Accept": OCI_MANIFEST}, timeout=30).json()  # fmt: skip
    # skopeo writes the config again and compresses the layer: the sizes are the registry's
    layer_digest, layer_size = pushed["layers"][0]["digest"], pushed["layers"][0]["size"]
    used = doc["usage"]["bytes"]
    assert used == layer_size + pushed["config"]["size"]
    assert doc["usage"]["blobs"] == 2
    assert doc["usage"]["quota"] == 100_000
    # The same layer in another repository of the namespace counts once.
    src, _ = layout(tmp_path / "two", "t", [shared], "quota-one")
    assert skopeo_push(c, src, "t", "quota/two:t").returncode == 0
    assert cli(c, "policy", "show", "quota/two")["usage"]["bytes"] == used
    # A push that would exceed the quota is refused with the numbers.
    big = random_bytes(70_000, "big")
    with httpx.Client(base_url=c.nodes[1].url, auth=AUTH, timeout=30) as h:
        r = h.post(f"/v2/quota/three/blobs/uploads/?digest={sha256(big)}", content=big)
        assert r.status_code == 403, r.text
        err = error_of(r)
        assert err["code"] == "DENIED"
        assert err["detail"] == {
            "namespace": "quota", "used": used, "quota": 100_000, "needed": 70_000,
            "request_id": r.headers["x-request-id"],
        }  # fmt: skip
        assert f"{used} bytes used of 100000, this blob needs 70000 more" in err["message"]
        # A mount of it from another namespace is refused the same way.
        r = h.post(f"/v2/elsewhere/big/blobs/uploads/?digest={sha256(big)}", content=big)
        assert r.status_code == 201
        r = h.post(f"/v2/quota/three/blobs/uploads/?mount={sha256(big)}&from=elsewhere/big")
        assert r.status_code == 403
        assert error_of(r)["detail"]["needed"] == 70_000
    src, _ = layout(tmp_path / "big", "t", [big], "quota-big")
    refused = skopeo_push(c, src, "t", "quota/three:t")
    assert refused.returncode != 0
    assert "storage quota" in refused.stderr, refused.stderr
    # Usage is on /metrics of every replica (read at most once a second per worker).
    for node in c.nodes:
        want = [
            f'moorage_namespace_usage_bytes{{namespace="quota"}} {used}',
            'moorage_namespace_quota_bytes{namespace="quota"} 100000',
        ]
        deadline = time.monotonic() + 10
        while True:
            text = httpx.get(f"{node.url}/metrics", timeout=30).text
            if all(line in text for line in want) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert all(line in text for line in want), text[-2000:]
    # Deleting a blob from one repository keeps it counted while the other links it.
    with httpx.Client(base_url=c.nodes[0].url, auth=AUTH, timeout=30) as h:
        assert h.delete(f"/v2/quota/two/blobs/{layer_digest}").status_code == 202
        assert cli(c, "policy", "show", "quota")["usage"]["bytes"] == used
        assert h.delete(f"/v2/quota/one/blobs/{layer_digest}").status_code == 202
        assert cli(c, "policy", "show", "quota")["usage"]["bytes"] == used - layer_size
        for repo in ("one", "two"):  # their manifests name the layer no longer linked
            digest = h.head(f"/v2/quota/{repo}/manifests/t", headers={"Accept": OCI_MANIFEST})
            r = h.delete(f"/v2/quota/{repo}/manifests/{digest.headers['Docker-Content-Digest']}")
            assert r.status_code == 202


def test_pushes_racing_through_two_replicas_never_exceed_the_quota(cluster: Cluster) -> None:
    c = cluster
    size, quota, pushes = 10_000, 95_000, 24
    cli(c, "policy", "set", "race", "--quota", str(quota))
    blobs = [random_bytes(size, f"race-{i}") for i in range(pushes)]

    def push(i: int) -> int:
        node = c.nodes[i % 2]
        r = httpx.post(
            f"{node.url}/v2/race/r{i % 3}/blobs/uploads/?digest={sha256(blobs[i])}",
            content=blobs[i], auth=AUTH, timeout=60,
        )  # fmt: skip
        return r.status_code

    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(push, range(pushes)))
    assert set(statuses) <= {201, 403}, statuses
    admitted = statuses.count(201)
    # Exactly as many as fit: the counter is checked and raised in one guarded transaction.
    assert admitted == quota // size, statuses
    usage = cli(c, "policy", "show", "race")["usage"]
    assert usage["bytes"] == admitted * size <= quota
    assert usage["blobs"] == admitted


def push_manifest(c: Cluster, repo: str, tag: str, seed: str) -> str:
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    layer = f"layer of {seed}".encode() * 20
    with httpx.Client(base_url=c.nodes[0].url, auth=AUTH, timeout=30) as h:
        for blob in (config, layer):
            r = h.post(f"/v2/{repo}/blobs/uploads/?digest={sha256(blob)}", content=blob)
            assert r.status_code == 201, r.text
        body = image_manifest(config, layer)
        r = h.put(f"/v2/{repo}/manifests/{tag}", content=body,
                  headers={"Content-Type": OCI_MANIFEST})  # fmt: skip
        assert r.status_code == 201, r.text
    return sha256(body)


def audit_targets(c: Cluster, since: float, action: str, count: int) -> list[str]:
    deadline = time.monotonic() + 30
    while True:
        r = httpx.get(f"{c.nodes[1].url}/api/v0/audit", params={"since": f"{since:.3f}"},
                      auth=AUTH, timeout=30)  # fmt: skip
        assert r.status_code == 200, r.text
        found = [e["target"] for e in r.json()["events"] if e["action"] == action]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_retention_keeps_exactly_the_last_n_tags(cluster: Cluster) -> None:
    c = cluster
    for i in range(6):
        push_manifest(c, "keep/app", f"build-{i}", f"build-{i}")
    push_manifest(c, "keep/app", "stable", "stable-0")  # older than the last three...
    for i in range(6, 9):
        push_manifest(c, "keep/app", f"build-{i}", f"build-{i}")
    # ... immutable, so kept whatever its age.
    cli(c, "policy", "set", "keep", "--keep-last", "3", "--immutable-tags", "stable")
    started = time.time()
    dry = cli(c, "policy", "apply", "keep", "--dry-run")
    assert dry["dry_run"] is True
    planned = [f"{d['repo']}:{d['tag']}" for d in dry["would_delete"]]
    assert planned == [f"keep/app:build-{i}" for i in range(6)]
    listed = httpx.get(f"{c.nodes[1].url}/v2/keep/app/tags/list", auth=AUTH, timeout=30)
    assert len(listed.json()["tags"]) == 10  # the dry run changed nothing
    done = cli(c, "policy", "apply", "keep", "--yes")
    assert [f"{d['repo']}:{d['tag']}" for d in done["deleted"]] == planned
    listed = httpx.get(f"{c.nodes[1].url}/v2/keep/app/tags/list", auth=AUTH, timeout=30)
    assert sorted(listed.json()["tags"]) == ["build-6", "build-7", "build-8", "stable"]
    assert sorted(audit_targets(c, started, "retention.delete", 6)) == sorted(planned)
    # Applied again, nothing more goes.
    assert cli(c, "policy", "apply", "keep", "--dry-run")["would_delete"] == []


def test_sparse_manifests_only_where_allowed(cluster: Cluster) -> None:
    c = cluster
    absent = sha256(b"a child manifest nobody pushed")
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": absent, "size": 123,
                 "platform": {"architecture": "arm64", "os": "linux"}},
            ],
        }
    ).encode()  # fmt: skip
    layer = sha256(b"a layer nobody pushed")
    config = b"{}"
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": sha256(config), "size": 2},
            "layers": [{"mediaType": LAYER_TYPE, "digest": layer, "size": 10}],
        }
    ).encode()  # fmt: skip

    def put(body: bytes, media_type: str, tag: str) -> httpx.Response:
        return httpx.put(f"{c.nodes[1].url}/v2/mirror/app/manifests/{tag}", content=body,
                         headers={"Content-Type": media_type}, auth=AUTH, timeout=30)  # fmt: skip

    for body, mt, tag in ((index, OCI_INDEX, "multi"), (manifest, OCI_MANIFEST, "single")):
        r = put(body, mt, tag)
        assert r.status_code == 400
        assert error_of(r)["code"] == "MANIFEST_BLOB_UNKNOWN"
    cli(c, "policy", "set", "mirror", "--allow-sparse")
    assert put(index, OCI_INDEX, "multi").status_code == 201
    assert put(manifest, OCI_MANIFEST, "single").status_code == 201
    r = httpx.get(f"{c.nodes[0].url}/v2/mirror/app/manifests/multi", auth=AUTH,
                  headers={"Accept": OCI_INDEX}, timeout=30)  # fmt: skip
    assert r.status_code == 200
    assert r.content == index
    # A repository may refuse what its namespace allows.
    cli(c, "policy", "set", "mirror/strict", "--no-allow-sparse")
    r = httpx.put(f"{c.nodes[1].url}/v2/mirror/strict/manifests/x", content=index,
                  headers={"Content-Type": OCI_INDEX}, auth=AUTH, timeout=30)  # fmt: skip
    assert r.status_code == 400
    # A backup takes the sparse manifests along, and verifies.
    archive = Path(os.environ.get("TMPDIR", "/tmp")) / f"sparse-{os.getpid()}.tar"
    try:
        moorage("backup", "--existing", c.nodes[0].url, "--out", str(archive))
        out = moorage("backup", "verify", str(archive), "--storage", str(c.storage), check=False)
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        archive.unlink(missing_ok=True)
