"""What every request handler reaches: the registry, authentication, replica health."""

from __future__ import annotations

from dataclasses import dataclass, field

from moorage.auth.base import Authenticator
from moorage.cluster.heartbeat import Heartbeat
from moorage.config import ReplicaConfig
from moorage.meta.etcd import EtcdCluster
from moorage.registry import Registry


@dataclass
class ComponentHealth:
    healthy: bool = False
    error: str | None = "not checked yet"
    checked_at: float = 0.0


@dataclass
class AppState:
    config: ReplicaConfig
    registry: Registry
    auth: Authenticator
    etcd: ComponentHealth = field(default_factory=ComponentHealth)
    storage: ComponentHealth = field(default_factory=ComponentHealth)
    # The etcd cluster API and this replica's heartbeat (absent with an in-memory store).
    cluster: EtcdCluster | None = None
    heartbeat: Heartbeat | None = None
    role: str = "unknown"  # this replica's etcd role: leader, follower, learner
    read_only: bool = False  # quorum lost: serve pulls from the local copy, refuse writes
    fenced: str | None = None  # why this replica must not serve (an emergency repair left it)
