"""etcd's maintenance calls (the compaction and defragmentation job,
moorage.cluster.etcd_defrag): beside meta/etcd.py, allowed to speak to the etcd client
(pyproject's import contract). A member's database sizes come with `member_status`."""

from __future__ import annotations

import contextlib

from aetcd import rpc

from moorage.errors import StoreUnavailable
from moorage.meta.etcd import ClientTls, EtcdMetaStore


async def compact(store: EtcdMetaStore, revision: int) -> bool:
    """Drop every key version older than `revision` (cluster-wide, through raft) and wait
    until the members' databases have freed them. False when the store was already
    compacted at or past `revision`."""
    request = rpc.CompactionRequest(revision=revision, physical=True)
    try:
        await store._call("kvstub.Compact", request)
    except StoreUnavailable as exc:
        if "compacted" in str(exc):
            return False
        raise
    return True


async def defragment(client_url: str, patience: float, *, tls: ClientTls) -> None:
    """Defragment one member's database. The member answers no request until it is done
    (seconds per hundred MiB): never call this on more than one member at a time."""
    store = EtcdMetaStore([client_url], timeout=patience, tls=tls)
    try:
        await store._call("maintenancestub.Defragment", rpc.DefragmentRequest(), patience)
    finally:
        with contextlib.suppress(Exception):
            await store.close()
