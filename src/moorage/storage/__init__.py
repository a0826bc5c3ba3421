"""Blob storage: content-addressed blob files and in-progress uploads."""

from __future__ import annotations

from moorage.errors import ConfigError
from moorage.storage.base import AppendWriter, BlobStorage
from moorage.storage.filesystem import FilesystemStorage
from moorage.storage.journal import Journal
from moorage.storage.s3location import is_s3, parse


def open_blob_storage(spec: str) -> BlobStorage:
    """The blob storage `--storage` names: a directory, or an s3:// location."""
    if is_s3(spec):
        parse(spec)  # a malformed location says what is wrong first
        raise ConfigError("S3 blob storage is not built yet")
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
