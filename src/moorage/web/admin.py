"""What the Administration pages share: who may see them, and the one way a page changes the
cluster.

Every change calls the very handler of `/api/v0` the CLI reaches (api/accounts.py,
api/access_tokens.py, api/gc.py, api/webhooks.py), with the form as its JSON body, so the
UI checks and refuses exactly what the API does. `admin_page` wraps a page: cluster admins
only (`admin=False`: any signed-in user, for their own tokens); a POST is refused on a
replica that cannot acknowledge writes (quorum lost, or fenced), is audited `via=ui` (the
`moorage.audit.VIA` context variable stamps every event recorded meanwhile), and the
handler's refusals become error pages with the API's status (400 bad input, 403, 404, 409,
423, 503).
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from moorage import audit
from moorage.api.account_input import Invalid
from moorage.api.cluster import UnknownMember
from moorage.api.state import AppState
from moorage.api.webhooks import TooManyWebhooks
from moorage.cluster.membership import Busy, Refused
from moorage.errors import (
    AccessTokenUnknown,
    Denied,
    MoorageError,
    TooManyAccessTokens,
)
from moorage.meta.accounts import AccountConflict, AccountMissing
from moorage.web import common
from moorage.web.common import PREFIX, SECURITY_HEADERS, Page, Viewer

ADMIN = f"{PREFIX}/admin"
PAGE = 50  # rows of a listing page
ADMIN_ONLY = (
    "the Administration pages are for cluster admins; ask one, or use 'moorage token' for "
    "your own tokens"
)
READ_ONLY = (
    "this replica cannot accept changes now ({why}); nothing was changed. Make the change on "
    "a healthy replica, or once 'moorage status' says healthy"
)


def status_of(exc: Exception) -> int | None:
    """The HTTP status the API answers for a handler's exception (None: not a refusal)."""
    if isinstance(exc, Denied):
        return 403
    if isinstance(exc, AccountMissing | AccessTokenUnknown | UnknownMember):
        return 404
    if isinstance(exc, AccountConflict | TooManyAccessTokens | TooManyWebhooks | Refused):
        return 409
    if isinstance(exc, Busy):
        return 423
    if isinstance(exc, Invalid | ValueError | KeyError | TypeError):
        return 400
    if isinstance(exc, MoorageError):
        return 503
    return None


def _message(exc: Exception) -> str:
    if isinstance(exc, AccountMissing | KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc)


def form(request: Request) -> dict[str, str]:
    """The POSTed form (checked against the session's CSRF token by `common.page`)."""
    fields: dict[str, str] = getattr(request.state, "form", {})
    return fields


def field(request: Request, name: str, limit: int = 300) -> str:
    """A form field (a POST) or query parameter (a GET), trimmed, at most `limit` long."""
    raw = form(request).get(name) if request.method == "POST" else None
    if raw is None:
        raw = request.query_params.get(name, "")
    return raw.strip()[:limit]


def done(path: str, **params: str) -> Response:
    """After a change: back to a page, which says what was done (303, so a reload does not
    send the form again)."""
    query = urllib.parse.urlencode(params)
    return RedirectResponse(f"{path}?{query}" if query else path, 303, SECURITY_HEADERS)


def admin_page(handler: Page, admin: bool = True) -> Page:
    async def wrapped(request: Request, st: AppState, viewer: Viewer) -> Response:
        if admin and not viewer.admin:
            return common.refusal(request, 403, ADMIN_ONLY, viewer)
        if request.method == "POST":
            why = "quorum lost: read-only" if st.read_only else st.write_refusal()
            if why is not None:
                return common.refusal(request, 503, READ_ONLY.format(why=why), viewer)
        token = audit.VIA.set("ui")
        try:
            return await handler(request, st, viewer)
        except Exception as exc:  # a refusal of the handler the API shares
            status = status_of(exc)
            if status is None:
                raise
            return common.refusal(request, status, _message(exc), viewer)
        finally:
            audit.VIA.reset(token)

    return wrapped


#: What a page says after a change (`done` names it, `target` what it acted on).
NOTICES = {
    "user.add": "User {} created.",
    "user.disable": "User {} disabled: it can no longer sign in, pull or push; its sessions ended.",
    "user.enable": "User {} enabled.",
    "user.delete": "User {} deleted.",
    "user.passwd": "The password of {} is changed; its sessions have ended.",
    "org.add": "Organization {} created.",
    "org.delete": "Organization {} deleted.",
    "team.add": "Team {} created.",
    "team.delete": "Team {} deleted.",
    "team.add-member": "Added to team: {}.",
    "team.remove-member": "Removed from team: {}.",
    "grant": "Granted {}.",
    "revoke": "Revoked the grant of {}.",
    "public": "{} is public: anyone may pull it.",
    "private": "{} is private again.",
    "token.revoke": "Token {} revoked.",
    "gc.start": "Garbage collection {} started.",
    "webhook.add": "Webhook {} added.",
    "webhook.remove": "Webhook {} removed.",
    "webhook.test": "Test event sent to webhook {}.",
}


#: The Administration menu's sections, by path prefix (the current one is marked).
SECTIONS = (
    "/admin/users",
    "/admin/org",
    "/admin/grants",
    "/tokens",
    "/admin/storage",
    "/admin/backups",
    "/admin/webhooks",
)


def notice(request: Request) -> str | None:
    template = NOTICES.get(request.query_params.get("done", ""))
    target = request.query_params.get("target", "")[:200]
    return template.format(target) if template else None


def render(
    request: Request, template: str, viewer: Viewer, page: str = "admin", **ctx: Any
) -> Response:
    path = request.url.path.removeprefix(PREFIX)
    section = next((s for s in SECTIONS if path.startswith(s)), None)
    return common.render(
        request, template, viewer=viewer, page=page, notice=notice(request), section=section, **ctx
    )


def confirm(
    request: Request,
    viewer: Viewer,
    *,
    title: str,
    explain: str,
    action: str,
    fields: dict[str, str],
    button: str,
    cancel: str,
    page: str = "admin",
) -> Response:
    """The confirmation step of a change that cannot be undone: a page whose one button
    POSTs the change."""
    return common.render(
        request,
        "admin/confirm.html",
        viewer=viewer,
        page=page,
        title=title,
        explain=explain,
        action=action,
        fields=fields,
        button=button,
        cancel=cancel,
    )
