"""`moorage backup`: write a consistent archive of a running cluster (format: archive.py).

The records come from the admin API as typed records of one etcd revision (online, without
pausing pushes). Every manifest's bytes are stored; layer and config blobs with
`--include-blobs`. A backup with `--since PREVIOUS` stores only blobs that neither
PREVIOUS nor its own bases hold; restoring it needs those archives next to it (their names
are in the header). Not included: upload sessions in progress, heartbeats, and blob
storage itself unless `--include-blobs`.

The bytes are read from blob storage itself when this host sees it (the cluster's storage
path, or `--storage`, checked with a probe file): blobs are immutable and never collected,
so what existed at the backup's revision is there even if it was deleted meanwhile, and
reading files costs no request per manifest. Otherwise they are read through the registry
API (AdminClient.fetch).

`verify` and `inspect` live in backup_verify.py; they are re-exported here for callers of
the command group.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tarfile
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from moorage.errors import MoorageError
from moorage.oci.digest import parse_digest
from moorage.recovery.archive import (
    CHUNK,
    FORMAT_VERSION,
    BackupError,
    add_bytes,
    archive_digests,
    blob_member,
    check_header,
    plaintext,
    read_header,
    safe_archive_name,
)
from moorage.recovery.archive_records import Metadata, metadata_member
from moorage.recovery.backup_results import BackupResult
from moorage.recovery.backup_sources import (
    SMALL_BYTES,
    BlobStorageSource,
    HttpSource,
    Source,
    StorageSource,
    find_storage,
)
from moorage.recovery.backup_verify import inspect, verify
from moorage.recovery.client import AdminClient
from moorage.recovery.crypt import EncryptingWriter

log = logging.getLogger("moorage.backup")

__all__ = [
    "BackupError",
    "blob_member",
    "check_header",
    "create",
    "find_storage",
    "inspect",
    "read_header",
    "verify",
]

# Blobs up to this size are read ahead by a thread pool; larger ones are streamed.
_SMALL = SMALL_BYTES
_READERS = 8
_WINDOW = 256


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


def _read_ahead(
    items: Iterable[tuple[str, tuple[str, str, int]]],
    source: Source,
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


def fetch_records(client: AdminClient) -> tuple[dict[str, Any], Metadata]:
    """The cluster's records as of one revision, through the admin API: its answer (cluster
    id, epoch, revision) and the records, validated again here (never trusted)."""
    doc = client.call("GET", "/api/v0/cluster/backup?paged=1")
    legacy = "records" not in doc and "kvs" in doc  # a replica older still: keys and values
    records: list[Any] = [] if legacy else list(doc.get("records") or [])
    invalid = [str(line) for line in doc.get("invalid") or []]
    # Page after page at the first page's revision (one bounded read each on the replica);
    # a replica older than paging answers everything at once, without `next`.
    page = doc
    seen: set[str] = set()
    while isinstance(page.get("next"), str):
        # No cursor comes twice: an answer that does not move on would never end. (A page
        # may hold no record: the keys it read were none of a backup's.)
        if page["next"] in seen:
            raise BackupError(
                f"the cluster answered a page cursor {page['next'][:80]!r} that does not move "
                "on: not a Moorage replica's answer; nothing was written"
            )
        seen.add(page["next"])
        query = urllib.parse.urlencode(
            {"paged": 1, "revision": doc["revision"], "after": page["next"]}
        )
        page = client.call("GET", f"/api/v0/cluster/backup?{query}")
        if page.get("revision") != doc["revision"]:
            raise BackupError(
                "the cluster answered a page of another revision: run the backup again"
            )
        records += page.get("records") or []
        invalid += [str(line) for line in page.get("invalid") or []]
    md = Metadata.parse_kvs(doc["kvs"]) if legacy else Metadata.parse(records)
    md.invalid[:0] = invalid
    return doc, md


def _wanted(md: Metadata, include_blobs: bool) -> dict[str, tuple[str, str, int]]:
    """What to store: every manifest's bytes; with --include-blobs every linked blob.
    digest -> (kind, repo, size)."""
    wanted: dict[str, tuple[str, str, int]] = {}
    for (repo, digest), record in md.manifests.items():
        wanted.setdefault(digest, ("manifest", repo, record.size))
    if include_blobs:
        for (repo, digest), size in md.links.items():
            wanted.setdefault(digest, ("blob", repo, size))
    return wanted


def _plan(
    md: Metadata, include_blobs: bool, chain_held: set[str]
) -> tuple[dict[str, tuple[str, str, int]], dict[str, tuple[str, str, int]]]:
    """What to store in this archive, and what its base archives hold already."""
    wanted = _wanted(md, include_blobs)
    to_store = {d: w for d, w in wanted.items() if d not in chain_held}
    from_base = {d: w for d, w in wanted.items() if d in chain_held}
    return to_store, from_base


def new_header(
    doc: dict[str, Any],
    md: Metadata,
    include_blobs: bool,
    to_store: dict[str, tuple[str, str, int]],
    chain_held: set[str],
    since: Path | None,
    base_chain: list[str],
) -> dict[str, Any]:
    """backup.json of the current format (`doc`: cluster id, epoch and revision)."""
    return {
        "version": FORMAT_VERSION,
        "cluster_id": doc["cluster_id"],
        "epoch": doc["epoch"],
        "revision": doc["revision"],
        "created_at": time.time(),
        "include_blobs": include_blobs,
        "counts": md.counts(),
        "blobs_in_archive": sorted(to_store),
        "manifests_in_archive": sorted(d for d, w in to_store.items() if w[0] == "manifest"),
        "chain_blobs": sorted(chain_held),
        "base": since.name if since else None,
        "base_chain": base_chain,
    }


def _split(items: dict[str, tuple[str, str, int]]) -> tuple[int, int]:
    """(manifests, blobs) among `items`."""
    manifests = sum(1 for kind, _, _ in items.values() if kind == "manifest")
    return manifests, len(items) - manifests


def create(
    client: AdminClient,
    out: Path,
    include_blobs: bool,
    since: Path | None,
    progress: Callable[[int, int], None] | None = None,
    passphrase: str | None = None,
    storage: Path | str | None = None,
) -> BackupResult:
    local = find_storage(client, storage)
    doc, md = fetch_records(client)
    chain_held: set[str] = set()
    base_chain: list[str] = []
    if since is not None:
        if not safe_archive_name(since.name):
            raise BackupError(f"--since {since}: not a backup file name")
        with contextlib.ExitStack() as stack:
            chain_held, base_chain = _chain_blobs(since, passphrase, stack)
        _not_in_chain(out, since, base_chain)
    to_store, from_base = _plan(md, include_blobs, chain_held)
    header = new_header(doc, md, include_blobs, to_store, chain_held, since, base_chain)
    # The replica's answer, checked as a restore will check it: never an archive that looks
    # written whole but cannot be restored.
    check_header(dict(header), out)
    source: Source
    if isinstance(local, Path):
        source = StorageSource(local)
    elif local is not None:  # s3://
        source = BlobStorageSource(local)
    else:
        source = HttpSource(client, doc["revision"])
    write(out, header, md, to_store, source, passphrase, progress)
    _record(client, header, out)
    manifests, blobs = _split(to_store)
    base_manifests, base_blobs = _split(from_base)
    return BackupResult(
        file=str(out),
        size=out.stat().st_size,
        cluster_id=header["cluster_id"],
        epoch=header["epoch"],
        revision=header["revision"],
        counts=header["counts"],
        base=header["base"],
        blobs_in_archive=blobs,
        manifests_in_archive=manifests,
        blobs_from_base=base_blobs,
        manifests_from_base=base_manifests,
        encrypted=bool(passphrase),
        source=source.name,
        storage=str(local) if local is not None else None,
        invalid_records=md.invalid,
    )


def _not_in_chain(out: Path, since: Path, base_chain: list[str]) -> None:
    """BackupError when `out` is `since` or an archive of its chain: writing it would
    destroy what the new incremental backup depends on."""
    chain = [since, *(since.parent / name for name in base_chain)]
    target = out.resolve()
    for archive in chain:
        same = archive.resolve() == target
        with contextlib.suppress(OSError):
            same = same or (out.exists() and os.path.samefile(out, archive))
        if same:
            raise BackupError(
                f"--out {out} is {archive}, which this incremental backup builds on (--since "
                f"{since} and its base archives): writing it would destroy them; write the "
                "new backup to another file"
            )


def _record(client: AdminClient, header: dict[str, Any], out: Path) -> None:
    """Tell the cluster the archive is written whole: its journal may be trimmed up to the
    backup's revision (moorage.cluster.journal_trim), and its audit log keeps the archive's
    size (the web UI's Backups page). If it cannot be told, the journal only stays longer."""
    body = {k: header[k] for k in ("cluster_id", "epoch", "revision", "include_blobs")}
    body |= {"size": out.stat().st_size, "file": out.name, "incremental": bool(header["base"])}
    try:
        client.call("POST", "/api/v0/cluster/backup", body)
    except MoorageError as exc:
        log.warning("the cluster was not told of this backup (its journal is kept): %s", exc)


def write(
    out: Path,
    header: dict[str, Any],
    md: Metadata,
    to_store: dict[str, tuple[str, str, int]],
    source: Source,
    passphrase: str | None,
    progress: Callable[[int, int], None] | None,
) -> None:
    """The archive, written to `out`.partial, fsynced, then renamed to `out`."""
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
                ("metadata.json", metadata_member(md.entries)),
            ):
                add_bytes(tar, name, payload, now)
                sums[name] = hashlib.sha256(payload).hexdigest()
            for digest, (kind, repo, size), body in _read_ahead(sorted(to_store.items()), source):
                sums[blob_member(digest)], stored = _add_blob(
                    tar, source, digest, kind, repo, size, body, now
                )
                done += stored
                if progress:
                    progress(done, total)
            listing = "".join(f"{h}  {n}\n" for n, h in sorted(sums.items())).encode()
            add_bytes(tar, "SHA256SUMS", listing, now)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _add_blob(
    tar: tarfile.TarFile,
    source: Source,
    digest: str,
    kind: str,
    repo: str,
    size: int,
    body: bytes | None,
    mtime: int,
) -> tuple[str, int]:
    """One blob member, its digest checked: (its sha256, its size)."""
    d = parse_digest(digest)
    info = tarfile.TarInfo(blob_member(digest))
    info.mtime = mtime
    if body is not None:
        if hashlib.new(d.algorithm, body).hexdigest() != d.encoded:
            raise BackupError(f"{kind} {digest} of {repo} read back with another digest")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
        return hashlib.sha256(body).hexdigest(), len(body)
    with source.stream(kind, repo, digest) as (actual, chunks):
        reader = _HashingReader(chunks, d.algorithm)
        info.size = size if actual is None else actual
        tar.addfile(info, io.BufferedReader(reader, CHUNK))
    if reader.hasher.hexdigest() != d.encoded:
        raise BackupError(f"{kind} {digest} of {repo} read back with another digest")
    return reader.sha256.hexdigest(), size
