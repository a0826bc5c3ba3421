"""Blobs as a repository sees them: present only when linked to it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from moorage.errors import BlobUnknown, TagImmutable
from moorage.meta.base import MetaStore
from moorage.meta.policies import Policies
from moorage.oci.digest import Digest, parse_digest
from moorage.oci.names import validate_name
from moorage.storage.base import BlobStorage


class Blobs:
    def __init__(self, storage: BlobStorage, meta: MetaStore) -> None:
        self.storage = storage
        self.meta = meta
        self.policies = Policies(meta)

    async def stat(self, repo: str, digest: str, pull: bool = False) -> tuple[Digest, int]:
        """The blob's digest and size; BlobUnknown unless linked to `repo` and in storage
        (and, but for a `pull`, not being deleted by garbage collection: MetaStore.blob_size)."""
        parsed = parse_digest(digest)
        size = await self.meta.blob_size(repo, str(parsed), pull)
        # Check the bytes too, not just the link: storage is the truth for what we can send.
        if size is None or await self.storage.stat(str(parsed)) is None:
            raise BlobUnknown(f"blob {parsed} is not in repository {repo}")
        return parsed, size

    async def linked(self, repo: str, digest: str, pull: bool = False) -> tuple[Digest, int]:
        """The blob's digest and size as linked to `repo` (the metadata only: for a pull by
        redirect, where the store answers for its bytes); BlobUnknown unless linked."""
        parsed = parse_digest(digest)
        size = await self.meta.blob_size(repo, str(parsed), pull)
        if size is None:
            raise BlobUnknown(f"blob {parsed} is not in repository {repo}")
        return parsed, size

    async def opened(
        self, digest: Digest, size: int, first: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """A linked blob's bytes (`linked` gave `size`), once storage has answered for
        them: BlobUnknown when they are gone. On S3 that is the GET itself, no HEAD first."""
        stream = await self.storage.opened(str(digest), first, length)
        if stream is None:
            raise BlobUnknown(f"blob {digest} ({size} bytes) is linked but not in storage")
        return stream

    async def delete(self, repo: str, digest: str) -> None:
        """Unlink the blob from `repo`; its bytes stay until garbage collection (shared).

        Refused (TagImmutable) in a repository that an immutable-tags rule covers: unlinking
        a layer would break the images its immutable tags hold, which no delete of theirs
        may do. Garbage collection removes what no manifest references there."""
        parsed = parse_digest(digest)
        applicable = await self.policies.applicable(repo)
        for record in (applicable.repository, applicable.namespace):
            if record is not None and record.immutable_tags:
                raise TagImmutable(
                    f"blob {parsed} cannot be deleted from {repo}: {record.target} has immutable "
                    f"tags ({', '.join(record.immutable_tags)}), whose images could lose it; "
                    "delete manifests instead and run garbage collection, which removes every "
                    "blob no manifest references",
                    detail={"target": record.target, "rules": list(record.immutable_tags)},
                )
        if not await self.meta.unlink_blob(repo, str(parsed)):
            raise BlobUnknown(f"blob {parsed} is not in repository {repo}")

    async def mount(
        self, repo: str, digest: str, source: str | None, anywhere: bool = True
    ) -> Digest | None:
        """Link a blob from `source` (or, without one, any blob in storage when `anywhere`,
        else only one `repo` holds already) into `repo`.

        Returns None when it cannot, and the caller starts an ordinary upload instead.
        The caller checked that the client may pull `source` (and, for `anywhere`, every
        repository): a blob is never linked from where its client could not read it.
        """
        parsed = parse_digest(digest)
        key = str(parsed)
        if source is None and not anywhere:
            source = repo
        if source is not None:
            validate_name(source)
            size = await self.meta.blob_size(source, key)
            if size is None:
                return None
        size = await self.storage.stat(key)
        if size is None:
            return None
        # Refused while garbage collection deletes the blob: the client uploads it.
        return parsed if await self.meta.link_blob(repo, key, size, enforce_quota=True) else None
