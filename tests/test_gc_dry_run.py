"""`moorage gc --untagged --dry-run` reports what the real run then frees (scale probe D3): the
untagged manifests' own bytes, and the layers and configs only they reference, count as freed
in the dry run too; layers a kept manifest also uses (in the same repository or another) do
not. One replica of this module's own, images pushed through the API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness.process import moorage
from harness.replica import Replica

from tests.oci import MT_OCI_CONFIG, MT_OCI_IMAGE, MT_OCI_LAYER, oci_digest


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    r = Replica(tmp_path_factory.mktemp("gc-dry") / "data")
    r.start()
    yield r
    r.stop()


def gc(r: Replica, *args: str) -> dict[str, Any]:
    out = moorage("gc", "--existing", r.url, "--json", "--untagged", "--grace", "0", *args)
    return dict(json.loads(out.stdout))


def listed(result: dict[str, Any]) -> dict[str, set[str]]:
    assert result["digests_truncated"] is False
    return {repo: set(u["digests"]) for repo, u in result["repositories"].items()}


def blob(c: httpx.Client, repo: str, data: bytes) -> dict[str, Any]:
    r = c.post(f"/v2/{repo}/blobs/uploads/", params={"digest": oci_digest(data)}, content=data)
    assert r.status_code == 201, r.text
    return {"mediaType": MT_OCI_LAYER, "digest": oci_digest(data), "size": len(data)}


def manifest(
    c: httpx.Client,
    repo: str,
    seed: str,
    layers: list[bytes],
    tag: str | None = None,
    subject: bytes | None = None,
) -> tuple[bytes, bytes]:
    """Push a manifest of its own config and `layers` (by `tag`, else by digest): (its bytes,
    its config's bytes)."""
    config = json.dumps({"os": "linux", "architecture": "amd64", "seed": seed}).encode()
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_IMAGE,
        "config": {**blob(c, repo, config), "mediaType": MT_OCI_CONFIG},
        "layers": [blob(c, repo, data) for data in layers],
    }
    if subject is not None:
        doc["subject"] = {"mediaType": MT_OCI_IMAGE, "digest": oci_digest(subject), "size": 1}
    body = json.dumps(doc).encode()
    headers = {"Content-Type": MT_OCI_IMAGE}
    r = c.put(f"/v2/{repo}/manifests/{tag or oci_digest(body)}", content=body, headers=headers)
    assert r.status_code == 201, r.text
    return body, config


def blob_file(r: Replica, data: bytes) -> Path:
    algo, hexpart = oci_digest(data).split(":", 1)
    return r.data_dir / "blobs" / "blobs" / algo / hexpart[:2] / hexpart


def layer(name: str, size: int) -> bytes:
    return (name.encode() + b"/") * (size // (len(name) + 1) + 1)


def test_untagged_dry_run_frees_what_the_real_run_frees(replica: Replica) -> None:
    app, other = "gcd/app", "gcd/other"
    shared = layer("shared with a tagged image", 90_000)  # kept: the tagged image uses it
    pair = layer("only the two untagged images", 70_000)  # freed: only untagged ones use it
    own1, own2 = layer("only untagged 1", 50_000), layer("only untagged 2", 30_000)
    cross = layer("untagged 2 and a tagged image of another repo", 40_000)  # kept
    sig_layer = layer("the untagged image's signature", 3_000)
    with replica.client() as c:
        tagged, tagged_config = manifest(c, app, "tagged", [shared], tag="v1")
        manifest(c, app, "sig of tagged", [layer("tagged sig", 2_000)], subject=tagged)
        manifest(c, other, "other", [cross], tag="v1")
        u1, u1_config = manifest(c, app, "untagged 1", [shared, pair, own1])
        u2, u2_config = manifest(c, app, "untagged 2", [shared, pair, own2, cross], tag="gone")
        r = c.delete(f"/v2/{app}/manifests/gone")  # the tag only: its manifest stays
        assert r.status_code == 202, r.text
        sig, sig_config = manifest(c, app, "sig of untagged 1", [sig_layer], subject=u1)

        freed = [u1, u2, sig, u1_config, u2_config, sig_config, pair, own1, own2, sig_layer]
        freed_digests = {oci_digest(data) for data in freed}
        kept = [tagged, tagged_config, shared, cross]

        dry = gc(replica, "--dry-run")
        assert dry["dry_run"] is True
        assert all(blob_file(replica, data).exists() for data in freed)  # deleted nothing
        done = gc(replica)
        assert done["dry_run"] is False
        assert done["rescued"] == 0

        for result in (dry, done):
            assert result["manifests"] == 3, result
            assert result["blobs"] == len(freed), result
            assert result["bytes"] == sum(len(data) for data in freed), result
            assert set().union(*listed(result).values()) == freed_digests, result
        assert listed(dry) == listed(done)
        for key in ("blobs", "bytes", "manifests"):
            assert dry[key] == done[key]

        assert not any(blob_file(replica, data).exists() for data in freed)
        assert all(blob_file(replica, data).exists() for data in kept)
        for data in (tagged_config, shared):
            assert c.head(f"/v2/{app}/blobs/{oci_digest(data)}").status_code == 200
        assert c.head(f"/v2/{other}/blobs/{oci_digest(cross)}").status_code == 200
        # Nothing left: both say so.
        assert gc(replica, "--dry-run")["blobs"] == gc(replica)["blobs"] == 0
