"""`moorage backup verify` and `backup inspect`: check an archive (and its chain) in steps.

    1. members     every member's name, type, size and checksum (SHA256SUMS), and every
                   blob the header lists actually held
    2. records     every record valid (a forged one makes the archive corrupt)
    3. chain       the base archives of an incremental backup, scanned like step 1
    4. claims      every blob the header says a base holds is held by some archive
    5. references  tag -> manifest -> blobs and index -> manifests, manifests parsed

Steps 1-4 decide `corrupt` (a restore refuses the archive); step 5 lists what is missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moorage.errors import MoorageError
from moorage.meta.records import ManifestRecord
from moorage.oci import mediatypes as mt
from moorage.oci.digest import parse_digest
from moorage.oci.manifest import MAX_MANIFEST_BYTES, parse_manifest
from moorage.recovery.archive import (
    CHUNK,
    RECORD_MEMBERS,
    ArchiveBlobs,
    BackupError,
    appended,
    member_digest,
    open_tar,
    plaintext,
    read_header,
    record_limits,
    regular,
    show,
)
from moorage.recovery.archive_records import Metadata, read_metadata
from moorage.recovery.backup_results import BackupInspection, VerifyReport
from moorage.recovery.blob_access import SyncBlobs
from moorage.recovery.crypt import is_encrypted
from moorage.storage.paths import StorageLayout


@dataclass
class _Scan:
    """What one pass over an archive found: every member's sha256 and the problems."""

    members: dict[str, str] = field(default_factory=dict)
    digests: dict[str, tarfile.TarInfo] = field(default_factory=dict)  # content matches
    problems: list[str] = field(default_factory=list)


def scan(path: Path, label: str) -> _Scan:
    """Check every member of an archive: its name, its type, its size, its checksum."""
    found = _Scan()
    sums: dict[str, str] = {}
    names: set[str] = set()
    try:
        with open_tar(path) as tar:
            for info in tar:
                if info.name in names:
                    found.problems.append(f"{label}: member {show(info.name)} appears twice")
                    continue
                names.add(info.name)
                _scan_member(tar, info, label, found, sums)
            if (tail := appended(path, tar.offset)) is not None:
                found.problems.append(f"{label}: {tail}")
    except BackupError as exc:
        found.problems.append(str(exc))
        return found
    except (OSError, tarfile.TarError, EOFError, ValueError) as exc:
        found.problems.append(f"{label} cannot be read as an uncompressed tar archive: {exc}")
        return found
    if "SHA256SUMS" not in names:
        found.problems.append(f"{label}: SHA256SUMS is missing: the archive is truncated")
        return found
    _compare_sums(found, sums, label)
    for name in ("backup.json", "metadata.json"):
        if name not in names:
            found.problems.append(f"{label}: {name} is missing: not a Moorage backup")
    return found


def _scan_member(
    tar: tarfile.TarFile, info: tarfile.TarInfo, label: str, found: _Scan, sums: dict[str, str]
) -> None:
    name = info.name
    limits = record_limits()
    digest = member_digest(name)
    if name not in RECORD_MEMBERS and digest is None:
        found.problems.append(f"{label}: unexpected member {show(name)}")
        return
    if not regular(info):
        found.problems.append(f"{label}: member {show(name)} is not a regular file")
        return
    if name in limits and info.size > limits[name][0]:
        found.problems.append(
            f"{label}: {name} is {info.size} bytes, more than the {limits[name][0]} this "
            f"command reads (raise {limits[name][1]} if the archive is trusted)"
        )
        return
    f = tar.extractfile(info)
    if f is None:
        found.problems.append(f"{label}: member {show(name)} cannot be read")
        return
    if name == "SHA256SUMS":
        _parse_sums(f.read(limits[name][0]), sums, found.problems, label)
        return
    h256 = hashlib.sha256()
    hcontent = parse_digest(digest).hasher() if digest else None
    while chunk := f.read(CHUNK):
        h256.update(chunk)
        if hcontent is not None:
            hcontent.update(chunk)
    found.members[name] = h256.hexdigest()
    if digest is not None and hcontent is not None:
        if hcontent.hexdigest() != digest.partition(":")[2]:
            found.problems.append(f"{label}: {name}: content does not match its digest")
        else:
            found.digests[digest] = info


def _compare_sums(found: _Scan, sums: dict[str, str], label: str) -> None:
    for name, digest in sums.items():
        if name not in found.members:
            found.problems.append(
                f"{label}: {show(name)}: listed in SHA256SUMS but missing from the archive"
            )
        elif found.members[name] != digest:
            found.problems.append(f"{label}: {name}: checksum mismatch")
    for name in found.members:
        if name not in sums:
            found.problems.append(f"{label}: {name}: not listed in SHA256SUMS")


def _parse_sums(data: bytes, sums: dict[str, str], problems: list[str], label: str) -> None:
    try:
        text = data.decode()
    except UnicodeDecodeError:
        problems.append(f"{label}: SHA256SUMS is not text")
        return
    for line in text.splitlines():
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            problems.append(f"{label}: SHA256SUMS has a malformed line {show(line)}")
            continue
        sums[name] = digest


def verify(
    path: Path, storage: Path | str | None = None, passphrase: str | None = None
) -> VerifyReport:
    """Checksums of every member, then referential integrity; `problems` empty means good."""
    with contextlib.ExitStack() as stack:
        report = verify_plain(path, plaintext(path, passphrase, stack), storage, passphrase, stack)
    return VerifyReport.of(report)


@dataclass
class _Chain:
    """The archive and its base archives: what they actually hold."""

    archives: list[Path]
    indexes: list[dict[str, tarfile.TarInfo]]
    held: set[str]
    problems: list[str] = field(default_factory=list)
    missing_bases: list[str] = field(default_factory=list)


def verify_plain(
    original: Path,
    path: Path,
    storage: Path | str | None,
    passphrase: str | None,
    stack: contextlib.ExitStack,
) -> dict[str, Any]:
    """The verification report of the (decrypted) archive `path`. `corrupt` (the archive
    or its chain cannot be trusted: a restore refuses it) is set for bad members or
    checksums, invalid records, and blobs the header says the chain holds but no archive
    of it does. `held` lists the blobs the chain actually holds."""
    header = read_header(path)
    found = scan(path, original.name)
    problems = found.problems + _check_listed_blobs(original, header, found)  # step 1
    md = None
    if not problems:
        md = read_metadata(path, header["version"])
        problems += _check_records(original, md)  # step 2
    chain = _scan_chain(original, path, found, header["base_chain"], passphrase, stack)  # 3
    problems += chain.problems
    layout: StorageLayout | SyncBlobs | None = None
    if isinstance(storage, Path):
        layout = StorageLayout(storage)
    elif storage is not None:  # s3://, through its driver
        layout = SyncBlobs(storage)
        stack.callback(layout.close)

    def available(digest: str) -> bool:
        if digest in chain.held or layout is None:
            return digest in chain.held
        if isinstance(layout, SyncBlobs):
            return layout.size(digest) is not None
        return layout.blob(digest).exists()

    if not problems and not chain.missing_bases:
        problems += _check_chain_claims(header["chain_blobs"], available)  # step 4
    if problems or md is None:
        return {
            "file": str(original),
            "ok": False,
            "corrupt": True,
            "problems": problems + chain.missing_bases,
            "missing_blobs": [],
        }
    check_blobs = bool(header["include_blobs"]) or storage is not None
    blobs = stack.enter_context(ArchiveBlobs(chain.archives, chain.indexes))
    refs = _References(md, blobs, layout, available, check_blobs)
    refs.check()  # step 5
    if refs.contradictions:
        return {
            "file": str(original),
            "ok": False,
            "corrupt": True,
            "problems": refs.contradictions + chain.missing_bases,
            "missing_blobs": [],
        }
    problems = chain.missing_bases + refs.problems
    problems += [
        f"blob {d} is referenced but neither in the archive nor in storage"
        for d in sorted(refs.missing)
    ]
    return {
        "file": str(original),
        "ok": not problems,
        "corrupt": False,
        "archives": [str(a) for a in chain.archives],
        "problems": problems,
        "missing_blobs": sorted(refs.missing),
        "notes": refs.notes,
        "blobs_checked": check_blobs,
        "counts": md.counts(),  # of the records verified (an old header lacks some)
        "held": sorted(chain.held),
    }


def _check_listed_blobs(original: Path, header: dict[str, Any], found: _Scan) -> list[str]:
    if found.problems:
        return []
    return [
        f"{original.name}: the header lists blob {digest} but the archive does not hold it"
        for digest in header["blobs_in_archive"]
        if digest not in found.digests
    ]


def _check_records(original: Path, md: Metadata) -> list[str]:
    if not md.invalid:
        return []
    return [
        f"{original.name}: {len(md.invalid)} invalid record(s), refused (a forged or "
        "corrupt archive):",
        *(f"  {line}" for line in md.invalid),
    ]


def _scan_chain(
    original: Path,
    path: Path,
    found: _Scan,
    base_chain: list[str],
    passphrase: str | None,
    stack: contextlib.ExitStack,
) -> _Chain:
    chain = _Chain([path], [found.digests], set(found.digests))
    for name in base_chain:
        base = original.parent / name
        if not base.is_file():
            chain.missing_bases.append(f"base archive {base} of this incremental backup is missing")
            continue
        plain = plaintext(base, passphrase, stack)
        base_scan = scan(plain, name)
        chain.problems += base_scan.problems
        chain.archives.append(plain)
        chain.indexes.append(base_scan.digests)
        chain.held |= set(base_scan.digests)
    return chain


def _check_chain_claims(claimed: list[str], available: Callable[[str], bool]) -> list[str]:
    return [
        f"blob {digest}: the header says a base archive holds it, but no archive of the "
        "chain does (was a base replaced?)"
        for digest in claimed
        if not available(digest)
    ]


@dataclass
class _References:
    """Step 5: every tag names a manifest, every manifest's blobs are linked (and present
    when blobs are checked), every index's manifests are in its repository."""

    md: Metadata
    blobs: ArchiveBlobs
    layout: StorageLayout | SyncBlobs | None
    available: Callable[[str], bool]
    check_blobs: bool
    problems: list[str] = field(default_factory=list)
    #: records that say what their bytes do not (tampered: a restore refuses the archive)
    contradictions: list[str] = field(default_factory=list)
    missing: set[str] = field(default_factory=set)
    # What is worth knowing but valid: an index whose child manifest was deleted by digest
    # (the spec keeps the manifests that refer to it; the registry answers 404 for it).
    notes: list[str] = field(default_factory=list)

    def check(self) -> None:
        for (repo, tag), digest in self.md.tags.items():
            record = self.md.manifests.get((repo, digest))
            if record is None:
                self.problems.append(
                    f"tag {repo}:{tag} points at {digest}, which has no manifest record"
                )
                continue
            claimed = self.md.tag_claims.get((repo, tag))
            if claimed is not None and claimed != (record.media_type, record.size):
                self.contradictions.append(
                    f"tag {repo}:{tag} says its manifest is {claimed[0]} of {claimed[1]} "
                    f"bytes; the manifest record says {record.media_type} of {record.size}"
                )
        for (repo, blob), size in self.md.links.items():
            held = self.blobs.size(blob)
            if held is not None and held != size:
                self.contradictions.append(
                    f"blob {blob} is linked in {repo} as {size} bytes; the archive holds "
                    f"{held} bytes of it"
                )
        for (repo, digest), record in self.md.manifests.items():
            self._manifest(repo, digest, record)

    def _manifest(self, repo: str, digest: str, record: ManifestRecord) -> None:
        where = f"manifest {repo}@{digest}"
        if not self.available(digest):
            self.problems.append(f"{where}: its bytes are neither in the archive nor in storage")
            return
        try:
            body = _read_manifest(self.blobs, self.layout, digest)
        except BackupError as exc:
            self.problems.append(f"{where}: {exc}")
            return
        if body is None:
            return
        try:
            manifest = parse_manifest(body, record.media_type)
        except MoorageError as exc:
            self.problems.append(f"{where} does not parse: {exc}")
            return
        # What the record says of its bytes (subject and artifact type only when it says
        # any: records of versions before referrers have none).
        subject = manifest.subject.digest if manifest.subject else None
        artifact = manifest.referrer_artifact_type()
        if (
            record.size != len(body)
            or (record.subject is not None and record.subject != subject)
            or (record.artifact_type is not None and record.artifact_type != artifact)
        ):
            self.contradictions.append(
                f"{where}: its record (size {record.size}, subject {record.subject}, artifact "
                f"type {record.artifact_type}) is not what its {len(body)} bytes say"
            )
        sparse = self.md.allows_sparse(repo)  # absent references allowed (sparse content)
        for desc in (manifest.config, *manifest.layers):
            if desc is None or mt.is_non_distributable(desc.media_type):
                continue
            if (repo, desc.digest) not in self.md.links:
                if not sparse:
                    self.problems.append(f"{where} names {desc.digest}, not linked in {repo}")
            elif self.check_blobs and not self.available(desc.digest):
                self.missing.add(desc.digest)
        for child in manifest.children:
            if (repo, child.digest) not in self.md.manifests and not sparse:
                self.notes.append(
                    f"index {repo}@{digest} names manifest {child.digest}, not in {repo} "
                    "(deleted after the index was pushed: the index stays as it was)"
                )


def _read_manifest(
    blobs: ArchiveBlobs, layout: StorageLayout | SyncBlobs | None, digest: str
) -> bytes | None:
    """A manifest's bytes from the chain or storage (never more than a manifest can be)."""
    size = blobs.size(digest)
    if size is not None:
        if size > MAX_MANIFEST_BYTES:
            raise BackupError(f"{size} bytes, larger than a manifest can be")
        parts: list[bytes] = []
        if blobs.copy(digest, parts.append):
            return b"".join(parts)
    if isinstance(layout, SyncBlobs):
        try:
            return layout.read_small(digest, MAX_MANIFEST_BYTES)
        except ValueError:
            raise BackupError("larger in storage than a manifest can be") from None
    if layout is not None:
        try:
            with open(layout.blob(digest), "rb") as fh:
                data = fh.read(MAX_MANIFEST_BYTES + 1)
        except FileNotFoundError:
            return None
        if len(data) > MAX_MANIFEST_BYTES:
            raise BackupError("larger in storage than a manifest can be")
        return data
    return None


def archive_counts(path: Path, header: dict[str, Any]) -> tuple[int, int]:
    """(manifests, blobs) the archive at `path` holds; blobs are layer and config blobs.
    A format-1 header does not say which are manifests: its records do."""
    held = set(header["blobs_in_archive"])
    listed = header.get("manifests_in_archive")
    manifests = (
        set(listed) if isinstance(listed, list) else read_metadata(path, 1).manifest_digests()
    )
    n = len(held & manifests)
    return n, len(held) - n


def inspect(path: Path, passphrase: str | None = None) -> BackupInspection:
    with contextlib.ExitStack() as stack:
        plain = plaintext(path, passphrase, stack)
        header = read_header(plain)
        manifests, blobs = archive_counts(plain, header)
    return BackupInspection(
        file=str(path),
        version=header["version"],
        cluster_id=header["cluster_id"],
        epoch=header["epoch"],
        revision=header["revision"],
        created_at=header["created_at"],
        counts=header["counts"],
        include_blobs=header["include_blobs"],
        blobs_in_archive=blobs,
        manifests_in_archive=manifests,
        base=header["base"],
        size=path.stat().st_size,
        encrypted=is_encrypted(path),
    )
