"""Replay the journal (see moorage.storage.journal) into a store.

Entries are applied in (epoch, revision) order, only those newer than what the store
already has. Replay is idempotent: a manifest is recorded again (with its tags, its
referrer entry and links to the blobs it names), an untag or delete is applied again, and
an account change (moorage.meta.account_journal) writes and deletes again the records its
transaction left: users, organizations, teams, grants, public repositories, access tokens.

A change whose push was answered with an error can still be in the journal (the store
committed it, then the replica failed before answering): replay brings it back, as a
retried push would have.

Journal files lie in blob storage, so whoever can write there can forge an entry: every
entry is validated (repository name, tags, digests, the manifest record, the referrer)
before anything of it is used; an invalid one is refused and reported, never applied.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moorage.errors import MoorageError, RecordCorrupt
from moorage.meta import account_journal
from moorage.meta.base import MetaStore, op_batches
from moorage.meta.records import ManifestRecord, check_digest, decode_referrer
from moorage.oci.manifest import MAX_MANIFEST_BYTES, parse_manifest
from moorage.oci.names import is_valid_tag, validate_name
from moorage.storage import BlobStorage, open_blob_storage
from moorage.storage.journal_trim import trimmed_to
from moorage.storage.s3journal import journal_entries

log = logging.getLogger("moorage.journal")


@dataclass
class ReplayPlan:
    entries: list[dict[str, Any]]
    after: tuple[int, int]
    rejected: list[str] = field(default_factory=list)  # invalid entries, never applied
    trimmed: str | None = None  # what the journal no longer holds past `after`, if anything

    def summary(self) -> dict[str, Any]:
        ops: dict[str, int] = {}
        for e in self.entries:
            ops[e["op"]] = ops.get(e["op"], 0) + 1
        return {
            "after_epoch": self.after[0],
            "after_revision": self.after[1],
            "entries": len(self.entries),
            "by_op": ops,
            "changes": [_describe(e) for e in self.entries[:50]],
            "rejected": self.rejected[:50],
            "rejected_count": len(self.rejected),
            "trimmed": self.trimmed,
        }


@dataclass
class ReplayResult:
    applied: int = 0
    unrecoverable: list[str] = field(default_factory=list)


def _describe(e: dict[str, Any]) -> str:
    if e["op"] == account_journal.OP:
        return account_journal.describe(e)
    if e["op"] == "manifest":
        tags = ",".join(e.get("tags") or []) or "(no tag)"
        return f"push {e['repo']}:{tags} -> {e['record']['digest']}"
    if e["op"] == "untag":
        return f"untag {e['repo']}:{e['tag']}"
    return f"delete {e['repo']}@{e['digest']}"


def _show(value: object) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 200 else text[:197] + "..."


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_entry(e: dict[str, Any]) -> None:
    """RecordCorrupt unless the entry is one the registry could have written."""
    if not _int(e.get("e")) or not _int(e.get("r")):
        raise RecordCorrupt("epoch and revision must be non-negative integers")
    if e.get("op") == account_journal.OP:
        account_journal.parse_change(e)
        return
    repo = e.get("repo")
    if not isinstance(repo, str):
        raise RecordCorrupt("no repository")
    validate_name(repo)
    op = e.get("op")
    if op == "manifest":
        raw = e.get("record")
        if not isinstance(raw, dict):
            raise RecordCorrupt("no manifest record")
        try:
            record = ManifestRecord(**raw)
        except TypeError:
            raise RecordCorrupt("a manifest record with unexpected fields") from None
        record.validate()
        tags = e.get("tags") or []
        if not isinstance(tags, list) or not all(
            isinstance(t, str) and is_valid_tag(t) for t in tags
        ):
            raise RecordCorrupt(f"invalid tags {_show(tags)}")
        referrer = e.get("referrer")
        if (
            referrer is not None
            and decode_referrer(json.dumps(referrer)).get("digest") != record.digest
        ):
            raise RecordCorrupt("the referrer names another digest")
    elif op == "untag":
        tag = e.get("tag")
        if not isinstance(tag, str) or not is_valid_tag(tag):
            raise RecordCorrupt(f"invalid tag {_show(tag)}")
    elif op == "delete":
        check_digest(e.get("digest"), "journal")
    else:
        raise RecordCorrupt(f"unknown operation {_show(op)}")


def plan_replay(storage_root: str | Path, cluster_id: str, after: tuple[int, int]) -> ReplayPlan:
    """The entries of `cluster_id` newer than (epoch, revision) `after`, in order; invalid
    entries of that cluster are set aside in `rejected`. From synchronous code: on S3 it runs
    `read_plan` in an event loop of its own."""
    return asyncio.run(read_plan(storage_root, cluster_id, after))


async def read_plan(storage: str | Path, cluster_id: str, after: tuple[int, int]) -> ReplayPlan:
    """`plan_replay` from a coroutine: the journal of a directory (read in a thread) or of an
    S3 location (listed page by page). Only the entries to replay are kept in memory."""
    planner = _Planner(cluster_id, after)
    async for e in journal_entries(str(storage)):
        planner.add(e)
    plan = planner.plan()
    top = await trimmed_to(str(storage), cluster_id)
    if top is not None and top > after:
        plan.trimmed = (
            f"the journal was trimmed up to epoch {top[0]} revision {top[1]}: changes after "
            f"epoch {after[0]} revision {after[1]} up to that point are no longer in it (the "
            "newest backup, or a more up-to-date replica, holds them)"
        )
    return plan


#: Invalid entries described one by one (the others are counted).
_MAX_REJECTED = 1000


class _Planner:
    """The entries of one cluster newer than `after`, taken one at a time (the others are
    dropped as they are read); invalid ones of that cluster are set aside."""

    def __init__(self, cluster_id: str, after: tuple[int, int]) -> None:
        self.cluster_id = cluster_id
        self.after = after
        self.entries: list[dict[str, Any]] = []
        self.rejected: list[str] = []
        self.more_rejected = 0

    def add(self, e: dict[str, Any]) -> None:
        if e.get("c") != self.cluster_id:
            return
        if _int(e.get("e")) and _int(e.get("r")) and (e["e"], e["r"]) <= self.after:
            return  # already in the store: not even validated
        try:
            check_entry(e)
        except MoorageError as exc:
            if len(self.rejected) < _MAX_REJECTED:
                self.rejected.append(f"refused invalid journal entry {_show(e)}: {exc}")
            else:
                self.more_rejected += 1
            return
        if (e["e"], e["r"]) > self.after:
            self.entries.append(e)

    def plan(self) -> ReplayPlan:
        self.entries.sort(key=lambda e: (int(e["e"]), int(e["r"])))
        if self.more_rejected:
            self.rejected.append(f"refused {self.more_rejected} more invalid journal entries")
        for line in self.rejected:
            log.warning("%s", line)
        return ReplayPlan(self.entries, self.after, self.rejected)


def plan_of(found: Iterable[dict[str, Any]], cluster_id: str, after: tuple[int, int]) -> ReplayPlan:
    planner = _Planner(cluster_id, after)
    for e in found:
        planner.add(e)
    return planner.plan()


async def _journal_key(store: MetaStore, plan: ReplayPlan) -> bytes | None:
    """The key that authenticates account changes: the one in the store replayed into (the
    survivor's, or the backup's once loaded)."""
    if not any(e["op"] == account_journal.OP for e in plan.entries):
        return None
    try:
        return await account_journal.journal_key(store)
    except RecordCorrupt as exc:
        log.warning("the journal key is unusable, no account change is replayed: %s", exc)
        return None


async def apply(store: MetaStore, storage_root: str | Path, plan: ReplayPlan) -> ReplayResult:
    """Apply `plan` to `store`; manifest bytes are read from the blob storage
    `storage_root` names (a directory or an s3:// location)."""
    opened: list[BlobStorage] = []

    def blob_storage() -> BlobStorage:
        if not opened:  # only when a manifest is replayed
            opened.append(open_blob_storage(str(storage_root)))
        return opened[0]

    result = ReplayResult(unrecoverable=list(plan.rejected))
    if plan.trimmed is not None:
        result.unrecoverable.append(plan.trimmed)
    key = await _journal_key(store, plan)
    for e in plan.entries:
        try:
            if e["op"] == account_journal.OP:
                if not account_journal.authentic(key, e):
                    result.unrecoverable.append(
                        f"{_describe(e)}: refused: its MAC does not match this cluster's "
                        "journal key (a forged entry, or the key is missing)"
                    )
                    continue
                ops = account_journal.ops_of(*account_journal.parse_change(e))
                for batch in op_batches(ops):  # one batch: it was one transaction
                    await store._txn([], batch)
            elif e["op"] == "manifest":
                record = ManifestRecord(**e["record"])
                record.validate()
                storage = blob_storage()
                size = await storage.stat(record.digest)
                if size is not None and size > MAX_MANIFEST_BYTES:
                    result.unrecoverable.append(
                        f"{_describe(e)}: {record.digest} in blob storage is no manifest "
                        f"({size} bytes)"
                    )
                    continue
                body = await storage.read_bytes(record.digest)
                if body is None:
                    result.unrecoverable.append(
                        f"{_describe(e)}: the manifest bytes are not in blob storage"
                    )
                    continue
                manifest = parse_manifest(body, record.media_type)
                if record.size != len(body):
                    result.unrecoverable.append(
                        f"{_describe(e)}: the entry says {record.size} bytes, the manifest in "
                        f"blob storage is {len(body)}"
                    )
                    continue
                blobs = [d for d in (manifest.config, *manifest.layers) if d is not None]
                for desc in blobs:
                    size = await storage.stat(desc.digest)
                    if size is not None:
                        await store.link_blob(e["repo"], desc.digest, size)
                await store.put_manifest(
                    e["repo"], record, tags=e.get("tags") or [], referrer=e.get("referrer")
                )
            elif e["op"] == "untag":
                await store.delete_tag(e["repo"], e["tag"])
            elif e["op"] == "delete":
                await store.delete_manifest(e["repo"], e["digest"])
            result.applied += 1
        except (MoorageError, KeyError, TypeError, ValueError) as exc:
            result.unrecoverable.append(f"{_describe(e)}: {exc}")
    return result
