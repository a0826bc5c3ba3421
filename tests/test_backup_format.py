"""The backup archive format, in-process (no cluster): format 1 archives (the store's keys
and values, written by the code before format 2) are still read, verified and counted, and
turn into the same typed records as format 2; both count blobs and manifests apart."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from moorage.meta.snapshot import to_json
from moorage.recovery import backup
from moorage.recovery.archive import FORMAT_VERSION, ArchiveBlobs, read_header
from moorage.recovery.archive_records import Metadata, read_metadata
from moorage.recovery.backup_sources import StorageSource
from moorage.recovery.backup_verify import archive_counts, inspect, verify
from moorage.storage.paths import StorageLayout

#: A backup written by the code of format 1 (metadata.json held the store's keys and
#: values): repositories old/app (tags v1, v2, a referrer of v1) and other (tag latest),
#: every blob included, user admin with the tests' password.
FORMAT_1 = Path(__file__).parent / "fixtures" / "backup-v1.tar"


def test_format_1_reads_as_typed_records() -> None:
    header = read_header(FORMAT_1)
    assert header["version"] == 1
    md = read_metadata(FORMAT_1)
    assert md.invalid == []
    assert md.counts() == header["counts"]
    assert sorted(e.kind for e in md.entries) == sorted(
        ["blob_link"] * 7 + ["manifest"] * 4 + ["tag"] * 3 + ["repository"] * 2
        + ["referrer", "user", "cluster", "replica"]
    )  # fmt: skip
    assert {e.kind for e in md.restorable()} == {
        "blob_link", "manifest", "tag", "repository", "referrer", "user"
    }  # fmt: skip
    # The typed records of format 2 index the same way.
    again = Metadata.parse([to_json(e) for e in md.entries])
    assert again.invalid == []
    assert (again.tags, again.manifests, again.links) == (md.tags, md.manifests, md.links)
    assert archive_counts(FORMAT_1, header) == (4, 7)
    report = verify(FORMAT_1)
    assert report.ok is True, report.problems
    info = inspect(FORMAT_1)
    assert (info.manifests_in_archive, info.blobs_in_archive) == (4, 7)


def test_format_1_rewritten_as_format_2(tmp_path: Path) -> None:
    """The writer of format 2 run on a format-1 archive's records and bytes: the new
    archive verifies, holds typed records (no key), and counts as the old one did."""
    storage = StorageLayout(tmp_path / "blobs")
    md = read_metadata(FORMAT_1)
    with ArchiveBlobs([FORMAT_1]) as held:
        for digest in held.digests():
            path = storage.blob(digest)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as fh:
                held.copy(digest, fh.write)
    old = read_header(FORMAT_1)
    to_store, from_base = backup._plan(md, True, set())
    assert from_base == {}
    header = backup.new_header(old, md, True, to_store, set(), None, [])
    out = tmp_path / "v2.tar"
    done: list[int] = []
    source = StorageSource(storage.root)
    backup.write(out, header, md, to_store, source, None, lambda n, total: done.append(n))
    assert done[-1] == sum(size for _, _, size in to_store.values())
    assert read_header(out)["version"] == FORMAT_VERSION == 2
    report = verify(out)
    assert report.ok is True, report.problems
    with tarfile.open(out, "r:") as tar:
        f = tar.extractfile("metadata.json")
        assert f is not None
        with f:
            doc = json.loads(f.read())
    assert "kvs" not in doc
    assert b"/moorage/" not in json.dumps(doc).encode()
    assert {r["kind"] for r in doc["records"]} >= {"tag", "manifest", "blob_link", "referrer"}
    new = read_metadata(out)
    assert (new.tags, new.manifests, new.links) == (md.tags, md.manifests, md.links)
    assert archive_counts(out, read_header(out)) == (4, 7)
    assert inspect(out).counts == inspect(FORMAT_1).counts


def test_verify_report_json_forms() -> None:
    """The typed verify report's one JSON form: a corrupt archive's has no counts."""
    from moorage.recovery.backup_results import VerifyReport

    good = verify(FORMAT_1).to_json()
    assert list(good) == [
        "file", "ok", "corrupt", "archives", "problems", "missing_blobs", "blobs_checked", "counts"
    ]  # fmt: skip
    bad = VerifyReport(file="x", ok=False, corrupt=True, problems=["p"], missing_blobs=[])
    assert list(bad.to_json()) == ["file", "ok", "corrupt", "problems", "missing_blobs"]
    assert bad.failure("x.tar") == "x.tar: 1 problem(s):\n  p"
