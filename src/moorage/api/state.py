"""What every request handler reaches: the registry, authentication, replica health."""

from __future__ import annotations

from dataclasses import dataclass, field

from moorage.auth.base import Authenticator
from moorage.config import ReplicaConfig
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
