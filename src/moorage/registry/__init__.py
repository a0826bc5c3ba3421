"""What each OCI operation means, on top of blob storage and the metadata store."""

from __future__ import annotations

from typing import TYPE_CHECKING

from moorage.meta.base import MetaStore
from moorage.registry.blobs import Blobs
from moorage.registry.discovery import Discovery
from moorage.registry.manifests import Manifests
from moorage.registry.uploads import Uploads
from moorage.storage.base import BlobStorage
from moorage.storage.journal import Journal

if TYPE_CHECKING:
    from moorage.meta.tag_cache import TagCache


class Registry:
    def __init__(
        self,
        storage: BlobStorage,
        meta: MetaStore,
        journal: Journal | None = None,
        tags: TagCache | None = None,
    ) -> None:
        self.storage = storage
        self.meta = meta
        self.journal = journal
        self.blobs = Blobs(storage, meta)
        self.uploads = Uploads(storage, meta)
        self.manifests = Manifests(storage, meta, journal, tags)
        self.discovery = Discovery(meta)

    def close(self) -> None:
        """Release what the registry holds open (the journal's file descriptor)."""
        if self.journal is not None:
            self.journal.close()

    async def aclose(self) -> None:
        """`close`, and what only closes asynchronously (an S3 journal's client)."""
        if self.journal is not None:
            await self.journal.aclose()


__all__ = ["Registry"]
