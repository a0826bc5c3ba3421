"""What each OCI operation means, on top of blob storage and the metadata store."""

from __future__ import annotations

from moorage.meta.base import MetaStore
from moorage.registry.blobs import Blobs
from moorage.registry.discovery import Discovery
from moorage.registry.manifests import Manifests
from moorage.registry.uploads import Uploads
from moorage.storage.base import BlobStorage


class Registry:
    def __init__(self, storage: BlobStorage, meta: MetaStore) -> None:
        self.storage = storage
        self.meta = meta
        self.blobs = Blobs(storage, meta)
        self.uploads = Uploads(storage, meta)
        self.manifests = Manifests(storage, meta)
        self.discovery = Discovery(meta)


__all__ = ["Registry"]
