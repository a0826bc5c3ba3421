"""Signing in and out of the web UI with the registry's own accounts.

The password is checked by the replica's authenticator, exactly as a Basic login on `/v2/`
is: failed logins count against the same per-account and per-address limits and go to the
audit log. The sign-in form has its own CSRF token (a short-lived cookie of its own that the
form repeats), so no other site can sign a browser in under someone else's account.

Signing out records the session's id as ended in etcd (moorage.meta.ui_sessions) and is
answered only once that is committed: a copy of the cookie is refused by every replica from
then on. When it cannot be recorded the answer says so (503) and the cookie is kept, so the
person knows the session still works and can sign out again.
"""

from __future__ import annotations

import base64
import secrets

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from moorage.api.state import AppState
from moorage.errors import LoginThrottled, MoorageError
from moorage.meta import ui_sessions
from moorage.web import common
from moorage.web import session as sessions
from moorage.web.common import PREFIX, SECURITY_HEADERS, Viewer

LOGIN_COOKIE = "moorage_login"
LOGIN_TTL = 1800


def _next(raw: str | None) -> str:
    """Where to go after signing in: a page of the UI only (never another site)."""
    if raw and raw.startswith(f"{PREFIX}/") and not raw.startswith("//") and "\\" not in raw:
        return raw
    return f"{PREFIX}/"


def _cookie_args(request: Request) -> dict[str, object]:
    return {
        "httponly": True,
        "samesite": "strict",
        "secure": common.secure(request),
        "path": f"{PREFIX}/",
    }


def _form(request: Request, status: int = 200, error: str | None = None) -> Response:
    token = secrets.token_urlsafe(24)
    target = _next(request.query_params.get("next"))
    resp = common.render(request, "signin.html", status, login_csrf=token, error=error, next=target)
    resp.set_cookie(LOGIN_COOKIE, token, max_age=LOGIN_TTL, **_cookie_args(request))  # type: ignore[arg-type]
    return resp


async def signin_form(request: Request) -> Response:
    return _form(request)


async def signin(request: Request) -> Response:
    st: AppState = common.state(request)
    fields = await common.form(request)
    if fields is None:
        return _form(request, 400, "the form could not be read; send it again")
    sent, cookie = fields.get("csrf", ""), request.cookies.get(LOGIN_COOKIE, "")
    if not cookie or not secrets.compare_digest(sent.encode(), cookie.encode()):
        return _form(request, 403, "the sign-in form expired; sign in again")
    name, password = fields.get("username", ""), fields.get("password", "")
    if not name or not password:
        return _form(request, 400, "enter your user name and password")
    basic = "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()
    client = request.client.host if request.client else None
    try:
        principal = await st.auth.authenticate(basic, client)
        user = await common.account(st, name) if principal is not None else None
    except LoginThrottled as exc:
        return _form(request, 429, f"{exc}")
    except MoorageError as exc:
        return _form(request, 503, f"cannot check the password now: {exc}")
    if principal is None or principal.anonymous or user is None:
        return _form(request, 401, "wrong user name or password")
    if principal.limit is not None or principal.kind != "user":
        return _form(request, 403, "sign in with the account's password, not an access token")
    value, _ = sessions.issue(
        common.session_key(request),
        user.name,
        user.password_hash,
        sessions_ended=user.sessions_ended,
    )
    resp = RedirectResponse(
        _next(fields.get("next") or request.query_params.get("next")), 303, SECURITY_HEADERS
    )
    resp.set_cookie(
        sessions.COOKIE,
        value,
        max_age=int(sessions.SESSION_TTL),
        **_cookie_args(request),  # type: ignore[arg-type]
    )
    resp.delete_cookie(LOGIN_COOKIE, path=f"{PREFIX}/")
    return resp


async def signout(request: Request, st: AppState, viewer: Viewer) -> Response:
    ttl = sessions.remembered_for(viewer.session)
    try:
        await ui_sessions.end(st.registry.meta, viewer.session.sid, ttl)
    except MoorageError as exc:
        message = (
            f"not signed out: the session could not be ended ({exc}). It still works, in this "
            "browser too; sign out again when this replica can write to the store, or change the "
            "password to end every session of the account"
        )
        return common.refusal(request, 503, message, viewer)
    resp = RedirectResponse(f"{PREFIX}/signin", 303, SECURITY_HEADERS)
    resp.delete_cookie(sessions.COOKIE, **_cookie_args(request))  # type: ignore[arg-type]
    return resp


async def home(request: Request, st: AppState, viewer: Viewer) -> Response:
    target = "cluster" if viewer.admin else "repositories"
    return RedirectResponse(f"{PREFIX}/{target}", 303, SECURITY_HEADERS)
