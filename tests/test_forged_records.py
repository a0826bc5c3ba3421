"""Forged records (issue 9, item 2): a tag or manifest record whose digest is not a digest,
written straight into etcd or replayed from a crafted journal file, is refused where it is
read; no storage path is ever built from it, so no host file is served."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.errors import DigestInvalid, RecordCorrupt
from moorage.meta import keys
from moorage.meta.base import Put
from moorage.meta.etcd import ClientTls, EtcdMetaStore
from moorage.meta.memory import MemoryMetaStore
from moorage.meta.records import ManifestRecord, TagRecord
from moorage.oci import mediatypes as mt
from moorage.pki.files import TlsDir
from moorage.recovery.journal_replay import apply, plan_replay
from moorage.storage.filesystem import FilesystemStorage
from moorage.storage.journal import read_entries
from moorage.storage.paths import StorageLayout
from tests.cluster import Cluster, Node, moorage, pull_image, push_image, sha256

FORGED = ["sha256:/etc/passwd", "sha256:../../x", "sha256:../../../../../../etc/passwd"]
GOOD = "sha256:" + "a" * 64


def _tag_value(digest: str) -> bytes:
    return json.dumps({"digest": digest, "media_type": mt.OCI_MANIFEST, "size": 100}).encode()


def test_records_refuse_what_is_not_a_digest() -> None:
    for digest in [*FORGED, "sha256:" + "A" * 64, "md5:abc", "", "sha256:" + "a" * 63 + "/"]:
        with pytest.raises(RecordCorrupt):
            TagRecord.decode(_tag_value(digest))
        with pytest.raises(RecordCorrupt):
            ManifestRecord.decode(
                json.dumps({"digest": digest, "media_type": mt.OCI_MANIFEST, "size": 1})
            )
    for bad in (
        b"not json",
        b"[]",
        b'{"digest": "' + GOOD.encode() + b'"}',
        json.dumps({"digest": GOOD, "media_type": "text/html\r\nX: y", "size": 1}).encode(),
        json.dumps({"digest": GOOD, "media_type": mt.OCI_MANIFEST, "size": -1}).encode(),
        json.dumps({"digest": GOOD, "media_type": mt.OCI_MANIFEST, "size": "1"}).encode(),
        json.dumps({"digest": GOOD, "media_type": mt.OCI_MANIFEST, "size": 1, "x": 1}).encode(),
    ):
        with pytest.raises(RecordCorrupt):
            TagRecord.decode(bad)
    assert TagRecord.decode(_tag_value(GOOD)).digest == GOOD
    record = ManifestRecord(GOOD, mt.OCI_MANIFEST, 5, subject=GOOD, artifact_type="a/b")
    assert ManifestRecord.decode(record.encode()) == record


def test_storage_builds_no_path_from_an_invalid_digest(tmp_path: Path) -> None:
    layout = StorageLayout(tmp_path)
    for digest in [*FORGED, "../x", "sha256:", "sha256:" + "a" * 64 + "/../../x", "x:y"]:
        with pytest.raises(DigestInvalid):
            layout.blob(digest)
    assert layout.blob(GOOD) == tmp_path / "blobs" / "sha256" / "aa" / ("a" * 64)
    storage = FilesystemStorage(tmp_path)
    with pytest.raises(DigestInvalid):
        asyncio.run(storage.read_bytes("sha256:../../../../../../etc/passwd"))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    c.shutdown()


async def _forge(client_url: str, tls: ClientTls, puts: list[tuple[bytes, bytes]]) -> None:
    store = EtcdMetaStore([client_url], tls=tls)
    try:
        await store._txn([], [Put(k, v) for k, v in puts])
    finally:
        await store.close()


def test_forged_tag_in_etcd_never_serves_a_host_file(cluster: Cluster) -> None:
    r0 = cluster.install()
    body = push_image(r0, "forged/app", "v1", "forged")
    puts = [(keys.tag("forged/app", f"evil{i}"), _tag_value(d)) for i, d in enumerate(FORGED)]
    # A manifest record under a valid key whose value names a forged digest.
    puts.append(
        (
            keys.manifest("forged/app", GOOD),
            json.dumps({"digest": FORGED[0], "media_type": mt.OCI_MANIFEST, "size": 9}).encode(),
        )
    )
    tls = ClientTls(*TlsDir(r0.data_dir).client_material())
    asyncio.run(_forge(f"https://127.0.0.1:{r0.etcd_client_port}", tls, puts))
    passwd = Path("/etc/passwd").read_bytes()[:20]
    with r0.client() as c:
        refs = [f"evil{i}" for i in range(len(FORGED))] + [GOOD]
        for ref in refs:
            for method in ("GET", "HEAD"):
                resp = c.request(method, f"/v2/forged/app/manifests/{ref}")
                assert resp.status_code == 503, (ref, resp.status_code, resp.text)
                assert passwd not in resp.content
                if method == "GET":
                    error = resp.json()["errors"][0]
                    assert error["code"] == "UNAVAILABLE"
                    assert "invalid digest" in error["message"]
    # The real image is untouched.
    assert pull_image(r0, "forged/app", "v1") == body
    # A backup of that store leaves the forged records out, says so, and verifies.
    archive = r0.data_dir.parent / "forged.tar"
    out = moorage("backup", "--existing", r0.url, "--out", str(archive))
    assert out.stderr.count("warning: left out of the backup, invalid") == len(puts)
    assert "sha256:/etc/passwd" in out.stderr
    assert "OK" in moorage("backup", "verify", str(archive)).stdout


def test_journal_reading_is_bounded(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    journal.mkdir()
    good = {"c": "c1", "e": 1, "r": 5, "op": "untag", "repo": "a/b", "tag": "v1"}
    with open(journal / "w.jsonl", "wb") as fh:
        fh.write(b'{"op": "untag", "r": 1, "x": "' + b"a" * (17 * 1024 * 1024) + b'"}\n')
        fh.write(b"[" * 100_000 + b"]" * 100_000 + b"\n")
        fh.write(json.dumps(good).encode() + b"\n")
    (journal / "dir.jsonl").mkdir()
    assert list(read_entries(tmp_path)) == [good]


def test_forged_journal_entries_are_refused_and_reported(cluster: Cluster) -> None:
    r0 = cluster.install()
    body = push_image(r0, "journal/app", "v1", "journal")
    archive = cluster.root / "b.tar"
    doc = json.loads(
        moorage("backup", "--existing", r0.url, "--out", str(archive), "--json").stdout
    )
    cid = doc["cluster_id"]
    after = push_image(r0, "journal/app", "v2", "after")
    rev = 10**9
    forged = [
        {
            "c": cid, "e": 1, "r": rev, "op": "manifest", "repo": "journal/app",
            "record": {"digest": FORGED[0], "media_type": mt.OCI_MANIFEST, "size": 10},
            "tags": ["evil"],
        },
        {
            "c": cid, "e": 1, "r": rev + 1, "op": "manifest", "repo": "journal/app",
            "record": {"digest": sha256(body), "media_type": mt.OCI_MANIFEST, "size": 1},
            "tags": ["../../x"],
        },
        {"c": cid, "e": 1, "r": rev + 2, "op": "delete", "repo": "journal/app",
         "digest": FORGED[1]},
        {"c": cid, "e": 1, "r": rev + 3, "op": "untag", "repo": "../etc", "tag": "v1"},
        {"c": cid, "e": "x", "r": rev + 4, "op": "untag", "repo": "journal/app", "tag": "v1"},
    ]  # fmt: skip
    journal = cluster.storage / "journal"
    (journal / "forged.jsonl").write_text("".join(json.dumps(e) + "\n" for e in forged))

    # The plan (what emergency repair prints) sets them aside, with the reason.
    plan = plan_replay(cluster.storage, cid, (1, doc["revision"]))
    assert len(plan.rejected) == len(forged)
    assert all(e["r"] < rev for e in plan.entries)
    assert plan.summary()["rejected_count"] == len(forged)
    # Applied to a store: nothing of them lands, each is reported.
    store = MemoryMetaStore()
    result = asyncio.run(apply(store, cluster.storage, plan))
    assert sum("refused invalid journal entry" in u for u in result.unrecoverable) == 5
    assert asyncio.run(store.get_tag("journal/app", "evil")) is None

    # Against a running replica: restore with the journal replayed.
    moorage("stop", "--data-dir", str(r0.data_dir))
    fresh = Node(cluster.root, "fresh")
    out = moorage(
        "restore", "--yes", "--in", str(archive), *fresh.flags(), "--storage", str(cluster.storage),
        "--replay-journal", "--json",
    )  # fmt: skip
    cluster.nodes.append(fresh)
    restored = json.loads(out.stdout)
    refused = [u for u in restored["journal_replayed"]["unrecoverable"] if "refused" in u]
    assert len(refused) == len(forged), restored["journal_replayed"]
    assert "sha256:/etc/passwd" in " ".join(refused)
    assert pull_image(fresh, "journal/app", "v1") == body
    assert pull_image(fresh, "journal/app", "v2") == after
    with fresh.client() as c:
        assert c.get("/v2/journal/app/manifests/evil").status_code == 404
        assert sorted(c.get("/v2/journal/app/tags/list").json()["tags"]) == ["v1", "v2"]
