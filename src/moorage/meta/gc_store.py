"""What garbage collection reads and writes in the store (moorage.registry.gc).

Reads come in bounded pages and, for the mark, all at one revision (`at`), as rows of a
few fields: collection holds sets of digests, never whole records. Writes are the steps
of the protocol, each one transaction that re-checks what it relies on:

* `mark_blobs` / `mark_manifests`: write tombstones, each only where none exists. From
  then on a blob link or a manifest PUT that needs the blob (or an index that needs the
  manifest) fails its own guard instead of succeeding (meta.base: `link_blob`,
  `put_manifest`).
* `drop_links` / `drop_manifest`: delete what the tombstone covers, guarded by the
  tombstone and by the collection's lock (`fence`): a run that lost its lock changes
  nothing more.
* `clear_blob` / `clear_manifest`: remove a tombstone (the bytes are gone, or the blob was
  found needed after all).

Leases of the collection lock are ClusterStore's (`take_lock`, `keep_lock`).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from moorage.errors import RecordCorrupt
from moorage.meta import keys, usage
from moorage.meta.base import KV, MUST_EXIST, TXN_OPS, Delete, Guard, MetaStore, Op, Put
from moorage.meta.records import ManifestRecord, TagRecord, check_digest, check_size, dumps

#: Tombstones written per transaction.
_MARK_BATCH = 64


@dataclass(frozen=True, slots=True)
class ManifestRow:
    repo: str
    digest: str
    media_type: str
    subject: str | None
    mod_revision: int


@dataclass(frozen=True, slots=True)
class LinkRow:
    repo: str
    digest: str
    size: int
    at: float | None  # when linked (None: a link written before links were stamped)
    mod_revision: int


def _split(key: bytes, prefix: bytes) -> tuple[str, str] | None:
    """(repo, last field) of `<prefix><repo>@<field>`; None for a malformed key."""
    head, sep, tail = key[len(prefix) :].decode(errors="replace").rpartition("@")
    return (head, tail) if sep and head else None


def _json(value: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


class GcStore:
    def __init__(self, meta: MetaStore) -> None:
        self.meta = meta
        #: The webhook event of a manifest deleted (repository, digest, tag, actor -> the
        #: writes for its transaction); set by moorage.cluster.gc when the replica has webhooks.
        self.notice: Callable[[str, str, str, str], Awaitable[Sequence[Op]]] | None = None

    async def revision(self) -> int:
        return await self.meta.revision()

    async def _pages(
        self, prefix: bytes, at: int, keys_only: bool = False
    ) -> AsyncIterator[list[KV]]:
        async for page in self.meta._scan(
            prefix, keys.prefix_end(prefix), keys_only=keys_only, revision=at
        ):
            yield page

    # -- the mark: reads at one revision ------------------------------------------------
    async def manifests(self, at: int) -> AsyncIterator[list[ManifestRow]]:
        """Every manifest record at revision `at`. A corrupt record raises RecordCorrupt:
        what it references is unknown, so nothing may be collected."""
        async for page in self._pages(keys.MANIFESTS, at):
            rows = []
            for kv in page:
                where = _split(kv.key, keys.MANIFESTS)
                if where is None:
                    raise RecordCorrupt(f"a manifest key is malformed: {kv.key[:200]!r}")
                record = ManifestRecord.decode(kv.value)
                rows.append(
                    ManifestRow(
                        where[0], record.digest, record.media_type, record.subject, kv.mod_revision
                    )
                )
            yield rows

    async def tags(self, at: int) -> AsyncIterator[list[tuple[str, str]]]:
        """(repo, manifest digest) of every tag at revision `at`."""
        async for page in self._pages(keys.TAGS, at):
            rows = []
            for kv in page:
                where = _split(kv.key, keys.TAGS)
                if where is not None:
                    rows.append((where[0], TagRecord.decode(kv.value).digest))
            yield rows

    async def links(self, at: int) -> AsyncIterator[list[LinkRow]]:
        """Every blob link at revision `at` (a malformed one is skipped: it links nothing)."""
        async for page in self._pages(keys.BLOBS, at):
            rows = []
            for kv in page:
                where = _split(kv.key, keys.BLOBS)
                doc = _json(kv.value)
                try:
                    digest = check_digest(where[1] if where else None, "blob link")
                    size = check_size(doc.get("size"), "blob link")
                except RecordCorrupt:
                    continue
                stamp = doc.get("at")
                at_time = float(stamp) if isinstance(stamp, int | float) else None
                rows.append(
                    LinkRow(where[0] if where else "", digest, size, at_time, kv.mod_revision)
                )
            yield rows

    async def pending(self, at: int = 0) -> AsyncIterator[list[tuple[str, str, float]]]:
        """(repo, manifest digest, since) of every manifest being recorded."""
        async for page in self._pages(keys.GC_PENDING, at):
            rows = []
            for kv in page:
                where = _split(kv.key, keys.GC_PENDING)
                stamp = _json(kv.value).get("at")
                if where is not None and isinstance(stamp, int | float):
                    rows.append((where[0], where[1], float(stamp)))
            yield rows

    async def blob_tombstones(self, at: int = 0) -> AsyncIterator[list[tuple[str, str]]]:
        """(digest, run) of every blob tombstone."""
        async for page in self._pages(keys.GC_DELETING, at):
            yield [
                (
                    kv.key[len(keys.GC_DELETING) :].decode(errors="replace"),
                    str(_json(kv.value).get("run", "")),
                )
                for kv in page
            ]

    async def manifest_tombstones(self, at: int = 0) -> AsyncIterator[list[tuple[str, str, str]]]:
        """(repo, digest, run) of every manifest tombstone."""
        async for page in self._pages(keys.GC_DELETING_MANIFESTS, at):
            rows = []
            for kv in page:
                where = _split(kv.key, keys.GC_DELETING_MANIFESTS)
                if where is not None:
                    rows.append((where[0], where[1], str(_json(kv.value).get("run", ""))))
            yield rows

    async def changed(self, prefix: bytes, since: int) -> AsyncIterator[list[tuple[str, str]]]:
        """(repo, last field) of the keys under `prefix` written after revision `since`,
        read now (keys only): at the revision a quorum read gives, so that a member behind
        the others (a channel that failed over, a read that fell back to the local copy)
        cannot answer without the writes that committed before this call (etcd refuses a
        revision it has not reached)."""
        now = await self.revision()
        async for page in self._pages(prefix, now, keys_only=True):
            rows = []
            for kv in page:
                if kv.mod_revision > since:
                    where = _split(kv.key, prefix)
                    if where is not None:
                        rows.append(where)
            yield rows

    async def manifest(self, repo: str, digest: str) -> ManifestRecord | None:
        return await self.meta.get_manifest(repo, digest)

    # -- the sweep: tombstones, then deletes ----------------------------------------------
    async def mark_blobs(self, digests: Sequence[str], run: str) -> list[str]:
        """Tombstone each blob that has none yet; the digests this call tombstoned."""
        value = dumps({"run": run, "at": round(time.time(), 3)})
        return await self._mark([(d, keys.blob_tombstone(d)) for d in digests], value)

    async def mark_manifests(
        self, items: Sequence[tuple[str, str]], run: str
    ) -> list[tuple[str, str]]:
        value = dumps({"run": run, "at": round(time.time(), 3)})
        done = await self._mark([(i, keys.manifest_tombstone(*i)) for i in items], value)
        return done

    async def _mark(self, items: Sequence[tuple[Any, bytes]], value: bytes) -> list[Any]:
        done: list[Any] = []
        for i in range(0, len(items), _MARK_BATCH):
            batch = items[i : i + _MARK_BATCH]
            if await self.meta._txn([(k, 0) for _, k in batch], [Put(k, value) for _, k in batch]):
                done += [item for item, _ in batch]
                continue
            for item, key in batch:  # one has a tombstone already: one at a time
                if await self.meta._txn([(key, 0)], [Put(key, value)]):
                    done.append(item)
        return done

    async def drop_links(
        self, links: Sequence[tuple[str, Sequence[str]]], fence: Guard | None
    ) -> bool:
        """Delete the links of blobs (digest, its repositories) while their tombstones
        stand (and the lock is still held); False when any is gone. Several blobs per
        transaction when their links fit in one."""
        batch: list[tuple[str, Sequence[str]]] = []
        count = 0
        for digest, repos in links:
            if batch and (count + len(repos) + 1 > TXN_OPS // 2 or len(batch) >= _MARK_BATCH):
                if not await self._drop(batch, fence):
                    return False
                batch, count = [], 0
            batch.append((digest, repos))
            count += len(repos) + 1
        return not batch or await self._drop(batch, fence)

    async def _drop(self, batch: Sequence[tuple[str, Sequence[str]]], fence: Guard | None) -> bool:
        guards: list[Guard] = [(keys.blob_tombstone(d), MUST_EXIST) for d, _ in batch]
        if fence is not None:
            guards.append(fence)
        ops: list[Op] = [Delete(keys.blob(r, d)) for d, repos in batch for r in repos]
        for i in range(0, max(len(ops), 1), TXN_OPS // 2):
            if not await self.meta._txn(guards, ops[i : i + TXN_OPS // 2]):
                return False
        return True

    async def uncount(self, links: Sequence[tuple[str, Sequence[str]]]) -> None:
        """After `drop_links`: the namespaces stop counting the blobs (meta/usage.py)."""
        await usage.forget(self.meta, links)

    async def clear_blobs(self, digests: Sequence[str]) -> None:
        for i in range(0, len(digests), TXN_OPS // 2):
            ops: list[Op] = [Delete(keys.blob_tombstone(d)) for d in digests[i : i + TXN_OPS // 2]]
            await self.meta._txn([], ops)

    async def clear_blob(self, digest: str) -> None:
        await self.meta._txn([], [Delete(keys.blob_tombstone(digest))])

    async def drop_manifest(self, row: ManifestRow, fence: Guard | None) -> bool:
        """Delete an untagged manifest (and its referrer entry, and its tombstone) if its
        record is unchanged since the mark (a push of it since changes it); with `notice`,
        its webhook event in the same transaction."""
        also = await self.notice(row.repo, row.digest, "", "moorage gc") if self.notice else ()
        tombstone = keys.manifest_tombstone(row.repo, row.digest)
        mkey = keys.manifest(row.repo, row.digest)
        guards: list[Guard] = [(mkey, row.mod_revision), (tombstone, MUST_EXIST)]
        if fence is not None:
            guards.append(fence)
        ops: list[Op] = [Delete(mkey), Delete(tombstone), *also]
        if row.subject:
            ops.append(Delete(keys.referrer(row.repo, row.subject, row.digest)))
        return await self.meta._txn(guards, ops)

    async def clear_manifest(self, repo: str, digest: str) -> None:
        await self.meta._txn([], [Delete(keys.manifest_tombstone(repo, digest))])

    # -- the run's documents: progress, last result, schedule ------------------------------
    async def put_doc(self, key: bytes, doc: dict[str, Any]) -> None:
        await self.meta._txn([], [Put(key, dumps(doc))])

    async def get_doc(self, key: bytes) -> dict[str, Any] | None:
        kv = await self.meta._get(key)
        return _json(kv.value) if kv is not None else None

    async def delete_doc(self, key: bytes) -> None:
        await self.meta._txn([], [Delete(key)])
