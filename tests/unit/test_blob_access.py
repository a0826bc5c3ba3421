"""Recovery through a blob storage driver (moorage.recovery.blob_access), the path an s3://
`--storage` takes, exercised here with the filesystem driver: restore's copy, verification
and a backup's source give what the file-based paths give."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from moorage.oci.digest import parse_digest
from moorage.recovery import backup, restore
from moorage.recovery.archive import ArchiveBlobs, read_header
from moorage.recovery.archive_records import read_metadata
from moorage.recovery.backup_sources import BlobStorageSource
from moorage.recovery.backup_verify import verify
from moorage.recovery.blob_access import SyncBlobs
from moorage.storage.paths import StorageLayout

FORMAT_1 = Path(__file__).parent.parent / "fixtures" / "backup-v1.tar"


def test_restore_copies_through_the_driver_only_what_is_missing(tmp_path: Path) -> None:
    with ArchiveBlobs([FORMAT_1]) as held:
        digests = set(held.digests())
    spec = str(tmp_path / "blobs")  # a str: the driver path (as for s3://)
    assert restore._copy_blobs([FORMAT_1], digests, spec) == len(digests)
    assert restore._copy_blobs([FORMAT_1], digests, spec) == 0
    layout = StorageLayout(Path(spec).resolve())
    for digest in digests:
        d = parse_digest(digest)
        data = layout.blob(digest).read_bytes()
        h = d.hasher()
        h.update(data)
        assert h.hexdigest() == d.encoded
    assert list(layout.uploads.iterdir()) == []  # every upload ended


def test_a_blob_whose_bytes_do_not_match_is_not_stored(tmp_path: Path) -> None:
    blobs = SyncBlobs(str(tmp_path))
    try:
        digest = "sha256:" + "0" * 64

        def fill(write: Callable[[bytes], None]) -> bool:
            write(b"other bytes")
            return True

        assert blobs.store(digest, fill) is False
        assert blobs.size(digest) is None
    finally:
        blobs.close()


def test_verify_and_backup_read_storage_through_the_driver(tmp_path: Path) -> None:
    with ArchiveBlobs([FORMAT_1]) as held:
        digests = set(held.digests())
    spec = str(tmp_path / "blobs")
    restore._copy_blobs([FORMAT_1], digests, spec)
    report = verify(FORMAT_1, spec)
    assert report.ok is True, report.problems

    md = read_metadata(FORMAT_1)
    to_store, _ = backup._plan(md, True, set())
    header = backup.new_header(read_header(FORMAT_1), md, True, to_store, set(), None, [])
    out = tmp_path / "again.tar"
    backup.write(out, header, md, to_store, BlobStorageSource(spec), None, None)
    again = verify(out)
    assert again.ok is True, again.problems
    assert again.to_json()["counts"] == report.to_json()["counts"]
