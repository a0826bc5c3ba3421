"""Who may do what: authenticators turn credentials into a `Principal` (auth.base,
auth.basic), the policy says what it may do (auth.access, auth.policy).

`moorage.auth.basic` (the authenticator) is not imported here: it defines Prometheus
metrics, and the supervisor imports `moorage.auth.passwords` before it sets up the
metrics directory its API workers share — importing prometheus_client then would make
every worker's metrics process-local, invisible to /metrics.
"""

from moorage.auth.access import Principal
from moorage.auth.base import Authenticator

__all__ = ["Authenticator", "Principal"]
