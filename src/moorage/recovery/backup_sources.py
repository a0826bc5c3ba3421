"""Where the bytes of a backup come from: blob storage read directly (when this host sees
it, checked with a probe file the cluster writes), else the registry API."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from moorage.errors import MoorageError
from moorage.recovery.archive import CHUNK, BackupError
from moorage.recovery.blob_access import SyncBlobs
from moorage.recovery.client import AdminClient
from moorage.storage.control import local_probe_seen, probe_seen
from moorage.storage.paths import StorageLayout
from moorage.storage.s3location import is_s3, parse

#: What `small` reads (the backup reads larger items as streams): an answer longer than this
#: is refused, never held in memory whole.
SMALL_BYTES = 1024 * 1024


def _capped(chunks: Iterable[bytes], where: str, kind: str, repo: str, digest: str) -> bytes:
    body = bytearray()
    for chunk in chunks:
        body += chunk
        if len(body) > SMALL_BYTES:
            raise BackupError(
                f"{where} holds more than {SMALL_BYTES} bytes for {kind} {digest} of {repo}, "
                "recorded as at most that: a corrupt record or blob (moorage backup verify), "
                "or not a Moorage replica (check --existing)"
            )
    return bytes(body)


class Source:
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


class StorageSource(Source):
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
        with self.stream(kind, repo, digest) as (_, chunks):
            return _capped(chunks, str(self.root), kind, repo, digest)

    @contextlib.contextmanager
    def stream(self, kind: str, repo: str, digest: str) -> Iterator[tuple[int | None, Any]]:
        try:
            fh = open(self.layout.blob(digest), "rb")  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            raise self._missing(kind, repo, digest) from None
        with fh:
            size = os.fstat(fh.fileno()).st_size
            yield size, iter(lambda: fh.read(CHUNK), b"")


class BlobStorageSource(Source):
    """Blob storage the filesystem code does not reach (S3), read through its driver."""

    name = "storage"

    def __init__(self, spec: str) -> None:
        self.blobs = SyncBlobs(spec)

    def close(self) -> None:
        self.blobs.close()

    def _missing(self, kind: str, repo: str, digest: str) -> BackupError:
        return BackupError(
            f"{kind} {digest} of {repo} is recorded but its bytes are not in blob storage at "
            f"{self.blobs.where}; check that storage (moorage backup verify --storage)"
        )

    def small(self, kind: str, repo: str, digest: str) -> bytes:
        # One GET (a stream would ask for the size first: a HEAD more per item).
        data = self.blobs._run(self.blobs.storage.read_bytes(digest))
        if data is None:
            raise self._missing(kind, repo, digest)
        return data

    @contextlib.contextmanager
    def stream(self, kind: str, repo: str, digest: str) -> Iterator[tuple[int | None, Any]]:
        size = self.blobs.size(digest)
        if size is None:
            raise self._missing(kind, repo, digest)
        chunks = self.blobs.chunks(digest)
        try:
            yield size, chunks
        finally:
            chunks.close()


class HttpSource(Source):
    """The registry API (when this host does not see blob storage)."""

    name = "http"

    def __init__(self, client: AdminClient, revision: int) -> None:
        self.client = client
        self.revision = revision

    def close(self) -> None:
        self.client.close()

    def _failed(self, kind: str, repo: str, digest: str, status: int) -> BackupError:
        return BackupError(
            f"could not read {kind} {digest} of {repo}: HTTP {status} (deleted while the "
            f"backup ran?); run the backup on a host that sees the cluster's blob storage "
            f"(or give its local path with --storage): it reads revision {self.revision} "
            "from there whatever is deleted meanwhile"
        )

    def small(self, kind: str, repo: str, digest: str) -> bytes:
        with self.client.fetch(repo, digest, manifest=kind == "manifest") as resp:
            if resp.status_code != 200:
                raise self._failed(kind, repo, digest, resp.status_code)
            return _capped(resp.iter_bytes(CHUNK), str(resp.url.host), kind, repo, digest)

    @contextlib.contextmanager
    def stream(self, kind: str, repo: str, digest: str) -> Iterator[tuple[int | None, Any]]:
        with self.client.fetch(repo, digest, manifest=kind == "manifest") as resp:
            if resp.status_code != 200:
                raise self._failed(kind, repo, digest, resp.status_code)
            yield None, resp.iter_bytes(CHUNK)


def find_storage(client: AdminClient, storage: Path | str | None) -> Path | str | None:
    """The local path of the cluster's blob storage if this host sees it (checked with a
    probe file the cluster writes), else None; an explicit `storage` must be it. On S3 (a
    `storage` or the cluster's own that is an s3:// location, as a str) the canonical
    location when this host reads the probe object with its own credentials."""
    try:
        probe = client.call("POST", "/api/v0/cluster/storage-probe", {}, idempotent=True)
        name = str(probe["path"])
        content = str(probe["content"])
        remote = str(probe["storage"])
    except (MoorageError, KeyError, TypeError) as exc:
        if storage is not None:
            raise BackupError(f"could not check --storage {storage}: {exc}") from None
        return None
    if isinstance(storage, str) or (storage is None and is_s3(remote)):
        spec = storage if isinstance(storage, str) else remote
        if probe_seen(spec, name, content):
            return parse(spec).url()
        if storage is not None:
            raise BackupError(
                f"--storage {storage} is not the cluster's blob storage (a probe object the "
                f"cluster wrote to {remote} {name} cannot be read there with this host's "
                "credentials); give the cluster's bucket and prefix, and its credentials"
            )
        return None
    local = storage.resolve() if storage is not None else Path(remote)
    if local_probe_seen(local, name, content):
        return local
    if storage is not None:
        raise BackupError(
            f"--storage {storage} is not the cluster's blob storage (a probe file the cluster "
            f"wrote to {remote}/{name} is not there); give the local path of that storage"
        )
    return None
