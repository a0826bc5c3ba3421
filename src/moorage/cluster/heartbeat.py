"""The replica's record and its lease-backed heartbeat in the store."""

from __future__ import annotations

import contextlib
import logging
import time

from moorage.config import ReplicaConfig
from moorage.errors import MoorageError
from moorage.meta import keys
from moorage.meta.base import Put
from moorage.meta.etcd import EtcdCluster
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
    def __init__(self, store: EtcdCluster, config: ReplicaConfig) -> None:
        self.store = store
        self.config = config
        self._lease: int | None = None
        self._registered = False

    async def register(self) -> None:
        """Write this replica's record unless it is there already (idempotent)."""
        key = keys.replica(self.config.replica_id)
        current = await self.store.get_raw(key)
        if current is not None:
            old = ReplicaRecord.decode(current)
            if (old.url, old.etcd_peer_url, old.data_dir) == (
                self.config.url,
                self.config.etcd_peer_url,
                self.config.data_dir,
            ):
                self._registered = True
                return
        await self.store._txn([], [Put(key, replica_record(self.config).encode())])
        self._registered = True

    async def beat(self, healthy: bool, error: str | None) -> None:
        """Renew the heartbeat: a fresh lease each time, then drop the previous one."""
        if not self._registered:
            await self.register()
        record = HeartbeatRecord(
            self.config.replica_id, self.config.url, time.time(), healthy, error
        )
        lease = await self.store.grant_lease(HEARTBEAT_TTL)
        await self.store.put_with_lease(
            keys.heartbeat(self.config.replica_id), record.encode(), lease
        )
        old, self._lease = self._lease, lease
        if old is not None:
            with contextlib.suppress(MoorageError):
                await self.store.revoke_lease(old)
