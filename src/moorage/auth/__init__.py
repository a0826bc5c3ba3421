"""Who may do what. Today: HTTP Basic against stored users; token auth and RBAC slot in."""

from moorage.auth.base import Authenticator, Identity
from moorage.auth.basic import BasicAuthenticator

__all__ = ["Authenticator", "BasicAuthenticator", "Identity"]
