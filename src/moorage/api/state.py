"""What every request handler reaches: the replica it serves (`request.app.state.moorage`).

Its registry, authentication and health live in `moorage.cluster.replica`; the replica's
background jobs keep them current and the handlers only read them.
"""

from __future__ import annotations

from moorage.cluster.replica import ComponentHealth, Replica

AppState = Replica

__all__ = ["AppState", "ComponentHealth"]
