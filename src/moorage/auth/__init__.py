"""Who may do what. Today: HTTP Basic against stored users; token auth and RBAC slot in.

`moorage.auth.basic` (the authenticator) is not imported here: it defines Prometheus
metrics, and the supervisor imports `moorage.auth.passwords` before it sets up the
metrics directory its API workers share — importing prometheus_client then would make
every worker's metrics process-local, invisible to /metrics.
"""

from moorage.auth.base import Authenticator, Identity

__all__ = ["Authenticator", "Identity"]
