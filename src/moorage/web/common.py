"""What every page of the web UI shares: who is viewing (the session, checked against the
account and against the sessions signed out on every request), CSRF on every POST,
rendering with the security headers.

Every response carries a strict Content-Security-Policy (`default-src 'self'`: the UI loads
nothing from outside the replica and runs no inline script), `no-store` caching, and refuses
framing. The session cookie is HttpOnly, SameSite=Strict and, over TLS, Secure.
"""

from __future__ import annotations

import contextlib
import functools
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from moorage.api.state import AppState
from moorage.auth.access import Principal
from moorage.auth.policy import Policy
from moorage.cluster.tls import tls_dir
from moorage.errors import MoorageError
from moorage.meta import ui_sessions
from moorage.meta.records import UserRecord
from moorage.web import session as sessions

if TYPE_CHECKING:
    from jinja2 import Environment

PREFIX = "/ui"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "object-src 'none'"
    ),
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
MAX_FORM = 16 * 1024  # the UI's forms are a few fields


@functools.cache
def _templates() -> Environment:
    """Made at the first page: jinja2 stays out of an API worker nobody browses (~6 MiB)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(
        loader=PackageLoader("moorage.web", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["timestamp"] = lambda t: time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
    return env


@dataclass(frozen=True, slots=True)
class Viewer:
    """A signed-in person: the session and the principal the registry's policy judges."""

    session: sessions.Session
    principal: Principal

    @property
    def admin(self) -> bool:
        return self.principal.admin


Page = Callable[[Request, AppState, Viewer], Awaitable[Response]]


def state(request: Request) -> AppState:
    st: AppState = request.app.state.moorage
    return st


def session_key(request: Request) -> bytes:
    """The session signing key, derived once per worker from the cluster secret."""
    key: bytes | None = getattr(request.app.state, "ui_session_key", None)
    if key is None:
        secret = b""
        with contextlib.suppress(OSError):
            secret = tls_dir(state(request).config).read_secret()
        key = sessions.session_key(secret)
        request.app.state.ui_session_key = key
    return key


def secure(request: Request) -> bool:
    return request.url.scheme == "https" or state(request).config.https


async def account(st: AppState, name: str) -> UserRecord | None:
    """The account `name` if it may act (exists, not disabled); accounts are cached under
    an etcd watch by the policy (a disabled or re-passworded account is seen at once)."""
    if isinstance(st.authorizer, Policy):
        return await st.authorizer.account(Principal(name, "user"))
    user = await st.registry.meta.get_user(name)
    return None if user is None or user.disabled else user


async def viewer(request: Request) -> Viewer | None:
    """Who this request's session cookie proves, or None (no valid cookie, the account cannot
    act or has a new password, or the session was signed out). Raises MoorageError when the
    store cannot say (the caller refuses: never a session let through unchecked)."""
    found = sessions.verify(session_key(request), request.cookies.get(sessions.COOKIE))
    if found is None:
        return None
    st = state(request)
    user = await account(st, found.user)
    if user is None or (
        sessions.password_tag(user.password_hash, user.sessions_ended) != found.password
    ):
        return None
    # Signed out? One read by key, made only for a cookie that verified.
    if await ui_sessions.ended(st.registry.meta, found.sid):
        return None
    return Viewer(found, Principal(user.name, "user", admin=bool(user.admin)))


async def form(request: Request) -> dict[str, str] | None:
    """An urlencoded form body (first value of each field), or None when it is too large,
    cut short or not text."""
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM:
                return None
    except ClientDisconnect:
        return None
    try:
        pairs = urllib.parse.parse_qsl(body.decode(), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        return None
    out: dict[str, str] = {}
    for k, v in pairs:
        out.setdefault(k, v)
    return out


def render(
    request: Request, template: str, status: int = 200, viewer: Viewer | None = None, **ctx: Any
) -> HTMLResponse:
    st = state(request)
    html = (
        _templates()
        .get_template(template)
        .render(
            viewer=viewer,
            csrf=viewer.session.csrf if viewer else None,
            replica=st.config.replica_id,
            prefix=PREFIX,
            **ctx,
        )
    )
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def refusal(request: Request, status: int, message: str, viewer: Viewer | None = None) -> Response:
    return render(request, "error.html", status=status, viewer=viewer, message=message)


def signin_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    query = urllib.parse.urlencode({"next": target})
    return RedirectResponse(f"{PREFIX}/signin?{query}", 303, headers=SECURITY_HEADERS)


def page(handler: Page, json: bool = False) -> Callable[[Request], Awaitable[Response]]:
    """A page for signed-in viewers: without a session a redirect to sign in (a 401 for the
    JSON endpoints); a POST without its session's CSRF token is refused (403)."""

    async def endpoint(request: Request) -> Response:
        st = state(request)
        try:
            who = await viewer(request)
        except MoorageError as exc:  # the store cannot look the account up
            return refusal(request, 503, f"cannot check the session now: {exc}")
        if who is None:
            if json:
                return JSONResponse(
                    {"error": "sign in at /ui/signin", "code": "UNAUTHORIZED"},
                    401,
                    headers=SECURITY_HEADERS,
                )
            return signin_redirect(request)
        if request.method == "POST":
            fields = await form(request)
            if fields is None:
                return refusal(request, 400, "the form could not be read; send it again", who)
            if not sessions.csrf_ok(who.session, fields.get("csrf")):
                return refusal(
                    request, 403, "the form's CSRF token is missing or stale; reload the page", who
                )
            request.state.form = fields
        request.state.principal = who.principal  # the audit log's actor
        try:
            return await handler(request, st, who)
        except MoorageError as exc:  # the store or blob storage cannot answer now
            return refusal(request, 503, f"this replica cannot answer now: {exc}", who)

    return endpoint
