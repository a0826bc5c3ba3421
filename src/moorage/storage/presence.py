"""Who uses a blob storage: each replica says so, and no cluster collects another's blobs.

A garbage collection deletes the blobs no record of its own cluster names. On a storage that
another cluster uses too (a restore or an install pointed at the wrong `--storage`), those
are that cluster's blobs: images it acknowledged would lose their layers. So every replica's
health loop writes `probe/present-<cluster id>@<replica id>` (a few bytes, not fsynced, at
most every MARK_SECONDS), and
- `moorage restore`, and `install`/`run` making a new cluster on a given `--storage`, refuse
  a storage another cluster marked within FRESH_SECONDS;
- a garbage collection (and its dry run) refuses to start while another cluster has.

A replica that stops cleanly removes its marker; one that was killed leaves it to age past
FRESH_SECONDS, after which it no longer counts. Restoring a cluster's backup onto its own
storage (scenario 3) is never refused for that cluster's markers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from moorage.storage.base import BlobStorage

PREFIX = "present-"
#: How often a replica renews its marker, and how recent another cluster's must be to count.
MARK_SECONDS = 30.0
FRESH_SECONDS = 180.0


@dataclass(frozen=True, slots=True)
class Occupant:
    cluster_id: str
    replica_id: str
    age: float  # seconds since its replica last marked the storage


def marker_name(cluster_id: str, replica_id: str) -> str:
    return f"{PREFIX}{cluster_id}@{replica_id}"


async def mark(storage: BlobStorage, cluster_id: str, replica_id: str) -> None:
    await storage.put_marker(marker_name(cluster_id, replica_id), b"%.0f\n" % time.time())


async def unmark(storage: BlobStorage, cluster_id: str, replica_id: str) -> None:
    """A replica that stops cleanly takes its marker away (one killed leaves it to age)."""
    await storage.remove_marker(marker_name(cluster_id, replica_id))


async def others(storage: BlobStorage, cluster_id: str) -> list[Occupant]:
    """The replicas of other clusters that marked `storage` within FRESH_SECONDS."""
    now = time.time()
    found = []
    for name, modified in await storage.markers(PREFIX):
        cluster, sep, replica = name[len(PREFIX) :].partition("@")
        if sep and cluster != cluster_id and now - modified < FRESH_SECONDS:
            found.append(Occupant(cluster, replica, max(0.0, now - modified)))
    return found


def occupied(spec: str, cluster_id: str, doing: str) -> str | None:
    """Outside an event loop (a command): why `doing` on the storage `spec` is refused, or
    None when no cluster but `cluster_id` marked it within FRESH_SECONDS."""
    import asyncio

    from moorage.storage import open_blob_storage

    async def read() -> list[Occupant]:
        blobs = open_blob_storage(spec)
        try:
            return await others(blobs, cluster_id)
        finally:
            await blobs.close()

    found = asyncio.run(read())
    return refusal(found, spec, doing) if found else None


def refusal(found: list[Occupant], where: str, doing: str) -> str:
    """The message of a refusal to `doing` on storage `where` that `found` use."""
    seen = ", ".join(
        f"cluster {o.cluster_id} (replica {o.replica_id}, {o.age:.0f} s ago)" for o in found[:3]
    )
    return (
        f"blob storage {where} is in use by another cluster: {seen}. Refusing to {doing}: "
        "its garbage collection would delete that cluster's blobs. Give --storage the "
        f"storage of this cluster (or an empty one); if that other cluster is gone for good, "
        f"wait {FRESH_SECONDS:.0f} s after its last replica stopped"
    )
