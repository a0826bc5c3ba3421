"""The replica's record and its lease-backed heartbeat in the store."""

from __future__ import annotations

import contextlib
import logging
import time

from moorage.config import ReplicaConfig
from moorage.errors import MoorageError
from moorage.meta.cluster_store import ClusterStore
from moorage.meta.records import HeartbeatRecord, ReplicaRecord

log = logging.getLogger("moorage.heartbeat")
HEARTBEAT_TTL = 10  # seconds: a replica that stops renewing disappears from heartbeats


def replica_record(config: ReplicaConfig) -> ReplicaRecord:
    return ReplicaRecord(
        replica_id=config.replica_id,
        url=config.url,
        etcd_peer_url=config.etcd_peer_url,
        etcd_client_url=config.etcd_advertise_client_url,
        data_dir=config.data_dir,
        storage=config.storage,
        joined_at=time.time(),
    )


class Heartbeat:
    def __init__(self, store: ClusterStore, config: ReplicaConfig) -> None:
        self.store = store
        self.config = config
        self._lease: int | None = None
        self._registered = False

    async def register(self) -> None:
        """Write this replica's record unless it is there already (idempotent)."""
        old = await self.store.get_replica(self.config.replica_id)
        if old is not None and (old.url, old.etcd_peer_url, old.data_dir) == (
            self.config.url,
            self.config.etcd_peer_url,
            self.config.data_dir,
        ):
            self._registered = True
            return
        await self.store.put_replica(replica_record(self.config))
        self._registered = True

    async def beat(self, healthy: bool, error: str | None) -> None:
        """Renew the heartbeat: a fresh lease each time, then drop the previous one."""
        if not self._registered:
            await self.register()
        record = HeartbeatRecord(
            self.config.replica_id, self.config.url, time.time(), healthy, error
        )
        lease = await self.store.grant_lease(HEARTBEAT_TTL)
        await self.store.put_heartbeat(record, lease)
        old, self._lease = self._lease, lease
        if old is not None:
            with contextlib.suppress(MoorageError):
                await self.store.revoke_lease(old)
