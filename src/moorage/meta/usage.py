"""Storage used per namespace: the counter a quota is checked against (issue #10 item 4).

A blob counts once per namespace, however many of the namespace's repositories link it.
Three keys change together, in the one transaction that links or unlinks a blob:

    /moorage/blobs/<repo>@<digest>       {"size", "counted": true}   the repository's link
    /moorage/usage-blobs/<ns>@<digest>   {"size", "repos"}           its counted links
    /moorage/usage/<ns>                  {"bytes", "blobs"}          the namespace's total

The transaction is guarded by the revisions those keys (and the namespace's policy) were
read at. Links of blobs new to a namespace therefore serialize on its counter, on every
replica: two pushes racing for the last bytes of a quota cannot both be admitted, and the
counter never goes over the quota (a collision costs a retry, not a wrong count).

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


def _int(doc: dict[str, object], name: str) -> int:
    value = doc.get(name, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise RecordCorrupt(f"a usage record has an invalid {name}: {value!r}")
    return value


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


async def link(
    store: MetaStore, repo: str, digest: str, size: int, enforce: bool, recount: bool = False
) -> bool:
    """Link the blob to `repo`, stamped with the time (garbage collection's grace period
    runs from it), and count it in the namespace if it is new there. `enforce`: refuse
    (QuotaExceeded) a blob new to the namespace that does not fit its quota. `recount`: only
    count a link that exists uncounted (write nothing else, keep its stamp). False, and
    nothing written, while garbage collection deletes the blob (its tombstone stands)."""
    ns = namespace_of(repo)
    lkey, bkey, ukey = keys.blob(repo, digest), keys.usage_blob(ns, digest), keys.usage(ns)
    pkey, tkey = keys.policy(ns), keys.blob_tombstone(digest)
    for attempt in range(_RETRIES):
        link_kv, blob_kv, usage_kv, policy_kv, tomb_kv = await store._get_many(
            [lkey, bkey, ukey, pkey, tkey]
        )
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
            doc = _doc(usage_kv)
            used, blobs = _int(doc, "bytes"), _int(doc, "blobs")
            quota = _quota(policy_kv)
            if enforce and quota is not None and used + size > quota:
                raise QuotaExceeded(
                    f"namespace {ns} is over its storage quota: {used} bytes used of {quota}, "
                    f"this blob needs {size} more; delete images (then run garbage collection) "
                    "or raise the quota with 'moorage policy set " + ns + " --quota SIZE'",
                    detail={"namespace": ns, "used": used, "quota": quota, "needed": size},
                )
            guards += [(bkey, 0), (ukey, _rev(usage_kv)), (pkey, _rev(policy_kv))]
            ops.append(Put(bkey, dumps({"size": size, "repos": 1})))
            ops.append(Put(ukey, dumps({"bytes": used + size, "blobs": blobs + 1})))
        if await store._txn(guards, ops):
            return True
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
    ukey = keys.usage(ns)
    bkeys = [keys.usage_blob(ns, d) for d in digests]
    for attempt in range(_RETRIES):
        usage_kv, *blob_kvs = await store._get_many([ukey, *bkeys])
        counted = [kv for kv in blob_kvs if kv is not None]
        if not counted:
            return
        total = _doc(usage_kv)
        used, blobs = _int(total, "bytes"), _int(total, "blobs")
        size = sum(_int(_doc(kv), "size") for kv in counted)
        guards: list[Guard] = [(ukey, _rev(usage_kv))]
        guards += [(kv.key, kv.mod_revision) for kv in counted]
        ops: list[Op] = [Delete(kv.key) for kv in counted]
        remaining = {"bytes": max(0, used - size), "blobs": max(0, blobs - len(counted))}
        ops.append(Put(ukey, dumps(remaining)))
        if await store._txn(guards, ops):
            return
        await _backoff(attempt)
    raise _conflict(f"uncounting collected blobs in namespace {ns}")


async def unlink(store: MetaStore, repo: str, digest: str) -> bool:
    """Remove `repo`'s link to the blob (False when there is none); the namespace stops
    counting the blob with its last counted link."""
    ns = namespace_of(repo)
    lkey, bkey, ukey = keys.blob(repo, digest), keys.usage_blob(ns, digest), keys.usage(ns)
    for attempt in range(_RETRIES):
        link_kv, blob_kv, usage_kv = await store._get_many([lkey, bkey, ukey])
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
                total = _doc(usage_kv)
                used, blobs = _int(total, "bytes"), _int(total, "blobs")
                guards.append((ukey, _rev(usage_kv)))
                ops.append(Delete(bkey))
                ops.append(
                    Put(ukey, dumps({"bytes": max(0, used - size), "blobs": max(0, blobs - 1)}))
                )
        if await store._txn(guards, ops):
            return True
        await _backoff(attempt)
    raise _conflict(f"unlinking blob {digest} from {repo}")


async def current(store: MetaStore, namespace: str) -> Usage:
    doc = _doc(await store._get(keys.usage(namespace)))
    return Usage(namespace, _int(doc, "bytes"), _int(doc, "blobs"))


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
