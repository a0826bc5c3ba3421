"""Blob storage: content-addressed blob files and in-progress uploads."""

from moorage.storage.base import AppendWriter, BlobStorage
from moorage.storage.filesystem import FilesystemStorage

__all__ = ["AppendWriter", "BlobStorage", "FilesystemStorage"]
