"""The metadata store: registry operations on top of a few key-value primitives.

Guarantees, grouped as the operations need them:

* Linearizable reads (`_get`, `_range`): a read sees every write acknowledged before it,
  on any replica. This is what makes a push to one replica visible on another at once.
* Atomic transactions (`_txn`): every registry write below is one transaction, so a
  crash leaves either all of its keys or none. Compare-and-set guards are expressed as
  `(key, mod_revision)` pairs, where revision 0 means "the key must not exist".
* Journaled account writes (`_account_txn`): a transaction on accounts (users,
  organizations, teams, grants, public repositories, access tokens; and repository
  policies) is handed to
  `account_log` once committed and before it returns, so the replica journals it
  (moorage.meta.account_journal) before the change is acknowledged, as pushes are.
* Bounded reads and writes: no read asks for more than `STORE_PAGE` keys (a backend may
  answer fewer, e.g. to stay under a message size limit, and says there is more), and no
  transaction holds more than `TXN_OPS` guards or operations. The few writes that can
  exceed it (a manifest with thousands of references or tags, deleting a manifest that
  thousands of tags point at) are split, see `put_manifest` and `delete_manifest`.

Backends implement only the primitives (etcd in production, a dict in unit tests);
everything a registry operation means is written once, here.
"""

from __future__ import annotations

import asyncio
import os
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from moorage.errors import BlobCollecting, StoreUnavailable
from moorage.meta import keys, usage

# Re-exported: the primitives' values were first defined here, and importers still use this.
from moorage.meta.ops import KV as KV
from moorage.meta.ops import LAST_REVISION as LAST_REVISION
from moorage.meta.ops import MUST_EXIST as MUST_EXIST
from moorage.meta.ops import Delete as Delete
from moorage.meta.ops import Guard as Guard
from moorage.meta.ops import Op as Op
from moorage.meta.ops import Put as Put
from moorage.meta.records import (
    ClusterRecord,
    ManifestRecord,
    TagRecord,
    UserRecord,
    decode_blob_link,
    dumps,
)

#: What `_account_txn` calls with a committed transaction's revision and operations.
AccountLog = Callable[[int, Sequence["Op"]], Awaitable[None]]

_EMPTY = b"{}"
_TXN_RETRIES = 20

#: A policy check of a manifest PUT (see put_manifest) and of a delete by digest (it gets
#: the tags that point at the manifest; see delete_manifest).
PolicyCheck = Callable[[], Awaitable[Sequence[Guard]]]
DeleteCheck = Callable[[list[str]], Awaitable[Sequence[Guard]]]


def _env_int(name: str, default: int, lowest: int) -> int:
    try:
        return max(lowest, int(os.environ.get(name, "") or default))
    except ValueError:
        return default


#: Keys asked for per read (MOORAGE_STORE_PAGE; small values exercise paging in tests).
STORE_PAGE = _env_int("MOORAGE_STORE_PAGE", 1000, 1)
#: Guards, and separately operations, per transaction (MOORAGE_TXN_OPS). etcd refuses a
#: transaction with more than --max-txn-ops (1024 here) of either; the backend adds one.
TXN_OPS = min(_env_int("MOORAGE_TXN_OPS", 512, 4), 1000)
#: Bytes of keys and values per bulk-load transaction, well under etcd's 8 MiB request limit.
TXN_BYTES = 2 * 1024 * 1024


def op_batches(ops: Sequence[Op], count: int = 0, size: int = TXN_BYTES) -> Iterator[list[Op]]:
    """`ops` in transactions of at most `count` (TXN_OPS) operations and `size` bytes (one
    larger operation goes alone: etcd takes a value up to its request limit)."""
    count = count or TXN_OPS
    batch: list[Op] = []
    total = 0
    for op in ops:
        n = len(op.key) + (len(op.value) if isinstance(op, Put) else 0)
        if batch and (len(batch) >= count or total + n > size):
            yield batch
            batch, total = [], 0
        batch.append(op)
        total += n
    if batch:
        yield batch


class MetaStore(ABC):
    #: Journals account changes (set by the replica: moorage.server.worker); None: not
    #: journaled (the unit tier, and recovery, which replays the journal itself).
    account_log: AccountLog | None = None

    # -- primitives each backend provides ------------------------------------------------
    @abstractmethod
    async def _get(self, key: bytes) -> KV | None: ...

    @abstractmethod
    async def _range(
        self, start: bytes, end: bytes, limit: int, keys_only: bool = False, revision: int = 0
    ) -> tuple[list[KV], bool]:
        """At most `limit` (> 0) keys in [start, end) in byte order: (kvs, more).

        A backend may answer fewer keys than `limit` (its message size bound) and then
        says `more`; callers page on from the last key (see `_scan`). `revision` > 0 reads
        the keys as they were at that revision (StoreUnavailable once it is compacted)."""

    async def _scan(
        self, start: bytes, end: bytes, keys_only: bool = False, page: int = 0, revision: int = 0
    ) -> AsyncIterator[list[KV]]:
        """Every key in [start, end), one bounded read per page (all at `revision` if > 0)."""
        page = min(page or STORE_PAGE, STORE_PAGE)
        while True:
            kvs, more = await self._range(
                start, end, limit=page, keys_only=keys_only, revision=revision
            )
            if kvs:
                yield kvs
            if not more or not kvs:
                return
            start = kvs[-1].key + b"\x00"

    @abstractmethod
    async def _txn(self, guards: Sequence[Guard], ops: Sequence[Op]) -> bool:
        """Apply `ops` atomically if every guard holds; False (nothing applied) otherwise."""

    async def _account_txn(self, guards: Sequence[Guard], ops: Sequence[Op]) -> bool:
        """`_txn` for every write of accounts: once committed, `account_log` has the
        change (durably in the journal) before this returns. A journal that cannot be
        written raises (StorageUnavailable): the change is committed but not acknowledged."""
        if not await self._txn(guards, ops):
            return False
        if self.account_log is not None:
            await self.account_log(LAST_REVISION.get(), ops)
        return True

    async def _get_many(self, keys_: Sequence[bytes]) -> list[KV | None]:
        """Several keys at once (backends may do it in one round trip), 64 in flight."""
        out: list[KV | None] = []
        for i in range(0, len(keys_), 64):
            out += await asyncio.gather(*(self._get(k) for k in keys_[i : i + 64]))
        return out

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
        return await self._account_txn([(key, 0)], [Put(key, user.encode())])

    async def put_user(self, user: UserRecord) -> None:
        await self._account_txn([], [Put(keys.user(user.name), user.encode())])

    # -- blobs linked to repositories ---------------------------------------------------
    async def blob_size(self, repo: str, digest: str, pull: bool = False) -> int | None:
        """The size of a blob `repo` may serve; None when not linked there, or while garbage
        collection deletes it (a client then uploads it again) unless for a `pull`: a dead
        run's tombstone may stand on a blob a manifest needs (docs/ARCHITECTURE.md)."""
        if pull:
            link = await self._get(keys.blob(repo, digest))
            return decode_blob_link(link.value) if link else None
        link, tombstone = await self._get_many(
            [keys.blob(repo, digest), keys.blob_tombstone(digest)]
        )
        return decode_blob_link(link.value) if link and tombstone is None else None

    async def blob_collecting(self, digest: str) -> bool:
        """Whether garbage collection is deleting the blob now (its tombstone exists)."""
        return await self._get(keys.blob_tombstone(digest)) is not None

    async def missing_blobs(self, repo: str, digests: Iterable[str]) -> list[str]:
        wanted = list(dict.fromkeys(digests))
        found = await self._get_many([keys.blob(repo, d) for d in wanted])
        return [d for d, kv in zip(wanted, found, strict=True) if kv is None]

    async def link_blob(
        self,
        repo: str,
        digest: str,
        size: int,
        enforce_quota: bool = False,
        read: usage.LinkRead | None = None,
    ) -> bool:
        """Let `repo` serve the blob, stamped with the time (the grace period of garbage
        collection runs from it) and counted in its namespace's usage (meta/usage.py).
        `enforce_quota`: QuotaExceeded when the blob is new there and does not fit. False,
        and nothing written, while garbage collection deletes the blob: its bytes are
        going, the caller must store them again. `read`: `usage.read_link`'s, taken ahead."""
        return await usage.link(self, repo, digest, size, enforce_quota, read=read)

    async def unlink_blob(self, repo: str, digest: str) -> bool:
        return await usage.unlink(self, repo, digest)

    # -- manifests and tags ------------------------------------------------------------
    async def get_manifest(self, repo: str, digest: str) -> ManifestRecord | None:
        kv = await self._get(keys.manifest(repo, digest))
        return ManifestRecord.decode(kv.value) if kv else None

    async def manifest_sizes(self, repo: str, digests: list[str]) -> dict[str, int | None]:
        kvs = await self._get_many([keys.manifest(repo, d) for d in digests])  # one read
        sizes = [ManifestRecord.decode(kv.value).size if kv else None for kv in kvs]
        return dict(zip(digests, sizes, strict=True))

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
        check: PolicyCheck | None = None,
        also: Sequence[Op] = (),
    ) -> list[str]:
        """Record a manifest, point `tags` at it and index it under its subject, if every
        blob and manifest it requires is in `repo`. Returns the missing digests; nothing is
        written when there are any.

        Usually one transaction checks the references and writes everything. A manifest
        with more references than fit in one transaction's guards has the rest checked by
        reads just before (no weaker than today's guarantee: a blob may be unlinked right
        after a push too); tags beyond one transaction follow in further transactions,
        each guarded by the manifest's existence and rewriting its record (so a concurrent
        delete by digest either sees them or retries), all before the caller answers.

        Garbage collection (moorage.registry.gc) is kept out by the same guards: no
        reference, nor the manifest's own bytes, may have a tombstone. References only
        read (beyond one transaction's guards) are covered by a pending record written
        before the reads and removed with the commit: collection marks what it references.
        BlobCollecting when the manifest's own bytes are being collected. `also`: writes of
        the same transaction (the push's webhook event), read after each attempt's `check`.
        """
        extra = list(await check()) if check is not None else []
        blob_refs, child_refs = list(dict.fromkeys(blobs)), list(dict.fromkeys(manifests))
        # (digest, the key that must exist, the tombstone that must not)
        required = [(d, keys.blob(repo, d), keys.blob_tombstone(d)) for d in blob_refs]
        required += [
            (d, keys.manifest(repo, d), keys.manifest_tombstone(repo, d)) for d in child_refs
        ]
        # two guards per reference, one for the manifest's bytes, the policies' own
        room = max(0, (TXN_OPS - 1 - len(extra)) // 2)
        guarded, checked = required[:room], required[room:]
        mkey = keys.manifest(repo, record.digest)
        pending = keys.pending_manifest(repo, record.digest)
        if checked:
            # Garbage collection marks what a pending manifest references (its bytes are
            # stored already), so the references only read here stay until it is recorded.
            await self._txn([], [Put(pending, dumps({"at": round(time.time(), 3)}))])
            missing = await self._missing(checked)
            if missing:
                await self._txn([], [Delete(pending)])
                return missing
        ops: list[Op] = [Put(keys.repo(repo), _EMPTY), Put(mkey, record.encode()), *also]
        if checked:
            ops.append(Delete(pending))
        if referrer is not None and record.subject:
            ops.append(Put(keys.referrer(repo, record.subject, record.digest), dumps(referrer)))
        tag_value = replace(record.tag_record(), pushed_at=round(time.time(), 3)).encode()
        first = TXN_OPS - len(ops)
        ops += [Put(keys.tag(repo, t), tag_value) for t in tags[:first]]
        own = keys.blob_tombstone(record.digest)
        guards: list[Guard] = [*extra, *((key, MUST_EXIST) for _, key, _ in guarded)]
        guards += [(tombstone, 0) for _, _, tombstone in guarded]
        guards.append((own, 0))
        if await self._txn(guards, ops):
            for i in range(first, len(tags), TXN_OPS - 1):
                more: list[Op] = [Put(mkey, record.encode())]
                more += [Put(keys.tag(repo, t), tag_value) for t in tags[i : i + TXN_OPS - 1]]
                if not await self._txn([(mkey, MUST_EXIST)], more):
                    break  # deleted meanwhile: as if the delete came after this push
            return []
        if checked:
            await self._txn([], [Delete(pending)])
        if await self._get(own) is not None:
            raise BlobCollecting(
                f"the bytes of manifest {record.digest} are being garbage-collected; "
                "push the manifest again"
            )
        missing = await self._missing(guarded)
        if not missing:  # raced with a concurrent push of the last reference: try once more
            again = (repo, record, tags, referrer, blobs, manifests, check, also)
            return await self.put_manifest(*again)
        return missing

    async def _missing(self, required: Sequence[tuple[str, bytes, bytes]]) -> list[str]:
        """The digests of `required` whose key is absent or whose tombstone is present."""
        found = await self._get_many([k for _, key, tomb in required for k in (key, tomb)])
        return [
            d
            for i, (d, _, _) in enumerate(required)
            if found[2 * i] is None or found[2 * i + 1] is not None
        ]

    async def delete_tag(
        self,
        repo: str,
        tag: str,
        guards: Sequence[Guard] = (),
        revision: int | None = None,
        also: Sequence[Op] = (),
    ) -> bool:
        """Delete a tag (False when absent, when `guards`, e.g. its policies' revisions, no
        longer hold, or when it is no longer at `revision`); `also` in the same transaction."""
        key = keys.tag(repo, tag)
        kv = await self._get(key)
        if kv is None or (revision is not None and kv.mod_revision != revision):
            return False
        return await self._txn([*guards, (key, kv.mod_revision)], [Delete(key), *also])

    async def delete_manifest(
        self, repo: str, digest: str, check: DeleteCheck | None = None, also: Sequence[Op] = ()
    ) -> bool:
        """Delete a manifest, every tag pointing at it and its referrer entry.

        One transaction when they fit (the usual case). When thousands of tags point at
        it, the surplus tags go first in bounded transactions, each guarded by the
        manifest's revision (a concurrent push of it stops the delete, which starts
        over), then the manifest with the rest. `check` sees the tags pointing at it before
        anything is deleted: it raises to refuse, or returns guards for the last transaction.
        `also`: writes made in the last transaction (the delete's webhook event).
        """
        mkey = keys.manifest(repo, digest)
        for attempt in range(_TXN_RETRIES):  # re-pushes of it revise it: retry, jittered
            await asyncio.sleep(0.002 * attempt * os.urandom(1)[0] / 255)
            kv = await self._get(mkey)
            if kv is None:
                return False
            record = ManifestRecord.decode(kv.value)
            prefix = keys.tags_prefix(repo)
            pointing: list[KV] = []
            needle = digest.encode()  # decoded only when it may match: a big repository
            async for page in self._scan(prefix, keys.prefix_end(prefix)):
                pointing += [
                    t
                    for t in page
                    if needle in t.value and TagRecord.decode(t.value).digest == digest
                ]
            extra = await check([t.key[len(prefix) :].decode() for t in pointing]) if check else ()
            ops: list[Op] = [Delete(mkey), *also]
            if record.subject:
                ops.append(Delete(keys.referrer(repo, record.subject, digest)))
            keep = TXN_OPS - len(ops)
            surplus, last = pointing[keep:], pointing[:keep]
            done = True
            for i in range(0, len(surplus), TXN_OPS - 1):
                chunk = surplus[i : i + TXN_OPS - 1]
                guards: list[Guard] = [(mkey, kv.mod_revision)]
                guards += [(t.key, t.mod_revision) for t in chunk]
                if not await self._txn(guards, [Delete(t.key) for t in chunk]):
                    done = False
                    break
            if not done:
                continue
            guards = [(mkey, kv.mod_revision), *((t.key, t.mod_revision) for t in last), *extra]
            if await self._txn(guards, [*ops, *(Delete(t.key) for t in last)]):
                return True
        raise StoreUnavailable(f"{digest} kept being pushed again while it was deleted: retry")

    async def list_tags(self, repo: str, n: int | None, last: str | None) -> tuple[list[str], bool]:
        prefix = keys.tags_prefix(repo)
        return await self._page(prefix, n, last)

    async def repo_exists(self, repo: str) -> bool:
        return await self._get(keys.repo(repo)) is not None

    async def list_repos(self, n: int | None, last: str | None) -> tuple[list[str], bool]:
        return await self._page(keys.REPOS, n, last)

    async def _page(self, prefix: bytes, n: int | None, last: str | None) -> tuple[list[str], bool]:
        """Up to `n` names after `last` (None: every one; callers cap it), read in pages."""
        start = prefix + last.encode() + b"\x00" if last else prefix
        end = keys.prefix_end(prefix)
        cut = len(prefix)
        out: list[str] = []
        if n == 0:
            return out, False
        while True:
            want = STORE_PAGE if n is None else min(n - len(out), STORE_PAGE)
            kvs, more = await self._range(start, end, limit=want, keys_only=True)
            out += [kv.key[cut:].decode() for kv in kvs]
            if not more or not kvs:
                return out, False
            if n is not None and len(out) >= n:
                return out, True
            start = kvs[-1].key + b"\x00"

    # -- token signing keys (moorage.auth.signing_keys; issue #9, Docker token flow) ---------
    async def signing_keys(self, limit: int) -> tuple[str | None, int, list[bytes]]:
        """(the newest kid, the mod revision of its marker (0: none), at most `limit` raw
        signing key records): bounded reads."""
        marker = await self._get(keys.TOKEN_KEY_NEWEST)
        end = keys.prefix_end(keys.TOKEN_KEYS)
        kvs, _ = await self._range(keys.TOKEN_KEYS, end, limit=min(limit, STORE_PAGE))
        newest = marker.value.decode(errors="replace") if marker is not None else None
        return newest, marker.mod_revision if marker is not None else 0, [kv.value for kv in kvs]

    async def newest_signing_key(self) -> str | None:
        """The newest signing key's id (one small read), or None when there is none."""
        marker = await self._get(keys.TOKEN_KEY_NEWEST)
        return marker.value.decode(errors="replace") if marker is not None else None

    async def add_signing_key(
        self, kid: str, record: bytes, newest_revision: int, retire: Sequence[str] = ()
    ) -> bool:
        """Store a new signing key and make it the newest, only if the newest marker is
        still at `newest_revision` (0: absent): one replica wins a rotation. `retire`:
        key ids to delete in the same transaction."""
        ops: list[Op] = [Put(keys.token_key(kid), record), Put(keys.TOKEN_KEY_NEWEST, kid.encode())]
        ops += [Delete(keys.token_key(old)) for old in retire]
        return await self._txn([(keys.TOKEN_KEY_NEWEST, newest_revision)], ops)

    async def _count(self, start: bytes, end: bytes) -> int:
        """How many keys lie in [start, end) (the audit log's retention by count). This
        default reads their names page by page; etcd counts them without sending any."""
        total = 0
        async for page in self._scan(start, end, keys_only=True):
            total += len(page)
        return total
