"""Online garbage collection: blobs no manifest references, deleted while pushes go on.

The protocol (docs/ARCHITECTURE.md, "Garbage collection", says why each step is there):

1. Mark at one revision M: every manifest record and pending manifest (their bytes, and
   the config, layers and child manifests their bytes name) is referenced; every blob
   link and every file in blob storage that is not referenced is a candidate, kept only
   if its newest link (else its file) is older than the grace period.
2. Tombstone the candidates. From then on, `link_blob` and a manifest PUT that needs one
   of them fail their own transaction's guard (meta.base): no new reference can commit.
3. Re-check: every manifest, pending manifest and blob link written after M (read now,
   after the tombstones) rescues what it references or links; their tombstones go.
4. For each remaining candidate: delete its links (guarded by its tombstone and by the
   collection's lock), then its bytes, then its tombstone.

`--untagged` runs the same steps for manifests first (reachable: tagged or pending, an index's
children, the referrers of a reachable subject; a repository written after M is left alone
this run), then collects blobs from a fresh mark (a dry run's mark leaves out the manifests
the real run would delete). Memory holds sets of digests and, per candidate, its size, age
and repositories."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from moorage.errors import ManifestInvalid, MoorageError, RecordCorrupt
from moorage.meta import keys
from moorage.meta.base import LAST_REVISION, Guard, MetaStore
from moorage.meta.gc_store import GcStore, ManifestRow
from moorage.oci import mediatypes as mt
from moorage.oci.manifest import parse_manifest
from moorage.registry.gc_result import GcOptions as GcOptions
from moorage.registry.gc_result import GcResult as GcResult
from moorage.storage.base import BlobStorage
from moorage.storage.journal import Journal

#: Blobs deleted per step (links in one or a few transactions, then the files).
_DELETE_BATCH = 64
#: The mark reads and parses manifests in batches of this many, in worker threads, at most
#: `_READ_THREADS` batches at a time (one at a time, on the event loop, it was most of the
#: mark's time and stalled the worker's requests meanwhile).
_READ_BATCH = 64
_READ_THREADS = 4
#: Where a blob no repository links is counted in a report.
UNLINKED = ""

Progress = Callable[[str, dict[str, int]], Awaitable[None]]


class GcAborted(MoorageError):
    """The collection stopped before deleting anything more (what was deleted is gone)."""


@dataclass
class _Candidate:
    size: int
    at: float | None  # newest link time; the file's time when no link says
    repos: list[str]
    forced: bool = False  # a dead run's tombstone: finish it, whatever its age


class Collector:
    def __init__(
        self,
        meta: MetaStore,
        storage: BlobStorage,
        run: str,
        options: GcOptions,
        *,
        journal: Journal | None = None,
        fence: Guard | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.store = GcStore(meta)
        self.storage = storage
        self.options = options
        self.journal = journal
        self.fence = fence
        self._progress = progress
        self.result = GcResult(run, options.dry_run, options.grace, options.untagged, time.time())
        self._cutoff = self.result.started_at - options.grace
        self._bodies_read = 0
        #: A dry run's untagged manifests (repo, digest): the real run deletes them before
        #: its blob mark, so the dry run's mark skips them (their bytes and what only they
        #: reference count as freed, as in the real run).
        self._dropped: set[tuple[str, str]] = set()

    async def run(self) -> GcResult:
        if not self.options.dry_run:
            await self._clear_stale_manifest_tombstones()
        if self.options.untagged:
            await self._manifests()
        await self._blobs()
        self.result.finished_at = time.time()
        return self.result

    async def _report(self, phase: str, **counts: int) -> None:
        if self._progress is not None:
            await self._progress(phase, counts)

    # -- references ---------------------------------------------------------------------
    async def _references(self, repo: str, digest: str, media_type: str | None) -> list[str]:
        """What a manifest's bytes reference: config, every layer, child manifests. Its
        bytes missing or unreadable: GcAborted (what it needs is unknown)."""
        (refs,) = await self._references_of([(repo, digest, media_type)])
        return refs

    async def _references_of(self, items: list[tuple[str, str, str | None]]) -> list[list[str]]:
        """`_references` of many manifests (repo, digest, media type), in order: read and
        parsed in batches in worker threads, a bounded number at a time."""
        slots = asyncio.Semaphore(_READ_THREADS)

        async def batch(part: list[tuple[str, str, str | None]]) -> list[list[str] | str | None]:
            async with slots:
                bodies = await self.storage.read_many([digest for _, digest, _ in part])
                media = [media_type for _, _, media_type in part]
                return await asyncio.to_thread(_parse_all, bodies, media)

        parts = [items[i : i + _READ_BATCH] for i in range(0, len(items), _READ_BATCH)]
        found = [r for done in await asyncio.gather(*map(batch, parts)) for r in done]
        self._bodies_read += len(items)
        out: list[list[str]] = []
        for (repo, digest, _), refs in zip(items, found, strict=True):
            if isinstance(refs, list):
                out.append(refs)
            elif refs is not None:
                raise GcAborted(
                    f"manifest {digest} in {repo} cannot be parsed ({refs}); nothing more "
                    "was deleted. Delete it, then run the collection again"
                )
            elif self.options.dry_run and await self.store.manifest(repo, digest) is None:
                out.append([])  # deleted since the mark (a dry run runs beside a collection)
            else:
                raise GcAborted(
                    f"manifest {digest} in {repo} is recorded but its bytes are missing from "
                    f"blob storage, so what it references is unknown; nothing more was "
                    f"deleted. Delete it (DELETE /v2/{repo}/manifests/{digest}) or restore its "
                    "bytes, then run the collection again"
                )
        return out

    async def _mark_blobs(self, at: int) -> set[str]:
        referenced: set[str] = set()
        parsed: set[str] = set()
        count = 0
        async for page in self.store.manifests(at):
            todo: list[tuple[str, str, str | None]] = []
            for row in page:
                if (row.repo, row.digest) in self._dropped:
                    continue
                referenced.add(row.digest)
                if row.digest not in parsed:
                    parsed.add(row.digest)
                    todo.append((row.repo, row.digest, row.media_type))
            for refs in await self._references_of(todo):
                referenced.update(refs)
            count += len(page)
            await self._report("mark", manifests=count, referenced=len(referenced))
        async for rows in self.store.pending(at):
            for repo, digest, _ in rows:
                referenced.add(digest)
                if await self.storage.stat(digest) is not None and digest not in parsed:
                    parsed.add(digest)
                    referenced.update(await self._references(repo, digest, None))
        return referenced

    # -- blobs ----------------------------------------------------------------------------
    async def _blobs(self) -> None:
        at = await self.store.revision()
        self.result.revision = at
        referenced = await self._mark_blobs(at)
        candidates: dict[str, _Candidate] = {}
        links = 0
        async for page in self.store.links(at):
            for link in page:
                if link.digest in referenced:
                    continue
                c = candidates.setdefault(link.digest, _Candidate(link.size, None, []))
                c.repos.append(link.repo)
                if link.at is not None:
                    c.at = max(c.at or 0.0, link.at)
            links += len(page)
            await self._report("links", links=links, candidates=len(candidates))
        stale: list[str] = []
        async for rows in self.store.blob_tombstones(at):
            stale += [d for d, run in rows if run != self.result.run]
        files = 0
        sizes: dict[str, int] = {}
        async for batch in self.storage.blobs():
            for digest, size, mtime in batch:
                if digest in referenced:
                    continue
                found = candidates.get(digest)
                if found is None:  # bytes no repository links
                    candidates[digest] = _Candidate(size, mtime, [])
                elif found.at is None:
                    found.at = mtime
                sizes[digest] = size
            files += len(batch)
            await self._report("storage", files=files, candidates=len(candidates))
        for digest in stale:
            if digest in referenced:
                if not self.options.dry_run:
                    await self.store.clear_blob(digest)
                continue
            c = candidates.setdefault(digest, _Candidate(0, None, []))
            c.forced = True
        del referenced
        eligible = {d: c for d, c in candidates.items() if c.forced or (c.at or 0.0) < self._cutoff}
        del candidates
        if self.options.dry_run:
            for digest, c in eligible.items():
                self._count(digest, c, sizes.get(digest, 0))
            return
        await self._sweep(eligible, sizes, at)

    def _count(self, digest: str, c: _Candidate, freed: int) -> None:
        self.result.blobs += 1
        self.result.bytes += freed
        for repo in dict.fromkeys(c.repos or [UNLINKED]):
            self.result.add(repo, digest, freed)

    async def _sweep(self, eligible: dict[str, _Candidate], sizes: dict[str, int], at: int) -> None:
        fresh = [d for d, c in eligible.items() if not c.forced]
        marked = set(await self.store.mark_blobs(fresh, self.result.run))
        marked.update(d for d, c in eligible.items() if c.forced)
        await self._report("tombstones", tombstoned=len(marked))
        rescued = await self._in_use_since(at, marked)
        await self.store.clear_blobs(sorted(rescued))
        self.result.rescued += len(rescued)
        remaining = sorted(marked - rescued)
        for i in range(0, len(remaining), _DELETE_BATCH):
            chunk = remaining[i : i + _DELETE_BATCH]
            links = [(d, eligible[d].repos) for d in chunk]
            if not await self.store.drop_links(links, self.fence):
                raise GcAborted(
                    "the collection lost its lock (another replica took it over, or etcd "
                    "was unreachable too long); nothing more was deleted: run it again"
                )
            await self.store.uncount(links)  # the quotas' usage, while tombstones stand
            # Only now the bytes: no link names them, and their tombstones keep new ones out.
            freed = await self.storage.delete_blobs(chunk, sizes)
            for digest, size in zip(chunk, freed, strict=True):
                self._count(digest, eligible[digest], size or 0)
            await self.store.clear_blobs(chunk)
            await self._report("delete", blobs=self.result.blobs, bytes=self.result.bytes)

    async def _in_use_since(self, at: int, marked: set[str]) -> set[str]:
        """The tombstoned digests that something written after revision `at` needs: a
        manifest (its bytes and references), a pending manifest, a blob link."""
        rescued: set[str] = set()
        async for rows in self.store.changed(keys.BLOBS, at):
            rescued.update(d for _, d in rows if d in marked)
        for prefix in (keys.MANIFESTS, keys.GC_PENDING):
            async for rows in self.store.changed(prefix, at):
                # The bytes of a page read together (one round trip each on S3, overlapped).
                records = [await self.store.manifest(repo, digest) for repo, digest in rows]
                bodies = await self.storage.read_many([digest for _, digest in rows])
                media = [r.media_type if r is not None else None for r in records]
                found = await asyncio.to_thread(_parse_all, bodies, media)
                for (repo, digest), record, refs in zip(rows, records, found, strict=True):
                    if record is None:
                        # A pending push (its bytes may not parse yet, or never arrive), or
                        # a manifest deleted again: what its bytes name, if they are there.
                        if refs is not None:
                            rescued.add(digest)
                        if isinstance(refs, list):
                            rescued.update(refs)
                        continue
                    rescued.add(digest)
                    if not isinstance(refs, list):  # missing or unparseable: read again,
                        refs = await self._references(repo, digest, record.media_type)  # or abort
                    rescued.update(refs)
        return rescued & marked

    # -- untagged manifests ---------------------------------------------------------------
    async def _clear_stale_manifest_tombstones(self) -> None:
        """A dead run's manifest tombstones: its deletes are one transaction each (record
        and tombstone together), so one that stands deleted nothing: clear it."""
        async for rows in self.store.manifest_tombstones():
            for repo, digest, run in rows:
                if run != self.result.run:
                    await self.store.clear_manifest(repo, digest)

    async def _manifests(self) -> None:
        at = await self.store.revision()
        rows: dict[str, ManifestRow] = {}
        referrers: dict[str, list[str]] = {}
        async for page in self.store.manifests(at):
            for row in page:
                name = f"{row.repo}@{row.digest}"
                rows[name] = row
                if row.subject:
                    referrers.setdefault(f"{row.repo}@{row.subject}", []).append(name)
        roots: list[str] = []
        async for tag_rows in self.store.tags(at):
            roots += [f"{repo}@{digest}" for repo, digest in tag_rows]
        async for pending in self.store.pending(at):
            roots += [f"{repo}@{digest}" for repo, digest, _ in pending]
        reachable: set[str] = set()
        stack = [r for r in roots if r in rows]
        reachable.update(stack)
        while stack:
            name = stack.pop()
            row = rows[name]
            nexts = list(referrers.get(name, ()))
            if row.media_type in mt.INDEXES:
                refs = await self._references(row.repo, row.digest, row.media_type)
                nexts += [f"{row.repo}@{d}" for d in refs]
            for n in nexts:
                if n in rows and n not in reachable:
                    reachable.add(n)
                    stack.append(n)
        await self._report("untagged", manifests=len(rows), reachable=len(reachable))
        unreachable = []
        todo = [row for name, row in rows.items() if name not in reachable]
        for i in range(0, len(todo), _READ_BATCH * _READ_THREADS):
            part = todo[i : i + _READ_BATCH * _READ_THREADS]
            stored = await self.storage.modified_many([row.digest for row in part])
            for row, when in zip(part, stored, strict=True):
                if when is None or when < self._cutoff:
                    unreachable.append(row)
        del rows, referrers, reachable, todo
        if self.options.dry_run:
            self._dropped = {(row.repo, row.digest) for row in unreachable}
            for row in unreachable:
                self.result.manifests += 1
                self.result.add(row.repo, row.digest, 0, manifest=True)
            return
        items = [(row.repo, row.digest) for row in unreachable]
        marked = set(await self.store.mark_manifests(items, self.result.run))
        touched: set[str] = set()
        for prefix in (keys.MANIFESTS, keys.TAGS, keys.GC_PENDING):  # (a referrer is a manifest)
            async for changed in self.store.changed(prefix, at):
                touched.update(repo for repo, _ in changed)
        for row in unreachable:
            if (row.repo, row.digest) not in marked:
                continue
            if row.repo in touched or not await self.store.drop_manifest(row, self.fence):
                await self.store.clear_manifest(row.repo, row.digest)
                self.result.rescued += 1
                continue
            await self._journal({"op": "delete", "repo": row.repo, "digest": row.digest})
            self.result.manifests += 1
            self.result.add(row.repo, row.digest, 0, manifest=True)
        await self._report("untagged", deleted=self.result.manifests)

    async def _journal(self, entry: dict[str, Any]) -> None:
        """A manifest deleted is a change the journal replays (as `Manifests.delete`)."""
        if self.journal is not None:
            await self.journal.append({"r": LAST_REVISION.get(), **entry})


def _parse_all(bodies: list[bytes | None], media: list[str | None]) -> list[list[str] | str | None]:
    """Per manifest: what its bytes reference, None when they are missing, or why they do
    not parse (pure: run in a worker thread)."""
    out: list[list[str] | str | None] = []
    for body, media_type in zip(bodies, media, strict=True):
        if body is None:
            out.append(None)
            continue
        try:
            manifest = parse_manifest(body, media_type)
        except ManifestInvalid as exc:
            out.append(exc.message)
            continue
        refs = [d.digest for d in (*manifest.layers, *manifest.children)]
        if manifest.config is not None:
            refs.append(manifest.config.digest)
        out.append(refs)
    return out


def corrupt_message(exc: RecordCorrupt) -> str:
    return (
        f"a record in the store is corrupt ({exc.message}); nothing more was deleted: "
        "fix or delete it, then run the collection again"
    )
