"""Repository policies in the store (issue #10 items 2-5): one `PolicyRecord` per namespace
or repository at `/moorage/policies/<target>` (meta/keys.py; records in meta/policy_records.py).

Reads are bounded: one target's record, the two that apply to a repository (its namespace's
and its own, read at once), or one page of every record.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from moorage.errors import QuotaExceeded, RecordCorrupt, StoreUnavailable, TagImmutable
from moorage.meta import keys, usage
from moorage.meta.base import STORE_PAGE, MetaStore
from moorage.meta.ops import KV, Delete, Guard, Put
from moorage.meta.policy_records import Applicable, PolicyRecord, namespace_of
from moorage.meta.records import TagRecord

#: Repositories whose policies are kept as last read (Policies._known).
_KNOWN = 4096
#: Attempts of a policy change that keeps meeting concurrent ones.
_RETRIES = 20


def _decode(kv: KV | None) -> PolicyRecord | None:
    return PolicyRecord.decode(kv.value) if kv is not None else None


class Policies:
    def __init__(self, meta: MetaStore) -> None:
        self.meta = meta
        # The policies last read per repository. Only a first attempt uses them: every write
        # they shape is guarded by the revisions they carry, so a stale entry costs one failed
        # transaction, whose retry reads afresh (and refreshes the entry).
        self._known: OrderedDict[str, Applicable] = OrderedDict()

    async def get(self, target: str) -> PolicyRecord | None:
        return _decode(await self.meta._get(keys.policy(target)))

    async def applicable(self, repo: str, fresh: bool = True) -> Applicable:
        """The namespace's and the repository's policies (two reads at once); `fresh=False`:
        as last read here, if they were (see __init__: only for guarded writes)."""
        if not fresh and (known := self._known.get(repo)) is not None:
            self._known.move_to_end(repo)
            return known
        ns = namespace_of(repo)
        names = [ns] if ns == repo else [ns, repo]
        kvs = await self.meta._get_many([keys.policy(n) for n in names])
        guards = tuple(
            (keys.policy(n), kv.mod_revision if kv else 0) for n, kv in zip(names, kvs, strict=True)
        )
        records = [_decode(kv) for kv in kvs]
        found = Applicable(records[0], records[1] if len(records) > 1 else None, guards)
        self._known[repo] = found
        self._known.move_to_end(repo)
        if len(self._known) > _KNOWN:
            self._known.popitem(last=False)
        return found

    async def change(
        self, target: str, change: Callable[[PolicyRecord | None], PolicyRecord | None]
    ) -> PolicyRecord | None:
        """Read `target`'s record, apply `change` (None: no record, nothing written) and write
        the result back at the revision read: when another change came first, read and apply
        again, so none is lost. The record written (an empty one deletes it)."""
        key = keys.policy(target)
        for _ in range(_RETRIES):
            kv = await self.meta._get(key)
            record = change(_decode(kv))
            if record is None:
                return None
            op = Delete(key) if record.empty else Put(key, record.encode())
            # journaled like an account change: a repair or restore replays it
            if await self.meta._account_txn([(key, kv.mod_revision if kv else 0)], [op]):
                return record
        raise StoreUnavailable(f"the policy of {target} kept changing meanwhile: try again")

    async def delete(self, target: str) -> bool:
        key = keys.policy(target)
        kv = await self.meta._get(key)
        if kv is None:
            return False
        return await self.meta._account_txn([(key, kv.mod_revision)], [Delete(key)])

    async def page(self, n: int | None, last: str | None) -> tuple[list[PolicyRecord], bool]:
        """Up to `n` (at most STORE_PAGE) records after the target `last`, in target order."""
        start = keys.POLICIES + last.encode() + b"\x00" if last else keys.POLICIES
        limit = min(n or STORE_PAGE, STORE_PAGE)
        kvs, more = await self.meta._range(start, keys.prefix_end(keys.POLICIES), limit=limit)
        return [PolicyRecord.decode(kv.value) for kv in kvs], more

    async def every(self) -> list[PolicyRecord]:
        """Every record, read page by page (the retention job and quota recounts)."""
        out: list[PolicyRecord] = []
        end = keys.prefix_end(keys.POLICIES)
        async for page in self.meta._scan(keys.POLICIES, end):
            for kv in page:
                try:
                    out.append(PolicyRecord.decode(kv.value))
                except RecordCorrupt:
                    continue
        return out

    # -- enforcement: what a push or a delete must be guarded by ---------------------------
    async def push_guards(
        self, repo: str, digest: str, tags: Sequence[str], size: int, fresh: bool = True
    ) -> list[Guard]:
        """Guards for the transaction that records manifest `digest` (`size` bytes) in `repo`
        and points `tags` at it: the policies' revisions and, per immutable tag, its
        revision (or its absence) as read here, so a replica that moves it meanwhile makes
        the transaction fail and the check run again. TagImmutable when a tag would move;
        QuotaExceeded when the namespace has no room for the manifest's bytes. `fresh=False`
        starts from the policies as last read; a refusal is always decided on a fresh read
        (a stale entry may hold a rule since removed)."""
        if fresh:
            return await self._push_guards(await self.applicable(repo), repo, digest, tags, size)
        try:
            known = await self.applicable(repo, fresh=False)
            return await self._push_guards(known, repo, digest, tags, size)
        except (TagImmutable, QuotaExceeded):
            return await self._push_guards(await self.applicable(repo), repo, digest, tags, size)

    async def _push_guards(
        self, applicable: Applicable, repo: str, digest: str, tags: Sequence[str], size: int
    ) -> list[Guard]:
        guards: list[Guard] = list(applicable.guards)
        ruled = [(t, rule) for t in tags if (rule := applicable.immutable_rule(t)) is not None]
        if ruled:
            kvs = await self.meta._get_many([keys.tag(repo, t) for t, _ in ruled])
            for (tag, (target, pattern)), kv in zip(ruled, kvs, strict=True):
                if kv is None:
                    guards.append((keys.tag(repo, tag), 0))
                    continue
                current = TagRecord.decode(kv.value).digest
                if current != digest:
                    raise TagImmutable(
                        f"tag {repo}:{tag} is immutable (rule {pattern!r} on {target}): it "
                        f"points at {current} and cannot be moved to {digest}; push under a "
                        f"new tag, or drop the rule with 'moorage policy unset {target} "
                        "--immutable-tags'",
                        detail={"tag": tag, "rule": pattern, "target": target},
                    )
                guards.append((kv.key, kv.mod_revision))
        ns = applicable.namespace
        if ns is not None and ns.quota is not None:
            used = await usage.current(self.meta, ns.target)
            if used.bytes + size > ns.quota:
                raise QuotaExceeded(
                    f"namespace {ns.target} is over its storage quota: {used.bytes} bytes used "
                    f"of {ns.quota}, this manifest needs {size} more; delete images (then run "
                    f"garbage collection) or raise it with 'moorage policy set {ns.target} "
                    "--quota SIZE'",
                    detail={
                        "namespace": ns.target,
                        "used": used.bytes,
                        "quota": ns.quota,
                        "needed": size,
                    },
                )
        return guards

    async def delete_guards(
        self, repo: str, what: str, tags: Sequence[str], fresh: bool = True
    ) -> list[Guard]:
        """Guards for deleting `what` (a tag, or a manifest that `tags` point at) in `repo`;
        TagImmutable when one of `tags` is immutable."""
        applicable = await self.applicable(repo, fresh)
        for tag in tags:
            rule = applicable.immutable_rule(tag)
            if rule is not None:
                target, pattern = rule
                subject = f"tag {repo}:{tag}" if what == tag else f"{what} (tagged {tag})"
                raise TagImmutable(
                    f"{subject} cannot be deleted: tag {tag} is immutable (rule {pattern!r} on "
                    f"{target}); drop the rule first with 'moorage policy unset {target} "
                    "--immutable-tags'",
                    detail={"tag": tag, "rule": pattern, "target": target},
                )
        return list(applicable.guards)

    # -- what retention reads -----------------------------------------------------------
    async def repositories(self, target: str) -> list[str]:
        """The repositories a policy target covers: the repository itself, or every
        repository of the namespace (bounded reads, page by page)."""
        if "/" in target:
            return [target] if await self.meta.repo_exists(target) else []
        out: list[str] = []
        exact, below = keys.repo(target), keys.repo(target + "/")
        for start, end in ((exact, exact + b"\x00"), (below, keys.prefix_end(below))):
            async for page in self.meta._scan(start, end, keys_only=True):
                out += [kv.key[len(keys.REPOS) :].decode() for kv in page]
        return out

    async def tags(self, repo: str) -> list[tuple[str, TagRecord, int]]:
        """Every tag of `repo` with its record and revision (page by page)."""
        prefix = keys.tags_prefix(repo)
        out: list[tuple[str, TagRecord, int]] = []
        async for page in self.meta._scan(prefix, keys.prefix_end(prefix)):
            for kv in page:
                name = kv.key[len(prefix) :].decode()
                out.append((name, TagRecord.decode(kv.value), kv.mod_revision))
        return out
