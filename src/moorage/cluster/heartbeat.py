"""The replica's record and its lease-backed heartbeat in the store.

The heartbeat is one lease kept alive (a keep-alive is answered by the etcd leader from
memory: no raft write) and a record under it rewritten only when the replica's health
changes or its time `at` would age past `REWRITE_EVERY`: `moorage status` calls a
heartbeat older than `cluster.facts.HEARTBEAT_FRESH` (10 s) stale. A replica that stops
renewing loses the record with the lease within `HEARTBEAT_TTL` seconds."""

from __future__ import annotations

import logging
import time

from moorage.config import ReplicaConfig
from moorage.meta.cluster_store import ClusterStore
from moorage.meta.records import HeartbeatRecord, ReplicaRecord

log = logging.getLogger("moorage.heartbeat")
HEARTBEAT_TTL = 10  # seconds: a replica that stops renewing disappears from heartbeats
REWRITE_EVERY = 4.0  # seconds: the record's `at` is at most this old while it renews


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
        self._written: tuple[bool, str | None] | None = None  # (healthy, error) last written
        self._written_at = 0.0  # monotonic

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
        """Renew the heartbeat: keep its lease alive (a fresh one if it ended) and rewrite
        the record when the health changed, the lease is new or the record is
        `REWRITE_EVERY` seconds old."""
        if not self._registered:
            await self.register()
        if self._lease is not None and not await self.store.keep_alive(self._lease):
            self._lease = None  # expired (no quorum for HEARTBEAT_TTL) or revoked: gone
        if self._lease is None:
            self._lease = await self.store.grant_lease(HEARTBEAT_TTL)
            self._written = None  # the record went with the old lease
        now = time.monotonic()
        if self._written != (healthy, error) or now - self._written_at >= REWRITE_EVERY:
            record = HeartbeatRecord(
                self.config.replica_id, self.config.url, time.time(), healthy, error
            )
            await self.store.put_heartbeat(record, self._lease)
            self._written, self._written_at = (healthy, error), now
