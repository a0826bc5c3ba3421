"""The ASGI application of one replica (the only place Starlette is assembled).

`http_app` serves a `Replica` that `moorage.server` assembled; the replica's background
jobs run in the lifespan the server passes in.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from moorage.api import cross_site
from moorage.api.access_log import AccessLog
from moorage.api.access_tokens import token_routes as access_token_routes
from moorage.api.accounts import account_routes
from moorage.api.audit import audit_routes
from moorage.api.ca import cluster_ca
from moorage.api.certs import certs_routes
from moorage.api.cluster import cluster_routes
from moorage.api.errors import admin_error, envelope
from moorage.api.gc import gc_routes
from moorage.api.health import health, ping
from moorage.api.http import request_path
from moorage.api.metrics import MetricsMiddleware, metrics
from moorage.api.policies import policy_routes
from moorage.api.state import AppState
from moorage.api.token import token_routes
from moorage.api.v2 import guarded
from moorage.api.webhooks import webhook_routes

__all__ = ["ASGIApp", "Lifespan", "RegistryRoutes", "http_app"]

#: What runs while the app serves (the replica's jobs): entered at startup, left at shutdown.
Lifespan = Callable[[], AbstractAsyncContextManager[None]]


def http_app(st: AppState, lifespan: Lifespan, pages: Sequence[BaseRoute] = ()) -> ASGIApp:
    """`pages`: routes served besides the API (the web UI, `moorage.web`)."""

    @asynccontextmanager
    async def app_lifespan(app: Starlette) -> AsyncIterator[None]:
        async with lifespan():
            yield

    app = Starlette(
        routes=[
            Route("/_ping", ping, methods=["GET", "HEAD"]),
            Route("/api/v0/health", health, methods=["GET"]),
            Route("/api/v0/cluster/ca", cluster_ca, methods=["GET", "HEAD"]),
            Route("/metrics", metrics, methods=["GET"]),
            *cluster_routes(),
            *certs_routes(),
            *token_routes(),
            *access_token_routes(),
            *audit_routes(),
            *account_routes(),
            *policy_routes(),
            *gc_routes(),
            *webhook_routes(),
            *pages,
        ],
        lifespan=app_lifespan,
        exception_handlers={HTTPException: _routing_error},
    )
    # `/api/v0/users/` is not `/api/v0/users`: a 404 rather than a redirect to it.
    app.router.redirect_slashes = False
    app.state.moorage = st
    # The request id and access line outermost: the id is set for everything inside.
    return AccessLog(MetricsMiddleware(RegistryRoutes(app)), app.routes)


_ROUTING_CODES = {404: "NOT_FOUND", 405: "UNSUPPORTED"}


async def _routing_error(request: Request, exc: Exception) -> Response:
    """The router's own refusals (no such endpoint, a method it does not answer) as the
    `{"error", "code"}` documents of the rest of the API, not Starlette's plain text."""
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    path = request_path(request.scope)
    message = f"no such endpoint: {request.method} {path[:200]!r}"
    if exc.status_code == 405:
        message = f"{request.method} is not supported on {path[:200]!r}"
    code = _ROUTING_CODES.get(exc.status_code, "INVALID")
    return JSONResponse(admin_error(code, message), exc.status_code, exc.headers)


class RegistryRoutes:
    """`/v2/...` straight to the registry dispatcher (the hot path skips Starlette's router
    and its middleware stack); everything else, lifespan included, to the Starlette app."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = request_path(scope)
        forged = cross_site.refusal(scope, path)
        if forged is not None:
            await _forged(path, forged)(scope, receive, send)
            return
        if path == "/v2" or path.startswith("/v2/"):
            scope["app"] = self.app
            response = await guarded(Request(scope, receive))
            await response(scope, receive, send)
            return
        if _UNROUTABLE.search(path):
            # Starlette's routes end in `$`, which also matches before a trailing newline.
            response = JSONResponse(
                admin_error("NOT_FOUND", f"no such endpoint: {path[:200]!r}"), 404
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _forged(path: str, reason: str) -> Response:
    """A 403 for a request another website made (moorage.api.cross_site), in the errors of
    the API it was sent to."""
    if path == "/v2" or path.startswith("/v2/"):
        return Response(envelope("DENIED", reason), 403, media_type="application/json")
    return JSONResponse(admin_error("DENIED", reason), 403)


#: Control characters and U+FFFD (bytes that were not UTF-8): no endpoint has them.
_UNROUTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ufffd]")
