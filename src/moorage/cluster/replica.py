"""One replica's own state: its registry, its health, its etcd role, whether it is fenced.

The replica's background jobs (`moorage.cluster.jobs`) keep this state current; the HTTP
layer only reads it, and asks `fence_refusal` before it acknowledges a write. The process
that builds a `Replica` from its parts is `moorage.server`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from moorage.audit import AuditSink, LoggingSink
from moorage.auth.access import AdminOnlyAuthorizer, Authorizer
from moorage.auth.base import Authenticator
from moorage.cluster.fence import FENCE_UNCHECKED, FenceCheck, fence_watch
from moorage.cluster.heartbeat import Heartbeat
from moorage.cluster.webhooks import Webhooks
from moorage.config import ReplicaConfig
from moorage.meta.etcd import EtcdCluster
from moorage.registry import Registry

log = logging.getLogger("moorage.health")

READ_ONLY_MESSAGE = (
    "etcd: no quorum reachable (a majority of the cluster is down, or this replica is cut "
    "off from it); this replica serves pulls from its local copy and refuses pushes; "
    "'moorage status' says whether the majority is really lost and what to run"
)


@dataclass
class ComponentHealth:
    healthy: bool = False
    error: str | None = "not checked yet"
    checked_at: float = 0.0


@dataclass
class Replica:
    config: ReplicaConfig
    registry: Registry
    auth: Authenticator
    # Which actions a principal holds (issue #9) and where audit events go.
    authorizer: Authorizer = field(default_factory=AdminOnlyAuthorizer)
    audit: AuditSink = field(default_factory=LoggingSink)
    etcd: ComponentHealth = field(default_factory=ComponentHealth)
    storage: ComponentHealth = field(default_factory=ComponentHealth)
    # The etcd cluster API and this replica's heartbeat (absent with an in-memory store).
    cluster: EtcdCluster | None = None
    heartbeat: Heartbeat | None = None
    # Registry events for webhooks (cluster/webhooks.py; absent with an in-memory store).
    webhooks: Webhooks | None = None
    role: str = "unknown"  # this replica's etcd role: leader, follower, learner
    read_only: bool = False  # quorum lost: serve pulls from the local copy, refuse writes
    fenced: str | None = None  # why this replica must not serve (an emergency repair left it)
    fence_watch: FenceCheck = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.fence_watch = fence_watch(self.config)

    def fence_refusal(self) -> str | None:
        """Why this replica is fenced, checked now (one stat of the marker, see FenceWatch; on
        S3 the last read of it, see S3FenceWatch),
        or None. Raises OSError when the marker cannot be checked."""
        verdict = self.fence_watch.check()
        if verdict is not None and self.fenced is None:
            log.error("%s", verdict)
            self.fenced = verdict
        return self.fenced

    def write_refusal(self) -> str | None:
        """The fence check before a write is acknowledged: why it must not be, or None. A
        marker that cannot be checked refuses too (see moorage.cluster.fence)."""
        unchecked = self.fence_unchecked()
        return self.fenced or unchecked

    def fence_unchecked(self) -> str | None:
        """Why writes are refused because the fence marker cannot be checked now (on S3: its
        last read is too old, e.g. just after an outage of the store), or None."""
        try:
            self.fence_refusal()
        except OSError as exc:
            return f"{FENCE_UNCHECKED} in {self.config.storage}: {exc}"
        return None

    def problem(self) -> str | None:
        """Why this replica is not healthy, or None. A marker that cannot be checked is a
        problem too: the storage probe may answer while no write can be acknowledged."""
        unchecked = self.fence_unchecked()
        if self.fenced:
            return f"fenced: {self.fenced}"
        if self.read_only:
            return READ_ONLY_MESSAGE
        if not self.etcd.healthy:
            return f"etcd: {self.etcd.error}"
        if not self.storage.healthy:
            return f"storage: {self.storage.error}"
        return unchecked
