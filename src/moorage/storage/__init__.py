"""Blob storage: content-addressed blob files and in-progress uploads."""

from __future__ import annotations

from moorage.storage.base import AppendWriter, BlobStorage
from moorage.storage.filesystem import FilesystemStorage
from moorage.storage.s3location import is_s3


def open_blob_storage(spec: str) -> BlobStorage:
    """The driver for a `--storage` value: `s3://BUCKET/PREFIX?...` or a directory."""
    if is_s3(spec):
        from moorage.storage.s3 import S3Storage  # aiobotocore only where S3 is used

        return S3Storage(spec)
    return FilesystemStorage(spec)


__all__ = ["AppendWriter", "BlobStorage", "FilesystemStorage", "open_blob_storage"]
