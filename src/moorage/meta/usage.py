"""Storage used per namespace: the counter a quota is checked against (issue #10 item 4).

A blob counts once per namespace, however many of the namespace's repositories link it.
Three keys change together, in the one transaction that links or unlinks a blob:

    /moorage/blobs/<repo>@<digest>       {"size", "counted": true, "at"}  the repository's link
    /moorage/usage-blobs/<ns>@<digest>   {"size", "repos"}           its counted links
    /moorage/usage/<ns>#<k>              {"bytes", "blobs"}          one shard of the total

The namespace's total is the sum of USAGE_SHARDS shards (meta/keys.py); a blob new to the
namespace adds to one of them. The transaction is guarded by the revisions the link, the
per-blob record, the namespace's policy and the shard were read at. Without a quota that
is one shard: a process's concurrent links each take a shard no other one is writing, or
wait for theirs, from the value the last one wrote (meta/link_hints.py), so they do not
collide.
With a quota every shard is read, checked against it and guarded: links of blobs new to the
namespace serialize on every replica, two pushes racing for the last bytes cannot both be
admitted, and the total never goes over the quota (a collision costs a retry, not a wrong
count). A shard may go negative (a blob is uncounted from any shard); the sum never does.

Manifest bytes are not counted (a few KiB each; counting them would put the counter in every
manifest transaction); a manifest PUT is still refused when its bytes do not fit.

A link written without counting (before this existed, or by a restore, which writes links
back as they were) has no "counted" mark: `recount` counts it under the same guards and
never refuses. Whatever removes a link must go through `unlink` (MetaStore.unlink_blob), or
the namespace keeps counting the blob.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from moorage.errors import QuotaExceeded, RecordCorrupt, StoreUnavailable
from moorage.meta import keys
from moorage.meta.link_hints import counters_of
from moorage.meta.ops import KV, Delete, Guard, Op, Put
from moorage.meta.policy_records import PolicyRecord, namespace_of
from moorage.meta.records import dumps

if TYPE_CHECKING:
    from moorage.meta.base import MetaStore

_RETRIES = 200
_FORGET_BATCH = 64  # per-blob records uncounted in one transaction
_EMPTY = b"{}"


@dataclass(frozen=True, slots=True)
class Usage:
    namespace: str
    bytes: int
    blobs: int


def _doc(kv: KV | None) -> dict[str, object]:
    if kv is None:
        return {}
    try:
        doc = json.loads(kv.value)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise RecordCorrupt(f"a usage record is not JSON: {kv.key!r}") from None
    if not isinstance(doc, dict):
        raise RecordCorrupt(f"a usage record is not a JSON object: {kv.key!r}")
    return doc


def _int(doc: dict[str, object], name: str, signed: bool = False) -> int:
    value = doc.get(name, 0)
    if not isinstance(value, int) or isinstance(value, bool) or (value < 0 and not signed):
        raise RecordCorrupt(f"a usage record has an invalid {name}: {value!r}")
    return value


def _shards(namespace: str) -> list[bytes]:
    return [keys.usage(namespace, k) for k in range(keys.USAGE_SHARDS)]


def _total(kvs: Sequence[KV | None]) -> tuple[int, int]:
    """Bytes and blobs over a namespace's counter shards (one shard may be negative: a blob
    is uncounted from whichever shard, not the one that counted it)."""
    docs = [_doc(kv) for kv in kvs]
    used = sum(_int(d, "bytes", signed=True) for d in docs)
    blobs = sum(_int(d, "blobs", signed=True) for d in docs)
    return max(0, used), max(0, blobs)


def _add(key: bytes, kv: KV | None, size: int, blobs: int) -> tuple[Guard, Put]:
    """The guard and the write that add `size` bytes and `blobs` blobs (either may be
    negative) to one shard."""
    doc = _doc(kv)
    new = {
        "bytes": _int(doc, "bytes", signed=True) + size,
        "blobs": _int(doc, "blobs", signed=True) + blobs,
    }
    return (key, _rev(kv)), Put(key, dumps(new))


async def _one_shard(store: MetaStore, ns: str) -> tuple[bytes, KV | None]:
    """A counter shard of the namespace, picked at random, as it is now."""
    key = keys.usage(ns, random.randrange(keys.USAGE_SHARDS))
    return key, await store._get(key)


def _rev(kv: KV | None) -> int:
    return kv.mod_revision if kv is not None else 0


def _counted(kv: KV | None) -> bool:
    return kv is not None and _doc(kv).get("counted") is True


def _quota(kv: KV | None) -> int | None:
    return PolicyRecord.decode(kv.value).quota if kv is not None else None


async def _backoff(attempt: int) -> None:
    await asyncio.sleep(random.uniform(0, min(0.05, 0.002 * (attempt + 1))))


def _conflict(what: str) -> StoreUnavailable:
    return StoreUnavailable(f"{what} kept colliding with concurrent pushes; retry")


@dataclass(frozen=True, slots=True)
class LinkRead:
    """What `link` reads first (the link, the per-blob record, the namespace's policy, the
    blob's tombstone, one counter shard), read ahead by a push (`read_link`): the same read
    tells it whether garbage collection is deleting the blob (`collecting`), so storing the
    bytes and linking them take one read of the store, not two."""

    pick: int
    kvs: tuple[KV | None, ...]

    @property
    def collecting(self) -> bool:
        return self.kvs[3] is not None


def _link_keys(repo: str, digest: str) -> tuple[bytes, bytes, bytes, bytes, list[bytes]]:
    ns = namespace_of(repo)
    lkey, bkey, pkey = keys.blob(repo, digest), keys.usage_blob(ns, digest), keys.policy(ns)
    return lkey, bkey, pkey, keys.blob_tombstone(digest), _shards(ns)


async def read_link(store: MetaStore, repo: str, digest: str) -> LinkRead:
    lkey, bkey, pkey, tkey, shards = _link_keys(repo, digest)
    pick = random.randrange(len(shards))  # read with the rest: one round trip, no quota
    return LinkRead(pick, tuple(await store._get_many([lkey, bkey, pkey, tkey, shards[pick]])))


#: `link(read=GUESS)`: start from `Counters.guess` instead of a read (an upload while no
#: collection runs: link_hints.collection_quiet); a wrong guess fails a guard, and the refused
#: transaction answers the reads the retry starts from, so it costs no extra round trip.
GUESS = LinkRead(-1, ())


async def _txn_else_get(
    store: MetaStore, guards: Sequence[Guard], ops: Sequence[Op], reads: Sequence[bytes]
) -> tuple[bool, list[KV | None]]:
    """The transaction; when refused, the values of `reads` (etcd: in the same request)."""
    fused = getattr(store, "txn_else_get", None)
    if fused is not None:
        held, found = await fused(guards, ops, reads)
        return bool(held), list(found)
    if await store._txn(guards, ops):
        return True, []
    return False, await store._get_many(reads)


async def link(
    store: MetaStore,
    repo: str,
    digest: str,
    size: int,
    enforce: bool,
    recount: bool = False,
    read: LinkRead | None = None,
) -> bool:
    """Link the blob to `repo`, stamped with the time (garbage collection's grace period
    runs from it), and count it in the namespace if it is new there. `enforce`: refuse
    (QuotaExceeded) a blob new to the namespace that does not fit its quota. `recount`: only
    count a link that exists uncounted (write nothing else, keep its stamp). False, and
    nothing written, while garbage collection deletes the blob (its tombstone stands).

    A blob new to the namespace adds to one counter shard, guarded by that shard alone when
    the namespace has no quota (one that no other link of this process is writing: see
    meta/link_hints.py), and by every shard when it has one (racing pushes cannot both take the
    last bytes). `read`: the first read, done ahead by the caller (`read_link`); every retry
    reads afresh."""
    ns = namespace_of(repo)
    lkey, bkey, pkey, tkey, shards = _link_keys(repo, digest)
    counters = counters_of(store)
    # Links of one blob in one namespace take turns in this process: each rewrites the
    # blob's record, so at once they collide, and under a steady stream of them (16 pushes
    # mounting the same base layers) one lost 200 times in a row and answered 503.
    async with counters.holding(bkey):
        for attempt in range(_RETRIES):
            if read is GUESS:
                read = LinkRead(*counters.guess(pkey, shards))
                if _quota(read.kvs[2]) is not None:
                    read = None  # with a quota, a refusal is decided on what is read, never guessed
            first, read = read if read is not None else await read_link(store, repo, digest), None
            counters.policy_seen(pkey, first.kvs[2])
            pick = first.pick
            counted: Put | None = None  # the counter shard's write, with a quota
            shard_of: bytes | None = None  # the counter shard to add to, without one
            link_kv, blob_kv, policy_kv, tomb_kv, shard_kv = first.kvs
            if tomb_kv is not None:
                return False
            if recount and (link_kv is None or _counted(link_kv)):
                return True
            stamp = _doc(link_kv).get("at") if recount else None
            if not isinstance(stamp, int | float):
                stamp = round(time.time(), 3)
            guards: list[Guard] = [(lkey, _rev(link_kv)), (tkey, 0)]
            ops: list[Op] = [Put(lkey, dumps({"size": size, "counted": True, "at": stamp}))]
            if not recount:
                ops.insert(0, Put(keys.repo(repo), _EMPTY))
            if _counted(link_kv):
                pass  # counted already: rewritten as it was
            elif blob_kv is not None:
                doc = _doc(blob_kv)
                guards.append((bkey, blob_kv.mod_revision))
                repos = _int(doc, "repos") + 1
                ops.append(Put(bkey, dumps({"size": _int(doc, "size"), "repos": repos})))
            else:
                quota = _quota(policy_kv)
                if quota is None:
                    pick = counters.choose(shards, pick, shard_kv)
                shard = shards[pick]
                if quota is not None:
                    shard_kvs = await store._get_many(shards)
                    used, _ = _total(shard_kvs)
                    if enforce and used + size > quota:
                        raise QuotaExceeded(
                            f"namespace {ns} is over its storage quota: {used} bytes used "
                            f"of {quota}, this blob needs {size} more; delete images (then run "
                            f"garbage collection) or raise the quota with 'moorage policy set "
                            f"{ns} --quota SIZE'",
                            detail={"namespace": ns, "used": used, "quota": quota, "needed": size},
                        )
                    guards += [(k, _rev(kv)) for k, kv in zip(shards, shard_kvs, strict=True)]
                    shard_kv = shard_kvs[pick]
                    counted = _add(shard, shard_kv, size, 1)[1]  # every shard is guarded already
                guards += [(bkey, 0), (pkey, _rev(policy_kv))]
                ops.append(Put(bkey, dumps({"size": size, "repos": 1})))
                if quota is None:  # added to below, under the shard's lock
                    shard_of = shard
            # a refused transaction answers what the next attempt starts from
            reads = [lkey, bkey, pkey, tkey, shards[pick]]
            if shard_of is not None:
                read_kv = shard_kv if shard_of == shards[first.pick] else None
                async with counters.holding(shard_of) as known:
                    guard, counted = _add(
                        shard_of, known if known is not None else read_kv, size, 1
                    )
                    guards.append(guard)
                    held, found = await _txn_else_get(store, guards, [*ops, counted], reads)
                    counters.wrote(counted, held)
            else:
                ops = [*ops, counted] if counted is not None else ops
                held, found = await _txn_else_get(store, guards, ops, reads)
            if held:
                return True
            read = LinkRead(pick, tuple(found)) if len(found) == len(reads) else None
            await _backoff(attempt)
        raise _conflict(f"linking blob {digest} to {repo}")


async def forget(store: MetaStore, links: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Stop counting blobs whose every link garbage collection has just deleted (digest,
    the repositories that linked it), while their tombstones keep new links out: each
    namespace's per-blob record goes and its total drops by the blob's size, one guarded
    transaction per namespace and batch."""
    per_ns: dict[str, list[str]] = {}
    for digest, repos in links:
        for ns in {namespace_of(r) for r in repos}:
            per_ns.setdefault(ns, []).append(digest)
    for ns, digests in per_ns.items():
        for i in range(0, len(digests), _FORGET_BATCH):
            await _forget(store, ns, digests[i : i + _FORGET_BATCH])


async def _forget(store: MetaStore, ns: str, digests: Sequence[str]) -> None:
    bkeys = [keys.usage_blob(ns, d) for d in digests]
    for attempt in range(_RETRIES):
        counted = [kv for kv in await store._get_many(bkeys) if kv is not None]
        if not counted:
            return
        size = sum(_int(_doc(kv), "size") for kv in counted)
        shard, shard_kv = await _one_shard(store, ns)
        guard, op = _add(shard, shard_kv, -size, -len(counted))
        guards: list[Guard] = [guard, *((kv.key, kv.mod_revision) for kv in counted)]
        ops: list[Op] = [*(Delete(kv.key) for kv in counted), op]
        if await store._txn(guards, ops):
            return
        await _backoff(attempt)
    raise _conflict(f"uncounting collected blobs in namespace {ns}")


async def unlink(store: MetaStore, repo: str, digest: str) -> bool:
    """Remove `repo`'s link to the blob (False when there is none); the namespace stops
    counting the blob with its last counted link."""
    ns = namespace_of(repo)
    lkey, bkey = keys.blob(repo, digest), keys.usage_blob(ns, digest)
    for attempt in range(_RETRIES):
        link_kv, blob_kv = await store._get_many([lkey, bkey])
        if link_kv is None:
            return False
        guards: list[Guard] = [(lkey, link_kv.mod_revision)]
        ops: list[Op] = [Delete(lkey)]
        if _counted(link_kv) and blob_kv is not None:
            doc = _doc(blob_kv)
            size, repos = _int(doc, "size"), _int(doc, "repos")
            guards.append((bkey, blob_kv.mod_revision))
            if repos > 1:
                ops.append(Put(bkey, dumps({"size": size, "repos": repos - 1})))
            else:
                shard, shard_kv = await _one_shard(store, ns)
                guard, op = _add(shard, shard_kv, -size, -1)
                guards.append(guard)
                ops += [Delete(bkey), op]
        if await store._txn(guards, ops):
            return True
        await _backoff(attempt)
    raise _conflict(f"unlinking blob {digest} from {repo}")


async def current(store: MetaStore, namespace: str) -> Usage:
    used, blobs = _total(await store._get_many(_shards(namespace)))
    return Usage(namespace, used, blobs)


async def recount(store: MetaStore, namespace: str) -> int:
    """Count every link of the namespace's repositories that is not counted yet (links
    restored from a backup, or made before usage was kept); how many it counted. Bounded
    reads, page by page; safe beside concurrent pushes (the same guarded transaction)."""
    counted = 0
    exact = keys.repo(namespace)
    below = keys.repo(namespace + "/")
    ranges = [(exact, exact + b"\x00"), (below, keys.prefix_end(below))]
    for start, end in ranges:
        async for repos in store._scan(start, end, keys_only=True):
            for repo_kv in repos:
                repo = repo_kv.key[len(keys.REPOS) :].decode()
                prefix = keys.blob(repo, "")
                async for links in store._scan(prefix, keys.prefix_end(prefix)):
                    for kv in links:
                        if _counted(kv):
                            continue
                        digest = kv.key[len(prefix) :].decode()
                        size = _int(_doc(kv), "size")
                        await link(store, repo, digest, size, enforce=False, recount=True)
                        counted += 1
    return counted
