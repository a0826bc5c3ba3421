"""etcd's maintenance calls, beside meta/etcd.py and like it allowed to speak to the etcd
client (pyproject's import contract): a member's status (`member_status`; `MemberProbe`, the
health loop's kept channel) and the compaction and defragmentation of
moorage.cluster.etcd_defrag."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aetcd import rpc

from moorage.errors import StoreUnavailable
from moorage.meta.etcd import ClientTls, EtcdMetaStore, MemberStatus


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


async def member_status(client_url: str, patience: float = 2.0, *, tls: ClientTls) -> MemberStatus:
    """Ask one member about itself (works on a member without quorum, and on learners)."""
    store = EtcdMetaStore([client_url], timeout=patience, tls=tls)
    try:
        resp = await asyncio.wait_for(
            store._call("maintenancestub.Status", rpc.StatusRequest()), patience
        )
    except TimeoutError:
        raise StoreUnavailable(f"etcd member at {client_url} did not answer") from None
    finally:
        with contextlib.suppress(Exception):
            await store.close()
    return _member_status(resp)


class MemberProbe:
    """`member_status` of one member, asked again and again (the health loop, every round)
    on one kept channel: a channel and TLS handshake per call cost both sides more than the
    call. The channel is dropped when a call fails (gRPC would back off reconnecting to a
    restarted member for ever longer) or `tls` changed (a renewed certificate)."""

    def __init__(self, client_url: str) -> None:
        self.client_url = client_url
        self._store: EtcdMetaStore | None = None

    async def status(self, patience: float, tls: ClientTls) -> MemberStatus:
        if self._store is not None and self._store.tls != tls:
            await self.close()
        if self._store is None:
            self._store = EtcdMetaStore([self.client_url], timeout=patience, tls=tls)
        try:
            resp = await asyncio.wait_for(
                self._store._call("maintenancestub.Status", rpc.StatusRequest()), patience
            )
        except TimeoutError:
            await self.close()
            raise StoreUnavailable(f"etcd member at {self.client_url} did not answer") from None
        except BaseException:
            await self.close()
            raise
        return _member_status(resp)

    async def close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            with contextlib.suppress(Exception):
                await store.close()


def _member_status(resp: Any) -> MemberStatus:
    return MemberStatus(
        member_id=int(resp.header.member_id),
        leader=int(resp.leader),
        raft_index=int(resp.raftIndex),
        raft_term=int(resp.raftTerm),
        is_learner=bool(resp.isLearner),
        revision=int(resp.header.revision),
        errors=tuple(resp.errors),
        db_size=int(resp.dbSize),
        db_size_in_use=int(resp.dbSizeInUse),
    )
