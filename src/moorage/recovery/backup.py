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

The bytes are read from blob storage itself when this host sees it (the cluster's storage
path, or `--storage`, checked with a probe file): blobs are immutable and never collected,
so what existed at the backup's revision is there even if it was deleted meanwhile, and
reading files costs no request per manifest. Otherwise they are read through the API.

Reading an archive trusts nothing in it: SHA256SUMS is no signature, so whoever can write
an unencrypted archive can change any member and its checksum. Member names, member types
and sizes, the header's fields, base archive names and every record are validated; a blob
counts as held only if a member of the archive (or of a base archive) actually holds it.
Archives are read as uncompressed tars (never decompressed) and records with bounded reads.
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
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from moorage.errors import DigestInvalid, MoorageError
from moorage.meta import keys
from moorage.meta.records import (
    ManifestRecord,
    TagRecord,
    UserRecord,
    check_digest,
    decode_blob_link,
    decode_referrer,
)
from moorage.oci import mediatypes as mt
from moorage.oci.digest import parse_digest
from moorage.oci.manifest import MAX_MANIFEST_BYTES, parse_manifest
from moorage.oci.names import is_valid_tag, validate_name
from moorage.recovery.client import AdminClient
from moorage.recovery.crypt import EncryptingWriter, decrypt_file, is_encrypted
from moorage.storage.paths import StorageLayout

FORMAT_VERSION = 1
ALL_MANIFEST_TYPES = ", ".join(sorted(mt.MANIFESTS | mt.INDEXES)) + ", */*"
RECORD_MEMBERS = ("backup.json", "metadata.json", "SHA256SUMS")
# Prefixes of the records a restore writes back (cluster, replica, heartbeat and lock
# records belong to the old cluster; other keys are left out).
RESTORED = (keys.USERS, keys.REPOS, keys.BLOBS, keys.MANIFESTS, keys.TAGS, keys.REFERRERS)
_NOT_RESTORED = (keys.CLUSTER, keys.REPLICAS, keys.HEARTBEATS, keys.LOCKS)
_CHUNK = 1024 * 1024
# Blobs up to this size are read ahead by a thread pool; larger ones are streamed.
_SMALL = 1024 * 1024
_READERS = 8
_WINDOW = 256


def _limit(env: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(env, default)))
    except ValueError:
        return default


def record_limits() -> dict[str, tuple[int, str]]:
    """Largest size read of each record member, and the variable that raises it."""
    return {
        "backup.json": (
            _limit("MOORAGE_BACKUP_MAX_HEADER_BYTES", 256 * 1024 * 1024),
            "MOORAGE_BACKUP_MAX_HEADER_BYTES",
        ),
        "metadata.json": (
            _limit("MOORAGE_BACKUP_MAX_METADATA_BYTES", 1024 * 1024 * 1024),
            "MOORAGE_BACKUP_MAX_METADATA_BYTES",
        ),
        "SHA256SUMS": (
            _limit("MOORAGE_BACKUP_MAX_SUMS_BYTES", 256 * 1024 * 1024),
            "MOORAGE_BACKUP_MAX_SUMS_BYTES",
        ),
    }


class BackupError(MoorageError):
    pass


def blob_member(digest: str) -> str:
    """The member name of a blob (DigestInvalid for anything but a valid digest)."""
    d = parse_digest(digest)
    return f"blobs/{d.algorithm}/{d.encoded}"


def member_digest(name: str) -> str | None:
    """The digest a member name `blobs/<alg>/<hex>` stands for, None if it is not one."""
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != "blobs":
        return None
    digest = f"{parts[1]}:{parts[2]}"
    try:
        parse_digest(digest)
    except DigestInvalid:
        return None
    return digest


def safe_archive_name(name: object) -> bool:
    """A base archive name is a plain file name next to the archive: no path at all."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= 255
        and name not in (".", "..")
        and not any(c in name for c in "/\\\0")
        and name.isprintable()
    )


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _regular(info: tarfile.TarInfo) -> bool:
    return info.type in (tarfile.REGTYPE, tarfile.AREGTYPE) and not info.issparse()


def _open_tar(path: Path) -> tarfile.TarFile:
    """An uncompressed tar (mode "r:": a compressed archive is never decompressed)."""
    try:
        return tarfile.open(path, "r:")
    except (OSError, tarfile.TarError, EOFError, ValueError) as exc:
        raise BackupError(
            f"{path} is not a readable Moorage backup (an uncompressed tar archive): {exc}"
        ) from None


def _read_record(tar: tarfile.TarFile, info: tarfile.TarInfo, where: Path) -> bytes:
    """A record member, read whole but never beyond its limit."""
    limit, env = record_limits()[info.name]
    if not _regular(info):
        raise BackupError(f"{where}: {info.name} is not a regular file: not a Moorage backup")
    if info.size > limit:
        raise BackupError(
            f"{where}: {info.name} is {info.size} bytes, more than the {limit} this command "
            f"reads; if the archive is trusted, raise {env}"
        )
    f = tar.extractfile(info)
    if f is None:
        raise BackupError(f"{where}: {info.name} cannot be read")
    data = f.read(limit + 1)
    if len(data) > limit:
        raise BackupError(f"{where}: {info.name} is larger than {limit} bytes")
    return data


def _find_record(tar: tarfile.TarFile, name: str, where: Path) -> bytes | None:
    for info in tar:
        if info.name == name:
            return _read_record(tar, info, where)
    return None


def _json(data: bytes, what: str, where: Path) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BackupError(f"{where}: {what} is not valid JSON: not a Moorage backup") from None


# -- the header -----------------------------------------------------------------------


def check_header(header: object, where: Path) -> dict[str, Any]:
    """The header's fields, each checked; BackupError listing every invalid one."""
    if not isinstance(header, dict):
        raise BackupError(f"{where}: backup.json is not a JSON object: not a Moorage backup")
    if header.get("version") != FORMAT_VERSION:
        raise BackupError(
            f"{where} has backup format {_show(header.get('version'))}, expected {FORMAT_VERSION}"
        )
    problems: list[str] = []
    expected: dict[str, tuple[type | tuple[type, ...], str]] = {
        "cluster_id": (str, "a string"),
        "epoch": (int, "an integer"),
        "revision": (int, "an integer"),
        "created_at": ((int, float), "a number"),
        "include_blobs": (bool, "true or false"),
        "counts": (dict, "an object"),
        "blobs_in_archive": (list, "a list"),
        "chain_blobs": (list, "a list"),
        "base_chain": (list, "a list"),
    }
    header.setdefault("chain_blobs", [])
    header.setdefault("base_chain", [])
    header.setdefault("base", None)
    for name, (typ, what) in expected.items():
        if not isinstance(header.get(name), typ):
            problems.append(f"backup.json: {name} is not {what}")
    cluster_id = header.get("cluster_id")
    if isinstance(cluster_id, str) and not (cluster_id.isalnum() and len(cluster_id) <= 64):
        problems.append(f"backup.json: invalid cluster id {_show(cluster_id)}")
    for name in ("blobs_in_archive", "chain_blobs"):
        for value in header.get(name) or () if isinstance(header.get(name), list) else ():
            try:
                check_digest(value, "backup header")
            except MoorageError:
                problems.append(f"backup.json: {name} lists an invalid digest {_show(value)}")
    chain = header.get("base_chain") if isinstance(header.get("base_chain"), list) else []
    base = header.get("base")
    for name in [*([base] if base is not None else []), *(chain or [])]:
        if not safe_archive_name(name):
            problems.append(
                f"backup.json: base archive name {_show(name)} is not a plain file name "
                "(no path): refused"
            )
    if base is not None and chain and chain[0] != base:
        problems.append("backup.json: base is not the first archive of base_chain")
    if problems:
        raise BackupError(
            f"{where} has an invalid header (backup.json); refused:\n  " + "\n  ".join(problems)
        )
    return header


def _read_json_member(path: Path, name: str) -> Any:
    """The JSON record `name` of the archive at `path` (bounded, validated member)."""
    try:
        with _open_tar(path) as tar:
            data = _find_record(tar, name, path)
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise BackupError(f"{path} is not a readable Moorage backup: {exc}") from None
    if data is None:
        raise BackupError(f"{path} has no {name}: not a Moorage backup")
    return _json(data, name, path)


def read_header(path: Path) -> dict[str, Any]:
    return check_header(_read_json_member(path, "backup.json"), path)


# -- the records ----------------------------------------------------------------------


@dataclass
class Metadata:
    """The records of a backup, each validated, indexed for the checks and the restore."""

    kvs: list[tuple[str, str]]  # every valid record (restorable or not)
    tags: dict[tuple[str, str], str] = field(default_factory=dict)  # (repo, tag) -> digest
    manifests: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    links: dict[tuple[str, str], int] = field(default_factory=dict)  # (repo, digest) -> size
    users: int = 0
    repo_names: set[str] = field(default_factory=set)
    invalid: list[str] = field(default_factory=list)  # one line per refused record

    @classmethod
    def parse(cls, kvs: object) -> Metadata:
        md = cls([])
        if not isinstance(kvs, list):
            md.invalid.append("metadata.json: kvs is not a list")
            return md
        for pair in kvs:
            if (
                not isinstance(pair, list | tuple)
                or len(pair) != 2
                or not all(isinstance(x, str) for x in pair)
            ):
                md.invalid.append(f"record {_show(pair)}: not a [key, value] pair of strings")
                continue
            key, value = pair
            try:
                md._add(key, value)
            except MoorageError as exc:
                md.invalid.append(f"record {_show(key)}: {exc}")
                continue
            md.kvs.append((key, value))
        return md

    def _add(self, key: str, value: str) -> None:
        raw = key.encode()
        if raw.startswith(keys.TAGS):
            repo, _, tag = key[len(keys.TAGS) :].rpartition("@")
            validate_name(repo)
            if not is_valid_tag(tag):
                raise BackupError(f"invalid tag {_show(tag)}")
            self.tags[(repo, tag)] = TagRecord.decode(value).digest
        elif raw.startswith(keys.MANIFESTS):
            repo, _, digest = key[len(keys.MANIFESTS) :].rpartition("@")
            validate_name(repo)
            check_digest(digest, "manifest key")
            record = ManifestRecord.decode(value)
            if record.digest != digest:
                raise BackupError(f"the record says digest {_show(record.digest)}")
            self.manifests[(repo, digest)] = json.loads(value)
        elif raw.startswith(keys.BLOBS):
            repo, _, digest = key[len(keys.BLOBS) :].rpartition("@")
            validate_name(repo)
            check_digest(digest, "blob link key")
            self.links[(repo, digest)] = decode_blob_link(value)
        elif raw.startswith(keys.REFERRERS):
            parts = key[len(keys.REFERRERS) :].split("@")
            if len(parts) != 3:
                raise BackupError("not <repo>@<subject>@<digest>")
            validate_name(parts[0])
            check_digest(parts[1], "referrer key", "subject")
            check_digest(parts[2], "referrer key")
            if decode_referrer(value)["digest"] != parts[2]:
                raise BackupError("the descriptor names another digest")
        elif raw.startswith(keys.REPOS):
            self.repo_names.add(validate_name(key[len(keys.REPOS) :]))
        elif raw.startswith(keys.USERS):
            user = UserRecord.decode(value)
            if user.name != key[len(keys.USERS) :]:
                raise BackupError(f"the record names user {_show(user.name)}")
            self.users += 1
        elif raw == keys.CLUSTER or raw.startswith(_NOT_RESTORED) or raw.startswith(keys.ROOT):
            return  # kept in the archive, never restored
        else:
            raise BackupError("not a Moorage key")

    def restorable(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.kvs if k.encode().startswith(RESTORED)]

    def repos(self) -> set[str]:
        return self.repo_names

    def counts(self) -> dict[str, int]:
        return {
            "repositories": len(self.repo_names),
            "tags": len(self.tags),
            "manifests": len(self.manifests),
            "blob_links": len(self.links),
            "blobs": len({d for _, d in self.links}),
            "users": self.users,
        }


def read_metadata(path: Path) -> Metadata:
    doc = _read_json_member(path, "metadata.json")
    if not isinstance(doc, dict):
        raise BackupError(f"{path}: metadata.json is not a JSON object")
    return Metadata.parse(doc.get("kvs"))


# -- writing --------------------------------------------------------------------------


class _HashingReader(io.RawIOBase):
    """A file object over chunks (an HTTP body, a file) that hashes what it yields."""

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


def archive_digests(path: Path) -> set[str]:
    """The blobs an archive actually holds: its regular `blobs/<alg>/<hex>` members (names
    only; `verify` checks their content)."""
    try:
        with _open_tar(path) as tar:
            return {
                d
                for info in tar.getmembers()
                if _regular(info) and (d := member_digest(info.name)) is not None
            }
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise BackupError(f"{path} is not a readable Moorage backup: {exc}") from None


def _chain_blobs(
    previous: Path, passphrase: str | None, stack: contextlib.ExitStack
) -> tuple[set[str], list[str]]:
    """Blobs actually held by `previous` and its bases (which must be next to it), and the
    chain of archive names."""
    plain = plaintext(previous, passphrase, stack)
    header = read_header(plain)
    chain = [previous.name, *header["base_chain"]]
    held = archive_digests(plain)
    for name in header["base_chain"]:
        base = previous.parent / name
        if not base.is_file():
            raise BackupError(
                f"{previous} is an incremental backup whose base {name} is not next to it: "
                "put it there, or take a full backup (without --since)"
            )
        held |= archive_digests(plaintext(base, passphrase, stack))
    return held, chain


class _Source:
    """Where the bytes of the backup come from."""

    name = ""

    def small(self, kind: str, repo: str, digest: str) -> bytes:
        raise NotImplementedError

    @contextlib.contextmanager
    def stream(self, kind: str, repo: str, digest: str) -> Iterator[tuple[int | None, Any]]:
        raise NotImplementedError
        yield  # pragma: no cover

    def close(self) -> None:
        pass


class _StorageSource(_Source):
    """Blob storage, read directly: what existed at the backup's revision is still there."""

    name = "storage"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.layout = StorageLayout(root)

    def _missing(self, kind: str, repo: str, digest: str) -> BackupError:
        return BackupError(
            f"{kind} {digest} of {repo} is recorded but its bytes are not in blob storage at "
            f"{self.root}; check that storage (moorage backup verify --storage)"
        )

    def small(self, kind: str, repo: str, digest: str) -> bytes:
        try:
            return self.layout.blob(digest).read_bytes()
        except FileNotFoundError:
            raise self._missing(kind, repo, digest) from None

    @contextlib.contextmanager
    def stream(self, kind: str, repo: str, digest: str) -> Iterator[tuple[int | None, Any]]:
        try:
            fh = open(self.layout.blob(digest), "rb")  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            raise self._missing(kind, repo, digest) from None
        with fh:
            size = os.fstat(fh.fileno()).st_size
            yield size, iter(lambda: fh.read(_CHUNK), b"")


class _HttpSource(_Source):
    """The registry API (when this host does not see blob storage)."""

    name = "http"

    def __init__(self, client: AdminClient, revision: int) -> None:
        self.base = client.urls[0]
        self.revision = revision
        self.http = httpx.Client(auth=client.auth, timeout=300)

    def close(self) -> None:
        self.http.close()

    def _url(self, kind: str, repo: str, digest: str) -> tuple[str, dict[str, str]]:
        if kind == "manifest":
            return f"{self.base}/v2/{repo}/manifests/{digest}", {"Accept": ALL_MANIFEST_TYPES}
        return f"{self.base}/v2/{repo}/blobs/{digest}", {}

    def _failed(self, kind: str, repo: str, digest: str, status: int) -> BackupError:
        return BackupError(
            f"could not read {kind} {digest} of {repo}: HTTP {status} (deleted while the "
            f"backup ran?); run the backup on a host that sees the cluster's blob storage "
            f"(or give its local path with --storage): it reads revision {self.revision} "
            "from there whatever is deleted meanwhile"
        )

    def small(self, kind: str, repo: str, digest: str) -> bytes:
        url, headers = self._url(kind, repo, digest)
        resp = self.http.get(url, headers=headers)
        if resp.status_code != 200:
            raise self._failed(kind, repo, digest, resp.status_code)
        return resp.content

    @contextlib.contextmanager
    def stream(self, kind: str, repo: str, digest: str) -> Iterator[tuple[int | None, Any]]:
        url, headers = self._url(kind, repo, digest)
        with self.http.stream("GET", url, headers=headers) as resp:
            if resp.status_code != 200:
                raise self._failed(kind, repo, digest, resp.status_code)
            yield None, resp.iter_bytes(_CHUNK)


def find_storage(client: AdminClient, storage: Path | None) -> Path | None:
    """The local path of the cluster's blob storage if this host sees it (checked with a
    probe file the cluster writes), else None; an explicit `storage` must be it."""
    try:
        probe = client.call("POST", "/api/v0/cluster/storage-probe", {})
        name = str(probe["path"])
        content = str(probe["content"])
        remote = str(probe["storage"])
    except (MoorageError, KeyError, TypeError) as exc:
        if storage is not None:
            raise BackupError(f"could not check --storage {storage}: {exc}") from None
        return None
    local = storage.resolve() if storage is not None else Path(remote)
    parts = name.split("/")
    path = local / name
    seen = None
    if len(parts) == 2 and parts[0] == "probe" and safe_archive_name(parts[1]):
        try:
            seen = path.read_text()
        except (OSError, UnicodeDecodeError):
            seen = None
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
    if seen == content:
        return local
    if storage is not None:
        raise BackupError(
            f"--storage {storage} is not the cluster's blob storage (a probe file the cluster "
            f"wrote to {remote}/{name} is not there); give the local path of that storage"
        )
    return None


def _read_ahead(
    items: Iterable[tuple[str, tuple[str, str, int]]],
    source: _Source,
) -> Iterator[tuple[str, tuple[str, str, int], bytes | None]]:
    """Items in order, small ones already read by a pool of threads (a bounded window)."""
    with ThreadPoolExecutor(_READERS) as pool:
        pending: deque[tuple[str, tuple[str, str, int], Future[bytes] | None]] = deque()
        it = iter(items)

        def fill() -> None:
            while len(pending) < _WINDOW:
                try:
                    digest, what = next(it)
                except StopIteration:
                    return
                kind, repo, size = what
                fut = pool.submit(source.small, kind, repo, digest) if size <= _SMALL else None
                pending.append((digest, what, fut))

        fill()
        try:
            while pending:
                digest, what, fut = pending.popleft()
                fill()
                yield digest, what, fut.result() if fut is not None else None
        finally:
            for _, _, fut in pending:
                if fut is not None:
                    fut.cancel()


def create(
    client: AdminClient,
    out: Path,
    include_blobs: bool,
    since: Path | None,
    progress: Callable[[int, int], None] | None = None,
    passphrase: str | None = None,
    storage: Path | None = None,
) -> dict[str, Any]:
    local = find_storage(client, storage)
    doc = client.call("GET", "/api/v0/cluster/backup")
    md = Metadata.parse(doc.get("kvs"))
    chain_held: set[str] = set()
    base_chain: list[str] = []
    with contextlib.ExitStack() as stack:
        if since is not None:
            if not safe_archive_name(since.name):
                raise BackupError(f"--since {since}: not a backup file name")
            chain_held, base_chain = _chain_blobs(since, passphrase, stack)
        # What to store: every manifest's bytes; with --include-blobs every linked blob.
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
    source: _Source = (
        _StorageSource(local) if local is not None else _HttpSource(client, doc["revision"])
    )
    sums: dict[str, str] = {}
    tmp = out.with_name(out.name + ".partial")
    total = sum(size for _, _, size in to_store.values())
    done = 0
    now = int(time.time())
    try:
        with contextlib.ExitStack() as files:
            files.callback(source.close)
            raw = files.enter_context(open(tmp, "wb"))
            if passphrase:
                writer: Any = files.enter_context(EncryptingWriter(raw, passphrase))
                tar = files.enter_context(tarfile.open(fileobj=writer, mode="w|"))
            else:
                tar = files.enter_context(tarfile.open(fileobj=raw, mode="w"))
            for name, payload in (
                ("backup.json", json.dumps(header, indent=1).encode()),
                ("metadata.json", json.dumps({"kvs": md.kvs}).encode()),
            ):
                _add_bytes(tar, name, payload, now)
                sums[name] = hashlib.sha256(payload).hexdigest()
            for digest, (kind, repo, size), body in _read_ahead(sorted(to_store.items()), source):
                d = parse_digest(digest)
                info = tarfile.TarInfo(blob_member(digest))
                info.mtime = now
                if body is not None:
                    if hashlib.new(d.algorithm, body).hexdigest() != d.encoded:
                        raise BackupError(
                            f"{kind} {digest} of {repo} read back with another digest"
                        )
                    info.size = len(body)
                    tar.addfile(info, io.BytesIO(body))
                    sums[info.name] = hashlib.sha256(body).hexdigest()
                    size = len(body)
                else:
                    with source.stream(kind, repo, digest) as (actual, chunks):
                        reader = _HashingReader(chunks, d.algorithm)
                        info.size = size if actual is None else actual
                        tar.addfile(info, io.BufferedReader(reader, _CHUNK))
                    if reader.hasher.hexdigest() != d.encoded:
                        raise BackupError(
                            f"{kind} {digest} of {repo} read back with another digest"
                        )
                    sums[info.name] = reader.sha256.hexdigest()
                done += size
                if progress:
                    progress(done, total)
            listing = "".join(f"{h}  {n}\n" for n, h in sorted(sums.items())).encode()
            _add_bytes(tar, "SHA256SUMS", listing, now)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {
        "file": str(out),
        "size": out.stat().st_size,
        **{k: header[k] for k in ("cluster_id", "epoch", "revision", "counts", "base")},
        "blobs_in_archive": len(to_store),
        "blobs_from_base": len(wanted) - len(to_store),
        "encrypted": bool(passphrase),
        "source": source.name,
        "storage": str(local) if local is not None else None,
        "invalid_records": md.invalid,
    }


def _add_bytes(tar: tarfile.TarFile, name: str, payload: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = mtime
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


# -- reading and checking -------------------------------------------------------------


class ArchiveBlobs:
    """Blobs of an archive chain, read through one open handle per archive and an index of
    its members (opening and scanning a tar per blob would be quadratic). Only regular
    members named `blobs/<alg>/<valid hex>` count."""

    def __init__(
        self, archives: list[Path], indexes: list[dict[str, tarfile.TarInfo]] | None = None
    ) -> None:
        """`indexes` (digest -> member, one per archive, as `_scan` found them) spares
        reading every member header again."""
        self._tars: list[tarfile.TarFile] = []
        self._members: dict[str, tuple[tarfile.TarFile, tarfile.TarInfo]] = {}
        try:
            for i, archive in enumerate(archives):
                tar = _open_tar(archive)
                self._tars.append(tar)
                if indexes is not None:
                    for known, info in indexes[i].items():
                        self._members.setdefault(known, (tar, info))
                    continue
                for info in tar.getmembers():
                    found = member_digest(info.name)
                    if found is not None and _regular(info):
                        self._members.setdefault(found, (tar, info))
        except (OSError, tarfile.TarError, EOFError) as exc:
            self.close()
            raise BackupError(f"a backup archive cannot be read: {exc}") from None
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

    def digests(self) -> set[str]:
        return set(self._members)

    def size(self, digest: str) -> int | None:
        found = self._members.get(digest)
        return found[1].size if found else None

    def copy(self, digest: str, write: Callable[[bytes], object]) -> bool:
        """Stream a blob out of the first archive of the chain that holds it."""
        found = self._members.get(digest)
        if found is None:
            return False
        tar, info = found
        member = tar.extractfile(info)
        if member is None:
            return False
        while chunk := member.read(_CHUNK):
            write(chunk)
        return True


@dataclass
class _Scan:
    """What one pass over an archive found: every member's sha256 and the problems."""

    members: dict[str, str] = field(default_factory=dict)
    digests: dict[str, tarfile.TarInfo] = field(default_factory=dict)  # content matches
    problems: list[str] = field(default_factory=list)


def _scan(path: Path, label: str) -> _Scan:
    """Check every member of an archive: its name, its type, its size, its checksum."""
    scan = _Scan()
    sums: dict[str, str] = {}
    limits = record_limits()
    names: set[str] = set()
    try:
        with _open_tar(path) as tar:
            for info in tar:
                name = info.name
                if name in names:
                    scan.problems.append(f"{label}: member {_show(name)} appears twice")
                    continue
                names.add(name)
                digest = member_digest(name)
                if name not in RECORD_MEMBERS and digest is None:
                    scan.problems.append(f"{label}: unexpected member {_show(name)}")
                    continue
                if not _regular(info):
                    scan.problems.append(f"{label}: member {_show(name)} is not a regular file")
                    continue
                if name in limits and info.size > limits[name][0]:
                    scan.problems.append(
                        f"{label}: {name} is {info.size} bytes, more than the "
                        f"{limits[name][0]} this command reads (raise {limits[name][1]} if "
                        "the archive is trusted)"
                    )
                    continue
                f = tar.extractfile(info)
                if f is None:
                    scan.problems.append(f"{label}: member {_show(name)} cannot be read")
                    continue
                if name == "SHA256SUMS":
                    _parse_sums(f.read(limits[name][0]), sums, scan.problems, label)
                    continue
                h256 = hashlib.sha256()
                hcontent = parse_digest(digest).hasher() if digest else None
                while chunk := f.read(_CHUNK):
                    h256.update(chunk)
                    if hcontent is not None:
                        hcontent.update(chunk)
                scan.members[name] = h256.hexdigest()
                if digest is not None and hcontent is not None:
                    if hcontent.hexdigest() != digest.partition(":")[2]:
                        scan.problems.append(f"{label}: {name}: content does not match its digest")
                    else:
                        scan.digests[digest] = info
    except BackupError as exc:
        scan.problems.append(str(exc))
        return scan
    except (OSError, tarfile.TarError, EOFError, ValueError) as exc:
        scan.problems.append(f"{label} cannot be read as an uncompressed tar archive: {exc}")
        return scan
    if "SHA256SUMS" not in names:
        scan.problems.append(f"{label}: SHA256SUMS is missing: the archive is truncated")
        return scan
    for name, digest in sums.items():
        if name not in scan.members:
            scan.problems.append(
                f"{label}: {_show(name)}: listed in SHA256SUMS but missing from the archive"
            )
        elif scan.members[name] != digest:
            scan.problems.append(f"{label}: {name}: checksum mismatch")
    for name in scan.members:
        if name not in sums:
            scan.problems.append(f"{label}: {name}: not listed in SHA256SUMS")
    for name in ("backup.json", "metadata.json"):
        if name not in names:
            scan.problems.append(f"{label}: {name} is missing: not a Moorage backup")
    return scan


def _parse_sums(data: bytes, sums: dict[str, str], problems: list[str], label: str) -> None:
    try:
        text = data.decode()
    except UnicodeDecodeError:
        problems.append(f"{label}: SHA256SUMS is not text")
        return
    for line in text.splitlines():
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            problems.append(f"{label}: SHA256SUMS has a malformed line {_show(line)}")
            continue
        sums[name] = digest


def verify(
    path: Path, storage: Path | None = None, passphrase: str | None = None
) -> dict[str, Any]:
    """Checksums of every member, then referential integrity; `problems` empty means good."""
    with contextlib.ExitStack() as stack:
        report = _verify(path, plaintext(path, passphrase, stack), storage, passphrase, stack)
    report.pop("held", None)
    return report


def _verify(
    original: Path,
    path: Path,
    storage: Path | None,
    passphrase: str | None,
    stack: contextlib.ExitStack,
) -> dict[str, Any]:
    """The verification report. `corrupt` (the archive or its chain cannot be trusted: a
    restore refuses it) is set for bad members or checksums, invalid records, and blobs the
    header says the chain holds but no archive of it does. `held` lists the blobs the chain
    actually holds."""
    header = read_header(path)
    scan = _scan(path, original.name)
    problems = list(scan.problems)
    if not problems:
        for digest in header["blobs_in_archive"]:
            if digest not in scan.digests:
                problems.append(
                    f"{original.name}: the header lists blob {digest} but the archive does "
                    "not hold it"
                )
    md = read_metadata(path) if not problems else None
    if md is not None and md.invalid:
        problems.append(
            f"{original.name}: {len(md.invalid)} invalid record(s), refused (a forged or "
            "corrupt archive):"
        )
        problems += [f"  {line}" for line in md.invalid]
    archives = [path]
    indexes = [scan.digests]
    held = set(scan.digests)
    missing_bases: list[str] = []
    for name in header["base_chain"]:
        base = original.parent / name
        if not base.is_file():
            missing_bases.append(f"base archive {base} of this incremental backup is missing")
            continue
        plain = plaintext(base, passphrase, stack)
        base_scan = _scan(plain, name)
        problems += base_scan.problems
        archives.append(plain)
        indexes.append(base_scan.digests)
        held |= set(base_scan.digests)
    layout = StorageLayout(storage) if storage is not None else None

    def available(digest: str) -> bool:
        return digest in held or (layout is not None and layout.blob(digest).exists())

    if not problems and not missing_bases:
        lacking = [d for d in header["chain_blobs"] if not available(d)]
        for digest in lacking:
            problems.append(
                f"blob {digest}: the header says a base archive holds it, but no archive of "
                "the chain does (was a base replaced?)"
            )
    if problems or md is None:
        return {
            "file": str(original),
            "ok": False,
            "corrupt": True,
            "problems": problems + missing_bases,
            "missing_blobs": [],
        }
    problems = list(missing_bases)
    missing: set[str] = set()
    blobs = stack.enter_context(ArchiveBlobs(archives, indexes))
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
        try:
            body = _read_available(blobs, layout, digest)
        except BackupError as exc:
            problems.append(f"manifest {repo}@{digest}: {exc}")
            continue
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
        "held": sorted(held),
    }


def _read_available(blobs: ArchiveBlobs, layout: StorageLayout | None, digest: str) -> bytes | None:
    """A manifest's bytes from the chain or storage (never more than a manifest can be)."""
    size = blobs.size(digest)
    if size is not None:
        if size > MAX_MANIFEST_BYTES:
            raise BackupError(f"{size} bytes, larger than a manifest can be")
        parts: list[bytes] = []
        if blobs.copy(digest, parts.append):
            return b"".join(parts)
    if layout is not None:
        path = layout.blob(digest)
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_MANIFEST_BYTES + 1)
        except FileNotFoundError:
            return None
        if len(data) > MAX_MANIFEST_BYTES:
            raise BackupError("larger in storage than a manifest can be")
        return data
    return None
