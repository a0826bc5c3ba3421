"""The metadata store: registry operations on top of a few key-value primitives.

Guarantees, grouped as the operations need them:

* Linearizable reads (`_get`, `_range`): a read sees every write acknowledged before it,
  on any replica. This is what makes a push to one replica visible on another at once.
* Atomic transactions (`_txn`): every registry write below is one transaction, so a
  crash leaves either all of its keys or none. Compare-and-set guards are expressed as
  `(key, mod_revision)` pairs, where revision 0 means "the key must not exist".

Backends implement only the primitives (etcd in production, a dict in unit tests);
everything a registry operation means is written once, here.
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from moorage.meta import keys
from moorage.meta.records import (
    ClusterRecord,
    ManifestRecord,
    TagRecord,
    UserRecord,
    decode_blob_link,
    dumps,
)


@dataclass(frozen=True, slots=True)
class KV:
    key: bytes
    value: bytes
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes


Op = Put | Delete
# (key, expected mod_revision); 0 means the key must be absent, MUST_EXIST present.
Guard = tuple[bytes, int]
MUST_EXIST = -1

#: The etcd revision of the last transaction this task committed (for the journal).
LAST_REVISION: ContextVar[int] = ContextVar("moorage_last_revision", default=0)

_EMPTY = b"{}"
_TXN_RETRIES = 20


class MetaStore(ABC):
    # -- primitives each backend provides ------------------------------------------------
    @abstractmethod
    async def _get(self, key: bytes) -> KV | None: ...

    @abstractmethod
    async def _range(
        self, start: bytes, end: bytes, limit: int = 0, keys_only: bool = False
    ) -> tuple[list[KV], bool]:
        """Keys in [start, end) in byte order; `limit` 0 means all. Returns (kvs, more)."""

    @abstractmethod
    async def _txn(self, guards: Sequence[Guard], ops: Sequence[Op]) -> bool:
        """Apply `ops` atomically if every guard holds; False (nothing applied) otherwise."""

    async def _get_many(self, keys_: Sequence[bytes]) -> list[KV | None]:
        """Several keys at once (backends may do it in one round trip)."""
        return list(await asyncio.gather(*(self._get(k) for k in keys_)))

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def revision(self) -> int:
        """The store's current revision."""

    # -- cluster and users ---------------------------------------------------------------
    async def get_cluster(self) -> ClusterRecord | None:
        kv = await self._get(keys.CLUSTER)
        return ClusterRecord.decode(kv.value) if kv else None

    async def create_cluster(self, record: ClusterRecord) -> bool:
        return await self._txn([(keys.CLUSTER, 0)], [Put(keys.CLUSTER, record.encode())])

    async def get_user(self, name: str) -> UserRecord | None:
        kv = await self._get(keys.user(name))
        return UserRecord.decode(kv.value) if kv else None

    async def create_user(self, user: UserRecord) -> bool:
        """Create a user unless one of that name exists (True when created)."""
        key = keys.user(user.name)
        return await self._txn([(key, 0)], [Put(key, user.encode())])

    async def put_user(self, user: UserRecord) -> None:
        await self._txn([], [Put(keys.user(user.name), user.encode())])

    # -- blobs linked to repositories ---------------------------------------------------
    async def blob_size(self, repo: str, digest: str) -> int | None:
        kv = await self._get(keys.blob(repo, digest))
        return decode_blob_link(kv.value) if kv else None

    async def missing_blobs(self, repo: str, digests: Iterable[str]) -> list[str]:
        wanted = list(dict.fromkeys(digests))
        found = await self._get_many([keys.blob(repo, d) for d in wanted])
        return [d for d, kv in zip(wanted, found, strict=True) if kv is None]

    async def link_blob(self, repo: str, digest: str, size: int) -> None:
        """Let `repo` serve the blob."""
        ops: list[Op] = [
            Put(keys.repo(repo), _EMPTY),
            Put(keys.blob(repo, digest), dumps({"size": size})),
        ]
        await self._txn([], ops)

    async def unlink_blob(self, repo: str, digest: str) -> bool:
        key = keys.blob(repo, digest)
        kv = await self._get(key)
        if kv is None:
            return False
        return await self._txn([(key, kv.mod_revision)], [Delete(key)])

    # -- manifests and tags ------------------------------------------------------------
    async def get_manifest(self, repo: str, digest: str) -> ManifestRecord | None:
        kv = await self._get(keys.manifest(repo, digest))
        return ManifestRecord.decode(kv.value) if kv else None

    async def missing_manifests(self, repo: str, digests: Iterable[str]) -> list[str]:
        wanted = list(dict.fromkeys(digests))
        found = await self._get_many([keys.manifest(repo, d) for d in wanted])
        return [d for d, kv in zip(wanted, found, strict=True) if kv is None]

    async def get_tag(self, repo: str, tag: str) -> TagRecord | None:
        kv = await self._get(keys.tag(repo, tag))
        return TagRecord.decode(kv.value) if kv else None

    async def put_manifest(
        self,
        repo: str,
        record: ManifestRecord,
        tags: Sequence[str] = (),
        referrer: dict[str, Any] | None = None,
        blobs: Sequence[str] = (),
        manifests: Sequence[str] = (),
    ) -> list[str]:
        """Record a manifest, point `tags` at it and index it under its subject, atomically,
        if every blob and manifest it requires is in `repo` (checked in the same
        transaction). Returns the missing digests; nothing is written when there are any."""
        ops: list[Op] = [
            Put(keys.repo(repo), _EMPTY),
            Put(keys.manifest(repo, record.digest), record.encode()),
        ]
        tag_value = record.tag_record().encode()
        ops += [Put(keys.tag(repo, t), tag_value) for t in tags]
        if referrer is not None and record.subject:
            ops.append(Put(keys.referrer(repo, record.subject, record.digest), dumps(referrer)))
        required = [keys.blob(repo, d) for d in dict.fromkeys(blobs)]
        required += [keys.manifest(repo, d) for d in dict.fromkeys(manifests)]
        if await self._txn([(k, MUST_EXIST) for k in required], ops):
            return []
        found = await self._get_many(required)
        wanted = [*dict.fromkeys(blobs), *dict.fromkeys(manifests)]
        missing = [d for d, kv in zip(wanted, found, strict=True) if kv is None]
        if not missing:  # raced with a concurrent push of the last reference: try once more
            return await self.put_manifest(repo, record, tags, referrer, blobs, manifests)
        return missing

    async def delete_tag(self, repo: str, tag: str) -> bool:
        key = keys.tag(repo, tag)
        kv = await self._get(key)
        if kv is None:
            return False
        return await self._txn([(key, kv.mod_revision)], [Delete(key)])

    async def delete_manifest(self, repo: str, digest: str) -> bool:
        """Delete a manifest, every tag pointing at it and its referrer entry, atomically."""
        mkey = keys.manifest(repo, digest)
        for _ in range(_TXN_RETRIES):
            kv = await self._get(mkey)
            if kv is None:
                return False
            record = ManifestRecord.decode(kv.value)
            prefix = keys.tags_prefix(repo)
            tags, _more = await self._range(prefix, keys.prefix_end(prefix))
            pointing = [t for t in tags if TagRecord.decode(t.value).digest == digest]
            guards: list[Guard] = [(mkey, kv.mod_revision)]
            guards += [(t.key, t.mod_revision) for t in pointing]
            ops: list[Op] = [Delete(mkey), *(Delete(t.key) for t in pointing)]
            if record.subject:
                ops.append(Delete(keys.referrer(repo, record.subject, digest)))
            if await self._txn(guards, ops):
                return True
        raise RuntimeError("manifest delete kept conflicting with concurrent writes")

    async def list_tags(self, repo: str, n: int | None, last: str | None) -> tuple[list[str], bool]:
        prefix = keys.tags_prefix(repo)
        return await self._page(prefix, n, last)

    async def repo_exists(self, repo: str) -> bool:
        return await self._get(keys.repo(repo)) is not None

    async def list_repos(self, n: int | None, last: str | None) -> tuple[list[str], bool]:
        return await self._page(keys.REPOS, n, last)

    async def _page(self, prefix: bytes, n: int | None, last: str | None) -> tuple[list[str], bool]:
        start = prefix + last.encode() + b"\x00" if last else prefix
        if n == 0:
            return [], False
        kvs, more = await self._range(start, keys.prefix_end(prefix), limit=n or 0, keys_only=True)
        cut = len(prefix)
        return [kv.key[cut:].decode() for kv in kvs], more

    async def list_referrers(self, repo: str, subject: str) -> list[dict[str, Any]]:
        prefix = keys.referrers_prefix(repo, subject)
        kvs, _more = await self._range(prefix, keys.prefix_end(prefix))
        return [json.loads(kv.value) for kv in kvs]
