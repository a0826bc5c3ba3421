"""Blob storage: content-addressed blob files and in-progress uploads."""

from __future__ import annotations

from moorage.storage.base import AppendWriter, BlobStorage
from moorage.storage.filesystem import FilesystemStorage
from moorage.storage.journal import Journal
from moorage.storage.s3location import is_s3, parse


def open_blob_storage(spec: str) -> BlobStorage:
    """The driver for a `--storage` value: `s3://BUCKET/PREFIX?...` or a directory."""
    if is_s3(spec):
        from moorage.storage.s3 import S3Storage  # aiobotocore only where S3 is used

        return S3Storage(spec)
    return FilesystemStorage(spec)


def open_journal(spec: str, writer: str, epoch: int, cluster_id: str) -> Journal:
    """The journal of one writer (an API process) in the storage `--storage` names."""
    if is_s3(spec):
        from moorage.storage.s3journal import S3Journal

        return S3Journal(parse(spec), writer, epoch, cluster_id)
    return Journal(spec, writer, epoch, cluster_id)


__all__ = [
    "AppendWriter",
    "BlobStorage",
    "FilesystemStorage",
    "Journal",
    "open_blob_storage",
    "open_journal",
]
