"""Garbage collection and recovery (issue #14 item 7), on one real replica: a backup taken
before a collection and restored after it (with and without `--include-blobs`, with and
without the journal), and a manifest PUT whose blob link a recovery brought back without its
bytes."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from chaos.images import OCI_MANIFEST, Image, make_image, push, sha256, verify
from harness.cluster import Cluster, Node
from harness.process import AUTH, moorage

from tests.cluster import cluster_of

OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster_of(1, tmp_path_factory.mktemp("gcrec")) as c:
        yield c


def blob_file(storage: Path, digest: str) -> Path:
    algo, hexpart = digest.split(":", 1)
    return storage / "blobs" / algo / hexpart[:2] / hexpart


def collect(node: Node, **body: Any) -> dict[str, Any]:
    with node.client(timeout=120) as c:
        r = c.post("/api/v0/gc", json={"grace": 0, **body})
    assert r.status_code == 200, r.text
    return dict(r.json())


def restore(cluster: Cluster, archive: Path, name: str, *extra: str) -> tuple[Node, dict[str, Any]]:
    node = Node(cluster.root, name)
    out = moorage(
        "restore", "--yes", "--in", str(archive), *node.flags(),
        "--storage", str(cluster.storage), "--json", *extra,
    )  # fmt: skip
    cluster.retired.append(node)  # stopped by the cluster's shutdown
    return node, dict(json.loads(out.stdout))


def pull(node: Node, repo: str, tag: str, image: Image) -> str:
    with httpx.Client(base_url=node.url, auth=AUTH, timeout=30) as c:
        return verify(c, repo, tag, image.digest, image.blob_digests)


def test_restore_after_a_collection_reports_or_brings_back_the_collected_blobs(
    cluster: Cluster,
) -> None:
    node = cluster.nodes[0]
    gone, kept = make_image("rec/gone"), make_image("rec/kept")
    with node.client() as c:
        push(c, "rec/app", "gone", gone)
        push(c, "rec/app", "kept", kept)
    meta_only = cluster.root / "meta.tar"
    with_blobs = cluster.root / "full.tar"
    moorage("backup", "--existing", node.url, "--out", str(meta_only))
    moorage("backup", "--existing", node.url, "--out", str(with_blobs), "--include-blobs")
    with node.client() as c:
        assert c.delete(f"/v2/rec/app/manifests/{gone.digest}").status_code == 202
    freed = collect(node)
    collected = {gone.digest, *gone.blob_digests}
    assert collected <= {d for u in freed["repositories"].values() for d in u["digests"]}
    assert not any(blob_file(cluster.storage, d).exists() for d in collected)

    # The backup alone (no journal), without its blobs: the image the collection freed is
    # restored as records whose bytes are gone, and the restore says so, naming each.
    bare, doc = restore(cluster, meta_only, "bare", "--no-replay-journal")
    # (manifests' own bytes are always in a backup: the restore put them back)
    assert set(doc["missing_blobs"]) == set(gone.blob_digests), doc
    for d in gone.blob_digests:
        assert any(d in p for p in doc["problems"]), doc["problems"]
    assert pull(bare, "rec/app", "kept", kept) == ""
    assert pull(bare, "rec/app", "gone", gone) != ""
    moorage("destroy", "--yes", "--data-dir", str(bare.data_dir))

    # With --include-blobs the archive brings the collected bytes back: everything pulls.
    full, doc = restore(cluster, with_blobs, "full", "--no-replay-journal")
    assert doc["missing_blobs"] == [], doc
    assert doc["problems"] == [], doc
    assert doc["blobs_copied"] >= len(gone.blob_digests)  # (the bare one put the manifest back)
    assert pull(full, "rec/app", "gone", gone) == ""
    assert pull(full, "rec/app", "kept", kept) == ""
    moorage("destroy", "--yes", "--data-dir", str(full.data_dir))


def test_manifest_put_refuses_a_link_whose_bytes_are_gone(cluster: Cluster) -> None:
    """An emergency repair or a restore can bring back a blob link whose bytes a collection
    deleted (its link deletes are not journaled). A manifest naming that blob is refused as
    a missing blob (the client uploads it again), never recorded with a layer that 404s."""
    node = cluster.nodes[0]
    first, second = make_image("rec/first"), make_image("rec/second")
    with node.client() as c:
        push(c, "rec/lost", "first", first)
        layer = sha256(first.layers[0])
        blob_file(cluster.storage, layer).unlink()  # what such a recovery leaves behind
        assert c.head(f"/v2/rec/lost/blobs/{layer}").status_code == 404
        # A manifest that reuses the layer (the linked, bytes-less one).
        doc = json.loads(second.manifest)
        doc["layers"] = json.loads(first.manifest)["layers"]
        body = json.dumps(doc).encode()
        r = c.post(f"/v2/rec/lost/blobs/uploads/?digest={sha256(second.config)}",
                   content=second.config)  # fmt: skip
        assert r.status_code == 201
        r = c.put("/v2/rec/lost/manifests/second", content=body,
                  headers={"Content-Type": OCI_MANIFEST})  # fmt: skip
        assert r.status_code == 400, r.text
        assert r.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
        assert layer in r.text
        assert c.get("/v2/rec/lost/manifests/second").status_code == 404
        # The client's answer to that: upload the layer, then the manifest is accepted.
        r = c.post(f"/v2/rec/lost/blobs/uploads/?digest={layer}", content=first.layers[0])
        assert r.status_code == 201
        r = c.put("/v2/rec/lost/manifests/second", content=body,
                  headers={"Content-Type": OCI_MANIFEST})  # fmt: skip
        assert r.status_code == 201, r.text
        assert c.get(f"/v2/rec/lost/blobs/{layer}").content == first.layers[0]


def test_emergency_repair_that_lost_a_collection_leaves_nothing_inconsistent(
    cluster: Cluster,
) -> None:
    """The survivor of a quorum loss learned nothing of a collection (the extreme case of
    losing its last transactions): the journal deletes the image again, the links the
    collection had deleted come back without bytes, a manifest naming one is refused, and
    the next collection drops them."""
    node = cluster.nodes[0]
    gone, kept = make_image("repair/gone"), make_image("repair/kept")
    with node.client() as c:
        push(c, "repair/app", "gone", gone)
        push(c, "repair/app", "kept", kept)
    # What etcd's force-new-cluster would keep of a survivor that learned nothing more.
    moorage("stop", "--data-dir", str(node.data_dir))
    stale = cluster.root / "etcd-before-gc"
    shutil.copytree(node.data_dir / "etcd", stale)
    moorage("start", "--data-dir", str(node.data_dir))
    with node.client() as c:
        assert c.delete(f"/v2/repair/app/manifests/{gone.digest}").status_code == 202
    collect(node)
    assert not any(blob_file(cluster.storage, d).exists() for d in gone.blob_digests)

    moorage("stop", "--data-dir", str(node.data_dir))
    shutil.rmtree(node.data_dir / "etcd")
    shutil.copytree(stale, node.data_dir / "etcd")
    out = moorage("emergency-repair", "--data-dir", str(node.data_dir), "--yes", "--json")
    assert json.loads(out.stdout)["result"]["journal_replayed"]["applied"] >= 1
    layer = sha256(gone.layers[0])
    with node.client() as c:
        # The delete came back from the journal; the kept image is intact.
        assert c.get(f"/v2/repair/app/manifests/{gone.digest}").status_code == 404
        assert pull(node, "repair/app", "kept", kept) == ""
        # The collection's link deletes did not: the link is back, its bytes are not.
        assert c.head(f"/v2/repair/app/blobs/{layer}").status_code == 404
        r = c.put("/v2/repair/app/manifests/again", content=gone.manifest,
                  headers={"Content-Type": OCI_MANIFEST})  # fmt: skip
        assert r.status_code == 400, r.text
        assert r.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    # The next collection drops the links whose bytes are gone (nothing references them).
    freed = collect(node)
    assert layer in {d for u in freed["repositories"].values() for d in u["digests"]}
    with node.client() as c:
        push(c, "repair/app", "again", gone)  # a push of the same image works again
        assert pull(node, "repair/app", "again", gone) == ""


def test_an_index_whose_child_was_deleted_verifies_with_a_note(cluster: Cluster) -> None:
    """Deleting an index's child by digest is allowed (the index stays as it was): a backup
    taken after it verifies OK, with a note naming the missing child, as restore accepts it."""
    node = cluster.nodes[0]
    amd, arm = make_image("rec/amd"), make_image("rec/arm")
    with node.client() as c:
        push(c, "rec/multi", "amd", amd)
        push(c, "rec/multi", "arm", arm)
        children = [
            {"mediaType": OCI_MANIFEST, "digest": i.digest, "size": len(i.manifest)}
            for i in (amd, arm)
        ]
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children})
        r = c.put("/v2/rec/multi/manifests/both", content=index.encode(),
                  headers={"Content-Type": OCI_INDEX})  # fmt: skip
        assert r.status_code == 201, r.text
        assert c.delete(f"/v2/rec/multi/manifests/{arm.digest}").status_code == 202
    archive = cluster.root / "index.tar"
    moorage("backup", "--existing", node.url, "--out", str(archive))
    out = moorage("backup", "verify", str(archive), "--storage", str(cluster.storage), "--json")
    doc = json.loads(out.stdout)
    assert doc["ok"], doc
    assert any(arm.digest in n for n in doc["notes"]), doc
    text = moorage("backup", "verify", str(archive), "--storage", str(cluster.storage)).stdout
    assert "OK" in text
    assert "note: index rec/multi@sha256:" in text
