"""The whole on-disk layout of blob storage, in one place.

    <root>/
      blobs/<algorithm>/<first two hex>/<hex>   verified blob bytes, shared by all repositories;
                                                manifests are stored here too
      uploads/<upload id>                       bytes of an upload in progress
      tmp/                                      staging for atomic writes (same filesystem)
      probe/                                    health probes (write, read, delete)

Every file under blobs/ is complete and its name is its digest: bytes are fsynced and
renamed into place only after the digest was verified.
"""

from __future__ import annotations

import os
from pathlib import Path

from moorage.oci.digest import parse_digest


class StorageLayout:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.uploads = root / "uploads"
        self.tmp = root / "tmp"
        self.probe = root / "probe"
        self._blobs = f"{self.blobs}{os.sep}"

    def blob(self, digest: str) -> Path:
        """The file of a blob; DigestInvalid for anything but a valid digest (a path is
        never built from a forged or malformed one, wherever it came from)."""
        d = parse_digest(digest)
        return self.blobs / d.algorithm / d.encoded[:2] / d.encoded

    def blob_name(self, digest: str) -> str:
        """`blob(digest)` as a string, without building a Path (a stat per referenced blob
        on every manifest PUT); the same validation."""
        d = parse_digest(digest)
        return f"{self._blobs}{d.algorithm}{os.sep}{d.encoded[:2]}{os.sep}{d.encoded}"

    def upload(self, upload_id: str) -> Path:
        return self.uploads / upload_id

    def upload_info(self, upload_id: str) -> Path:
        """The repository the upload belongs to, next to its data."""
        return self.uploads / f"{upload_id}.repo"

    def dirs(self) -> tuple[Path, ...]:
        return (self.blobs, self.uploads, self.tmp, self.probe)
