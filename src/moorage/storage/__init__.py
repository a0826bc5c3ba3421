"""Blob storage: content-addressed blob files and in-progress uploads."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moorage.storage.s3location import is_s3, parse

if TYPE_CHECKING:
    from moorage.storage.base import AppendWriter, BlobStorage
    from moorage.storage.filesystem import FilesystemStorage
    from moorage.storage.journal import Journal

#: The names this package exports from its modules, imported on first use: a `moorage`
#: command that only parses a `--storage` value (`moorage.storage.s3location`) does not pay
#: for the drivers (the filesystem driver imports asyncio).
_LAZY = {
    "AppendWriter": "base",
    "BlobStorage": "base",
    "FilesystemStorage": "filesystem",
    "Journal": "journal",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def open_blob_storage(spec: str) -> BlobStorage:
    """The driver for a `--storage` value: `s3://BUCKET/PREFIX?...` or a directory."""
    if is_s3(spec):
        from moorage.storage.s3 import S3Storage  # aiobotocore only where S3 is used

        return S3Storage(spec)
    from moorage.storage.filesystem import FilesystemStorage

    return FilesystemStorage(spec)


def open_journal(spec: str, writer: str, epoch: int, cluster_id: str) -> Journal:
    """The journal of one writer (an API process) in the storage `--storage` names."""
    if is_s3(spec):
        from moorage.storage.s3journal import S3Journal

        return S3Journal(parse(spec), writer, epoch, cluster_id)
    from moorage.storage.journal import Journal

    return Journal(spec, writer, epoch, cluster_id)


__all__ = [
    "AppendWriter",
    "BlobStorage",
    "FilesystemStorage",
    "Journal",
    "open_blob_storage",
    "open_journal",
]
