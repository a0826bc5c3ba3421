"""Backups: one tar file, consistent (one etcd revision), checksummed, blobs optional.

Layout of the archive, in this order:

    backup.json      header: version, cluster id, epoch, revision, created_at, counts,
                     which blobs the archive holds, the base archive of an incremental one
    metadata.json    every registry record as of `revision` (repositories, tags, manifest
                     records, blob links, referrers, users with their password hashes,
                     the cluster record and replica records)
    blobs/<alg>/<hex>  manifest bytes (always) and layer/config blobs (--include-blobs);
                     content-addressed, so each name is its own checksum
    SHA256SUMS       sha256 of every member above

A backup with `--since PREVIOUS` stores only blobs that neither PREVIOUS nor its own bases
hold; restoring it needs those archives next to it (their names are in the header).
Not included: upload sessions in progress, heartbeats, and blob storage itself unless
`--include-blobs`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from moorage.errors import MoorageError
from moorage.meta import keys
from moorage.oci import mediatypes as mt
from moorage.oci.manifest import parse_manifest
from moorage.recovery.client import AdminClient
from moorage.recovery.crypt import EncryptingWriter, decrypt_file, is_encrypted

FORMAT_VERSION = 1
ALL_MANIFEST_TYPES = ", ".join(sorted(mt.MANIFESTS | mt.INDEXES)) + ", */*"


class BackupError(MoorageError):
    pass


def blob_member(digest: str) -> str:
    alg, _, hex_ = digest.partition(":")
    return f"blobs/{alg}/{hex_}"


@dataclass
class Metadata:
    """The records of a backup, indexed for the checks and the restore."""

    kvs: list[tuple[str, str]]
    tags: dict[tuple[str, str], str] = field(default_factory=dict)  # (repo, tag) -> digest
    manifests: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    links: dict[tuple[str, str], int] = field(default_factory=dict)  # (repo, digest) -> size
    users: int = 0

    @classmethod
    def parse(cls, kvs: list[tuple[str, str]]) -> Metadata:
        md = cls(kvs)
        for key, value in kvs:
            raw = key.encode()
            if raw.startswith(keys.TAGS):
                repo, _, tag = key[len(keys.TAGS) :].rpartition("@")
                md.tags[(repo, tag)] = json.loads(value)["digest"]
            elif raw.startswith(keys.MANIFESTS):
                repo, _, digest = key[len(keys.MANIFESTS) :].rpartition("@")
                md.manifests[(repo, digest)] = json.loads(value)
            elif raw.startswith(keys.BLOBS):
                repo, _, digest = key[len(keys.BLOBS) :].rpartition("@")
                md.links[(repo, digest)] = int(json.loads(value)["size"])
            elif raw.startswith(keys.USERS):
                md.users += 1
        return md

    def repos(self) -> set[str]:
        return {k[len(keys.REPOS) :] for k, _ in self.kvs if k.encode().startswith(keys.REPOS)}

    def counts(self) -> dict[str, int]:
        return {
            "repositories": len(self.repos()),
            "tags": len(self.tags),
            "manifests": len(self.manifests),
            "blob_links": len(self.links),
            "blobs": len({d for _, d in self.links}),
            "users": self.users,
        }


class _HashingReader(io.RawIOBase):
    """A file object over an HTTP body that hashes what it yields."""

    def __init__(self, chunks: Iterator[bytes], algorithm: str) -> None:
        self._chunks = chunks
        self._buf = b""
        self.hasher = hashlib.new(algorithm)
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self.hasher.update(self._buf[:n])
        self.sha256.update(self._buf[:n])
        self._buf = self._buf[n:]
        return n


def _chain_blobs(previous: Path) -> tuple[set[str], list[str]]:
    """Blobs held by `previous` and its bases, and the chain of archive names."""
    header = read_header(previous)
    held = set(header["blobs_in_archive"]) | set(header.get("chain_blobs", []))
    chain = [previous.name, *header.get("base_chain", [])]
    return held, chain


def create(
    client: AdminClient,
    out: Path,
    include_blobs: bool,
    since: Path | None,
    progress: Callable[[int, int], None] | None = None,
    passphrase: str | None = None,
) -> dict[str, Any]:
    doc = client.call("GET", "/api/v0/cluster/backup")
    kvs = [(k, v) for k, v in doc["kvs"]]
    md = Metadata.parse(kvs)
    chain_held: set[str] = set()
    base_chain: list[str] = []
    if since is not None:
        with contextlib.ExitStack() as stack:
            chain_held, base_chain = _chain_blobs(plaintext(since, passphrase, stack))
            base_chain[0] = since.name
    # What to fetch: every manifest's bytes; with --include-blobs every linked blob.
    wanted: dict[str, tuple[str, str, int]] = {}  # digest -> (kind, repo, size)
    for (repo, digest), record in md.manifests.items():
        wanted.setdefault(digest, ("manifest", repo, int(record["size"])))
    if include_blobs:
        for (repo, digest), size in md.links.items():
            wanted.setdefault(digest, ("blob", repo, size))
    to_store = {d: w for d, w in wanted.items() if d not in chain_held}
    header = {
        "version": FORMAT_VERSION,
        "cluster_id": doc["cluster_id"],
        "epoch": doc["epoch"],
        "revision": doc["revision"],
        "created_at": time.time(),
        "include_blobs": include_blobs,
        "counts": md.counts(),
        "blobs_in_archive": sorted(to_store),
        "chain_blobs": sorted(chain_held),
        "base": since.name if since else None,
        "base_chain": base_chain,
    }
    sums: dict[str, str] = {}
    tmp = out.with_name(out.name + ".partial")
    total = sum(size for _, _, size in to_store.values())
    done = 0
    with contextlib.ExitStack() as files:
        raw = files.enter_context(open(tmp, "wb"))
        if passphrase:
            writer: Any = files.enter_context(EncryptingWriter(raw, passphrase))
            tar = files.enter_context(tarfile.open(fileobj=writer, mode="w|"))
        else:
            tar = files.enter_context(tarfile.open(fileobj=raw, mode="w"))
        http = files.enter_context(httpx.Client(auth=client.auth, timeout=300))
        for name, payload in (
            ("backup.json", json.dumps(header, indent=1).encode()),
            ("metadata.json", json.dumps({"kvs": kvs}).encode()),
        ):
            _add_bytes(tar, name, payload)
            sums[name] = hashlib.sha256(payload).hexdigest()
        base_url = client.urls[0]
        for digest, (kind, repo, size) in sorted(to_store.items()):
            alg, _, hex_ = digest.partition(":")
            if kind == "manifest":
                url = f"{base_url}/v2/{repo}/manifests/{digest}"
                headers = {"Accept": ALL_MANIFEST_TYPES}
            else:
                url = f"{base_url}/v2/{repo}/blobs/{digest}"
                headers = {}
            with http.stream("GET", url, headers=headers) as resp:
                if resp.status_code != 200:
                    raise BackupError(
                        f"could not read {kind} {digest} of {repo}: HTTP {resp.status_code}"
                    )
                reader = _HashingReader(resp.iter_bytes(1024 * 1024), alg)
                info = tarfile.TarInfo(blob_member(digest))
                info.size = size
                info.mtime = int(time.time())
                tar.addfile(info, io.BufferedReader(reader, 1024 * 1024))
                if reader.hasher.hexdigest() != hex_:
                    raise BackupError(f"{kind} {digest} of {repo} read back with another digest")
            sums[blob_member(digest)] = reader.sha256.hexdigest()
            done += size
            if progress:
                progress(done, total)
        listing = "".join(f"{h}  {n}\n" for n, h in sorted(sums.items())).encode()
        _add_bytes(tar, "SHA256SUMS", listing)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(out)
    return {
        "file": str(out),
        "size": out.stat().st_size,
        **{k: header[k] for k in ("cluster_id", "epoch", "revision", "counts", "base")},
        "blobs_in_archive": len(to_store),
        "blobs_from_base": len(wanted) - len(to_store),
        "encrypted": bool(passphrase),
    }


def _add_bytes(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(payload))


def plaintext(path: Path, passphrase: str | None, stack: contextlib.ExitStack) -> Path:
    """The archive itself, or a decrypted copy in a temporary directory (removed with
    `stack`) when it is encrypted."""
    if not is_encrypted(path):
        return path
    if not passphrase:
        raise BackupError(
            f"{path} is encrypted: give its passphrase (--passphrase-file or "
            "MOORAGE_BACKUP_PASSPHRASE)"
        )
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="moorage-backup-")))
    out = tmp / path.name
    decrypt_file(path, out, passphrase)
    return out


def read_header(path: Path) -> dict[str, Any]:
    try:
        with tarfile.open(path, "r") as tar:
            member = tar.extractfile("backup.json")
            if member is None:
                raise BackupError(f"{path} has no backup.json: not a Moorage backup")
            header: dict[str, Any] = json.loads(member.read())
    except (OSError, tarfile.TarError, KeyError, ValueError) as exc:
        raise BackupError(f"{path} is not a readable Moorage backup: {exc}") from None
    if header.get("version") != FORMAT_VERSION:
        raise BackupError(
            f"{path} has backup format {header.get('version')}, expected {FORMAT_VERSION}"
        )
    return header


def read_metadata(path: Path) -> Metadata:
    with tarfile.open(path, "r") as tar:
        member = tar.extractfile("metadata.json")
        if member is None:
            raise BackupError(f"{path} has no metadata.json")
        doc = json.loads(member.read())
    return Metadata.parse([(k, v) for k, v in doc["kvs"]])


def inspect(path: Path, passphrase: str | None = None) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        header = read_header(plaintext(path, passphrase, stack))
    return {
        "file": str(path),
        "version": header["version"],
        "cluster_id": header["cluster_id"],
        "epoch": header["epoch"],
        "revision": header["revision"],
        "created_at": header["created_at"],
        "counts": header["counts"],
        "include_blobs": header["include_blobs"],
        "blobs_in_archive": len(header["blobs_in_archive"]),
        "base": header["base"],
        "size": path.stat().st_size,
        "encrypted": is_encrypted(path),
    }


def _chain_paths(path: Path, header: dict[str, Any]) -> list[Path]:
    return [path.parent / name for name in header.get("base_chain", [])]


class ArchiveBlobs:
    """Blobs of an archive chain, read through one open handle per archive and an index of
    its members (opening and scanning a tar per blob would be quadratic)."""

    def __init__(self, archives: list[Path]) -> None:
        self._tars: list[tarfile.TarFile] = []
        self._members: dict[str, tuple[tarfile.TarFile, tarfile.TarInfo]] = {}
        try:
            for archive in archives:
                tar = tarfile.open(archive, "r")  # noqa: SIM115 (closed by close())
                self._tars.append(tar)
                for info in tar.getmembers():
                    self._members.setdefault(info.name, (tar, info))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for tar in self._tars:
            tar.close()
        self._tars = []

    def __enter__(self) -> ArchiveBlobs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def copy(self, digest: str, write: Callable[[bytes], object]) -> bool:
        """Stream a blob out of the first archive of the chain that holds it."""
        found = self._members.get(blob_member(digest))
        if found is None:
            return False
        tar, info = found
        member = tar.extractfile(info)
        if member is None:
            return False
        while chunk := member.read(1024 * 1024):
            write(chunk)
        return True


def verify(
    path: Path, storage: Path | None = None, passphrase: str | None = None
) -> dict[str, Any]:
    """Checksums of every member, then referential integrity; `problems` empty means good."""
    with contextlib.ExitStack() as stack:
        return _verify(path, plaintext(path, passphrase, stack), storage, passphrase, stack)


def _verify(
    original: Path,
    path: Path,
    storage: Path | None,
    passphrase: str | None,
    stack: contextlib.ExitStack,
) -> dict[str, Any]:
    header = read_header(path)
    problems: list[str] = []
    sums: dict[str, str] = {}
    seen: dict[str, str] = {}
    with tarfile.open(path, "r") as tar:
        for member in tar:
            f = tar.extractfile(member)
            if f is None:
                continue
            if member.name == "SHA256SUMS":
                for line in f.read().decode().splitlines():
                    digest, _, name = line.partition("  ")
                    sums[name] = digest
                continue
            h256 = hashlib.sha256()
            alg = member.name.split("/")[1] if member.name.startswith("blobs/") else "sha256"
            hcontent = hashlib.new(alg)
            while chunk := f.read(1024 * 1024):
                h256.update(chunk)
                hcontent.update(chunk)
            seen[member.name] = h256.hexdigest()
            if (
                member.name.startswith("blobs/")
                and hcontent.hexdigest() != member.name.split("/")[2]
            ):
                problems.append(f"{member.name}: content does not match its digest")
    if not sums:
        problems.append("SHA256SUMS is missing: the archive is truncated")
    for name, digest in sums.items():
        if name not in seen:
            problems.append(f"{name}: listed in SHA256SUMS but missing from the archive")
        elif seen[name] != digest:
            problems.append(f"{name}: checksum mismatch")
    for name in seen:
        if name not in sums and sums:
            problems.append(f"{name}: not listed in SHA256SUMS")
    if problems:
        return {
            "file": str(original),
            "ok": False,
            "corrupt": True,
            "problems": problems,
            "missing_blobs": [],
        }

    archives = [path]
    for base in _chain_paths(original, header):
        if not base.exists():
            problems.append(f"base archive {base} of this incremental backup is missing")
        else:
            archives.append(plaintext(base, passphrase, stack))
    held = set(header["blobs_in_archive"]) | set(header.get("chain_blobs", []))
    md = read_metadata(path)

    def available(digest: str) -> bool:
        if digest in held:
            return True
        if storage is not None:
            alg, _, hex_ = digest.partition(":")
            return (storage / "blobs" / alg / hex_[:2] / hex_).exists()
        return False

    missing: set[str] = set()
    blobs = stack.enter_context(ArchiveBlobs([a for a in archives if a.exists()]))
    for (repo, tag), digest in md.tags.items():
        if (repo, digest) not in md.manifests:
            problems.append(f"tag {repo}:{tag} points at {digest}, which has no manifest record")
    check_blobs = header["include_blobs"] or storage is not None
    for (repo, digest), record in md.manifests.items():
        if not available(digest):
            problems.append(
                f"manifest {repo}@{digest}: its bytes are neither in the archive nor in storage"
            )
            continue
        body = _read_available(blobs, storage, digest)
        if body is None:
            continue
        try:
            manifest = parse_manifest(body, record["media_type"])
        except MoorageError as exc:
            problems.append(f"manifest {repo}@{digest} does not parse: {exc}")
            continue
        for desc in (manifest.config, *manifest.layers):
            if desc is None or mt.is_non_distributable(desc.media_type):
                continue
            if (repo, desc.digest) not in md.links:
                problems.append(
                    f"manifest {repo}@{digest} names {desc.digest}, not linked in {repo}"
                )
            elif check_blobs and not available(desc.digest):
                missing.add(desc.digest)
        for child in manifest.children:
            if (repo, child.digest) not in md.manifests:
                problems.append(
                    f"index {repo}@{digest} names manifest {child.digest}, not in {repo}"
                )
    for digest in sorted(missing):
        problems.append(f"blob {digest} is referenced but neither in the archive nor in storage")
    return {
        "file": str(original),
        "ok": not problems,
        "corrupt": False,
        "archives": [str(a) for a in archives],
        "problems": problems,
        "missing_blobs": sorted(missing),
        "blobs_checked": check_blobs,
        "counts": header["counts"],
    }


def _read_available(blobs: ArchiveBlobs, storage: Path | None, digest: str) -> bytes | None:
    parts: list[bytes] = []
    if blobs.copy(digest, parts.append):
        return b"".join(parts)
    if storage is not None:
        alg, _, hex_ = digest.partition(":")
        path = storage / "blobs" / alg / hex_[:2] / hex_
        if path.exists():
            return path.read_bytes()
    return None
