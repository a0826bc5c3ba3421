"""The backup archive format, in-process (no cluster): format 1 archives (the store's keys
and values, written by the code before format 2) are still read, verified and counted, and
turn into the same typed records as formats 2 and 3; all count blobs and manifests apart.
Format 2 archives (no access token) still read; format 3 holds tokens as hashes."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from moorage.auth.access_tokens import secret_hash
from moorage.meta import keys
from moorage.meta.access_tokens import AccessTokenRecord
from moorage.meta.snapshot import AccessTokenEntry, to_json, to_kvs
from moorage.recovery import backup
from moorage.recovery.archive import FORMAT_VERSION, ArchiveBlobs, read_header
from moorage.recovery.archive_records import Metadata, read_metadata
from moorage.recovery.backup_sources import StorageSource
from moorage.recovery.backup_verify import archive_counts, inspect, verify
from moorage.recovery.restore_result import accounts_line
from moorage.storage.paths import StorageLayout

#: A backup written by the code of format 1 (metadata.json held the store's keys and
#: values): repositories old/app (tags v1, v2, a referrer of v1) and other (tag latest),
#: every blob included, user admin with the tests' password.
FORMAT_1 = Path(__file__).parent / "fixtures" / "backup-v1.tar"
#: What the counts of format 3 add (format 1's header counted none of it; it has none).
NO_ACCOUNTS = {"orgs": 0, "teams": 0, "grants": 0, "access_tokens": 0}


def test_format_1_reads_as_typed_records() -> None:
    header = read_header(FORMAT_1)
    assert header["version"] == 1
    md = read_metadata(FORMAT_1)
    assert md.invalid == []
    assert md.counts() == {**header["counts"], **NO_ACCOUNTS}
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


def _rewrite(md: Metadata, out: Path, version: int = FORMAT_VERSION) -> None:
    """Write `md` (format 1's records, and whatever a test adds) and format 1's bytes as an
    archive of `version` with the current writer (its progress reports every byte)."""
    storage = StorageLayout(out.parent / "blobs")
    with ArchiveBlobs([FORMAT_1]) as held:
        for digest in held.digests():
            path = storage.blob(digest)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as fh:
                held.copy(digest, fh.write)
    old = read_header(FORMAT_1)
    to_store, from_base = backup._plan(md, True, set())
    assert from_base == {}
    header = {**backup.new_header(old, md, True, to_store, set(), None, []), "version": version}
    done: list[int] = []
    source = StorageSource(storage.root)
    backup.write(out, header, md, to_store, source, None, lambda n, total: done.append(n))
    assert done[-1] == sum(size for _, _, size in to_store.values())


def test_format_1_rewritten_in_the_current_format(tmp_path: Path) -> None:
    """The writer of the current format run on a format-1 archive's records and bytes: the
    new archive verifies, holds typed records (no key), and counts as the old one did."""
    md = read_metadata(FORMAT_1)
    out = tmp_path / "v3.tar"
    _rewrite(md, out)
    assert read_header(out)["version"] == FORMAT_VERSION == 3
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
    assert inspect(out).counts == {**inspect(FORMAT_1).counts, **NO_ACCOUNTS}


def test_format_2_archives_still_read(tmp_path: Path) -> None:
    """An archive of format 2 (typed records, no access token) reads, verifies and
    counts as one of format 3 without tokens; its restore result says it holds none."""
    out = tmp_path / "v2.tar"
    _rewrite(read_metadata(FORMAT_1), out, version=2)
    assert read_header(out)["version"] == 2
    report = verify(out)
    assert report.ok is True, report.problems
    assert report.counts is not None
    assert report.counts["access_tokens"] == 0
    assert "access_token" not in {e.kind for e in read_metadata(out).entries}
    # An old header's counts (format 1's here) name no tokens: the plan says so.
    assert accounts_line(inspect(FORMAT_1).counts) == (
        "1 users, no access tokens (a backup older than format 3)"
    )


def test_access_tokens_are_in_the_archive_as_hashes(tmp_path: Path) -> None:
    """A personal token and a robot's token go into the archive with their owner, scope,
    expiry and the SHA-256 of the secret (never the secret); verify counts them; a restore
    writes each back with its owner's index entry (which the archive does not carry)."""
    secret = "5e" * 32
    tokens = [
        AccessTokenRecord("0123456789abcdef", "admin", False, secret_hash(secret),
                          ["repository:old/app:pull"], 1.0e9, 2.0e9, "admin"),
        AccessTokenRecord("fedcba9876543210", "robot+ci", True, "ab" * 32,
                          ["repository:old/*:pull,push"], 1.0e9, None, "admin"),
    ]  # fmt: skip
    md = read_metadata(FORMAT_1)
    for record in tokens:
        md.add(AccessTokenEntry(record))
    out = tmp_path / "tokens.tar"
    _rewrite(md, out)
    report = verify(out)
    assert report.ok is True, report.problems
    assert report.counts is not None
    assert report.counts["access_tokens"] == 2
    with tarfile.open(out, "r:") as tar:
        f = tar.extractfile("metadata.json")
        assert f is not None
        with f:
            raw = f.read()
    assert secret.encode() not in raw
    assert b"mrg_" not in raw
    back = read_metadata(out)
    restored = [e for e in back.restorable() if isinstance(e, AccessTokenEntry)]
    assert [e.record for e in restored] == tokens
    assert dict(to_kvs(restored[1])) == {
        keys.access_token("fedcba9876543210"): tokens[1].encode(),
        keys.access_token_owner("robot+ci", "fedcba9876543210"): b"{}",
    }
    # A forged token record (a secret where its hash belongs) makes the archive corrupt.
    forged = dict(to_json(restored[0]), secret_hash="mrg_" + secret)
    bad = Metadata.parse([*(to_json(e) for e in back.entries), forged])
    assert len(bad.invalid) == 1
    assert "secret_hash" in bad.invalid[0]


def test_verify_report_json_forms() -> None:
    """The typed verify report's one JSON form: a corrupt archive's has no counts."""
    from moorage.recovery.backup_results import VerifyReport

    good = verify(FORMAT_1).to_json()
    assert list(good) == [
        "file", "ok", "corrupt", "archives", "problems", "missing_blobs", "blobs_checked", "counts",
        "notes",
    ]  # fmt: skip
    bad = VerifyReport(file="x", ok=False, corrupt=True, problems=["p"], missing_blobs=[])
    assert list(bad.to_json()) == ["file", "ok", "corrupt", "problems", "missing_blobs"]
    assert bad.failure("x.tar") == "x.tar: 1 problem(s):\n  p"
