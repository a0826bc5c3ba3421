"""Replay the journal (see moorage.storage.journal) into a store.

Entries are applied in (epoch, revision) order, only those newer than what the store
already has. Replay is idempotent: a manifest is recorded again (with its tags, its
referrer entry and links to the blobs it names), an untag or delete is applied again.

A change whose push was answered with an error can still be in the journal (the store
committed it, then the replica failed before answering): replay brings it back, as a
retried push would have.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moorage.errors import MoorageError
from moorage.meta.base import MetaStore
from moorage.meta.records import ManifestRecord
from moorage.oci.manifest import parse_manifest
from moorage.storage.filesystem import FilesystemStorage
from moorage.storage.journal import read_entries

log = logging.getLogger("moorage.journal")


@dataclass
class ReplayPlan:
    entries: list[dict[str, Any]]
    after: tuple[int, int]

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
        }


@dataclass
class ReplayResult:
    applied: int = 0
    unrecoverable: list[str] = field(default_factory=list)


def _describe(e: dict[str, Any]) -> str:
    if e["op"] == "manifest":
        tags = ",".join(e.get("tags") or []) or "(no tag)"
        return f"push {e['repo']}:{tags} -> {e['record']['digest']}"
    if e["op"] == "untag":
        return f"untag {e['repo']}:{e['tag']}"
    return f"delete {e['repo']}@{e['digest']}"


def plan_replay(storage_root: str | Path, cluster_id: str, after: tuple[int, int]) -> ReplayPlan:
    """The entries of `cluster_id` newer than (epoch, revision) `after`, in order."""
    entries = [
        e
        for e in read_entries(storage_root)
        if e.get("c") == cluster_id and (int(e["e"]), int(e["r"])) > after
    ]
    entries.sort(key=lambda e: (int(e["e"]), int(e["r"])))
    return ReplayPlan(entries, after)


async def apply(store: MetaStore, storage_root: str | Path, plan: ReplayPlan) -> ReplayResult:
    storage = FilesystemStorage(str(storage_root))
    result = ReplayResult()
    for e in plan.entries:
        try:
            if e["op"] == "manifest":
                record = ManifestRecord(**e["record"])
                body = await storage.read_bytes(record.digest)
                if body is None:
                    result.unrecoverable.append(
                        f"{_describe(e)}: the manifest bytes are not in blob storage"
                    )
                    continue
                manifest = parse_manifest(body, record.media_type)
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
