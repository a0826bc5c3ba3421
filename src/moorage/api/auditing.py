"""What handlers call once an operation is done, to write it to the audit log.

The actor is the request's principal (`request.state.principal`, which the /v2 dispatcher
sets once it has authorized the request), else the admin the admin API authenticated, else
the user of the request's Basic credentials (the request got this far, so they were
verified); the client is the peer's address.
"""

from __future__ import annotations

from starlette.requests import Request

from moorage.api.http import authorization
from moorage.api.state import AppState
from moorage.audit import OK, AuditEvent
from moorage.auth.basic import parse_basic


def client_of(request: Request) -> str | None:
    return request.client.host if request.client else None


def actor_of(request: Request) -> str:
    """Who the request acts for ("" when anonymous)."""
    principal = getattr(request.state, "principal", None)
    name = getattr(principal, "name", None)
    if isinstance(name, str):
        return name
    admin = getattr(request.state, "admin_name", None)
    if isinstance(admin, str):
        return admin
    parsed = parse_basic(authorization(request))
    return parsed[0] if parsed else ""


async def record(
    request: Request,
    st: AppState,
    action: str,
    target: str,
    detail: dict[str, str] | None = None,
    outcome: str = OK,
    actor: str | None = None,
) -> None:
    """Record that the request did `action` on `target` (never raises)."""
    detail = dict(detail or {})
    token = getattr(getattr(request.state, "principal", None), "token_id", None)
    if isinstance(token, str):
        detail.setdefault("token_id", token)
    await st.audit.record(
        AuditEvent(
            action,
            actor_of(request) if actor is None else actor,
            target,
            outcome,
            client_of(request),
            detail,
        )
    )
