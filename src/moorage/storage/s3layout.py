"""The whole key layout of S3 blob storage, in one place (under the location's prefix).

    <prefix>/
      blobs/<algorithm>/<first two hex>/<hex>   verified blob bytes, as on the filesystem
                                                (a directory synced to a bucket is a store)
      uploads/<upload id>/state                 the session: repo, size, multipart upload id,
                                                its parts (number, ETag, size), the tail's
                                                name; replaced only by compare-and-swap
                                                (PUT If-Match its ETag)
      uploads/<upload id>/lock                  who holds the session, until when (created
                                                with If-None-Match: *; taken over after
                                                expiry with If-Match)
      uploads/<upload id>/tail-<random>         the bytes after the last part (< a part),
                                                when more than INLINE_TAIL (256 KiB; fewer
                                                live in the state itself)
      uploads/<upload id>/data                  the multipart upload's key, then the
                                                completed object until it is copied to blobs/
      probe/                                    health probes (write, read, delete)

A key under blobs/ exists only once its bytes were verified: the copy to it is the commit.
"""

from __future__ import annotations

from moorage.oci.digest import parse_digest
from moorage.storage.s3location import S3Location

BLOBS = "blobs/"
UPLOADS = "uploads/"


class S3Layout:
    def __init__(self, location: S3Location) -> None:
        self.location = location
        self.bucket = location.bucket

    def key(self, name: str) -> str:
        return self.location.key(name)

    def blob(self, digest: str) -> str:
        """The key of a blob; DigestInvalid for anything but a valid digest."""
        d = parse_digest(digest)
        return self.key(f"{BLOBS}{d.algorithm}/{d.encoded[:2]}/{d.encoded}")

    @property
    def blobs(self) -> str:
        return self.key(BLOBS)

    @property
    def uploads(self) -> str:
        return self.key(UPLOADS)

    def session(self, upload_id: str) -> str:
        """The prefix of every object of one upload session."""
        return self.key(f"{UPLOADS}{upload_id}/")

    def state(self, upload_id: str) -> str:
        return self.session(upload_id) + "state"

    def lock(self, upload_id: str) -> str:
        return self.session(upload_id) + "lock"

    def tail(self, upload_id: str, name: str) -> str:
        return self.session(upload_id) + f"tail-{name}"

    def data(self, upload_id: str) -> str:
        return self.session(upload_id) + "data"

    def probe(self, name: str) -> str:
        return self.key(f"probe/{name}")

    def upload_id_of(self, key: str) -> str | None:
        """The upload a key under uploads/ belongs to."""
        rest = key[len(self.uploads) :] if key.startswith(self.uploads) else ""
        upload_id, slash, _ = rest.partition("/")
        return upload_id if slash and upload_id else None
