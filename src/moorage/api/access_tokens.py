"""Access tokens and robot accounts over HTTP (moorage.auth.access_tokens):

    POST /api/v0/tokens          {"scopes": [...], "expires": "30d"|"never", "robot": NAME}
                                 -> {"token" (shown once), "id", "username", "owner", ...}
    GET  /api/v0/tokens[?user=NAME&last=ID]  -> {"tokens": [...], "next": ID|null}
    POST /api/v0/tokens/revoke   {"id": ID or the token}  -> {"revoked": true, ...}

Any user signed in with its password may manage its own tokens; a cluster admin also
creates robots and lists or revokes anybody's. A token never manages tokens (403).
Errors are `{"error", "code"}` documents, as in the rest of /api/v0.

`token_limit_refusal` is the /v2/ dispatcher's check that a request made with a token
stays within the token's scope (through `st.authorizer`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from moorage.api.cluster import MAX_BODY, _error, _fenced, _JSONResponse, _read_body
from moorage.api.http import authorization
from moorage.api.state import AppState
from moorage.audit import AuditEvent
from moorage.auth import access_tokens
from moorage.errors import (
    AccessTokenRefused,
    AccessTokenUnknown,
    LoginThrottled,
    MoorageError,
    TooManyAccessTokens,
)

Handler = Callable[[Request, AppState, access_tokens.Caller, dict[str, Any]], Awaitable[Any]]


async def _caller(request: Request, st: AppState) -> access_tokens.Caller | Response:
    try:
        client = request.client.host if request.client else None
        identity = await st.auth.authenticate(authorization(request), client)
    except LoginThrottled as exc:
        resp = _error(429, "TOOMANYREQUESTS", str(exc))
        resp.headers["Retry-After"] = str(exc.retry_after)
        return resp
    except MoorageError as exc:  # the store cannot look the user up
        resp = _error(503, "UNAVAILABLE", str(exc))
        resp.headers["Retry-After"] = "5"
        return resp
    if identity is None or identity.anonymous:
        resp = _error(401, "UNAUTHORIZED", "credentials required (a user name and password)")
        resp.headers["WWW-Authenticate"] = st.auth.challenge
        return resp
    principal = identity
    request.state.principal = principal  # the access line's user
    if principal.kind != "user" or principal.limit is not None:
        return _error(403, "DENIED", "tokens are managed with a password login, not a token")
    return access_tokens.Caller(principal.name, principal.admin)


def endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def serve(request: Request) -> Response:
        st: AppState = request.app.state.moorage
        caller = await _caller(request, st)
        if isinstance(caller, Response):
            return caller
        body: dict[str, Any] = {}
        if request.method == "POST":
            try:
                raw = await _read_body(request)
            except ClientDisconnect:
                return _error(400, "INVALID", "the request body ended early")
            if raw is None:
                return _error(413, "TOO_LARGE", f"the request body exceeds {MAX_BODY} bytes")
            try:
                body = json.loads(raw) if raw else {}
            except (ValueError, RecursionError):
                return _error(400, "INVALID", "the request body is not JSON")
            if not isinstance(body, dict):
                return _error(400, "INVALID", "the request body must be a JSON object")
            if refused := _fenced(st):
                return refused
        try:
            result = await handler(request, st, caller, body)
        except AccessTokenRefused as exc:
            return _error(403, "DENIED", str(exc))
        except AccessTokenUnknown as exc:
            return _error(404, "NOT_FOUND", str(exc))
        except TooManyAccessTokens as exc:
            return _error(409, "REFUSED", str(exc))
        except (KeyError, TypeError, ValueError) as exc:
            return _error(400, "INVALID", f"bad request: {exc}")
        except MoorageError as exc:
            resp = _error(503, "UNAVAILABLE", str(exc))
            resp.headers["Retry-After"] = "5"
            return resp
        if request.method == "POST" and (refused := _fenced(st)):
            return refused
        return _JSONResponse(result)

    return serve


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


async def create(
    request: Request, st: AppState, caller: access_tokens.Caller, body: dict[str, Any]
) -> Any:
    scopes = body.get("scopes")
    if not isinstance(scopes, list):
        raise ValueError("'scopes' must be a list like ['repository:acme/app:pull,push']")
    robot = body.get("robot")
    if robot is not None and not isinstance(robot, str):
        raise ValueError("'robot' must be a name")
    expires = body.get("expires")
    if expires is not None and not isinstance(expires, str):
        raise ValueError("'expires' must look like 30d, 12h or 'never'")
    doc = await access_tokens.create(st.registry.meta, caller, scopes, expires, robot)
    detail = {"owner": doc["owner"], "scopes": " ".join(doc["scopes"])}
    await st.audit.record(
        AuditEvent("token.create", caller.name, f"token:{doc['id']}", client=_client(request),
                   detail=detail)
    )  # fmt: skip
    return doc


async def listing(
    request: Request, st: AppState, caller: access_tokens.Caller, body: dict[str, Any]
) -> Any:
    user = request.query_params.get("user") or None
    last = request.query_params.get("last") or None
    if user is not None and len(user) > 300:
        raise ValueError("'user' is too long")
    return await access_tokens.listing(st.registry.meta, caller, user, last)


async def revoke(
    request: Request, st: AppState, caller: access_tokens.Caller, body: dict[str, Any]
) -> Any:
    value = body.get("id")
    if not isinstance(value, str) or not value:
        raise ValueError("'id' must be a token id (see moorage token list)")
    doc = await access_tokens.revoke(st.registry.meta, caller, value[:200])
    await st.audit.record(
        AuditEvent("token.revoke", caller.name, f"token:{doc['id']}", client=_client(request),
                   detail={"owner": doc["owner"]})
    )  # fmt: skip
    return doc


def token_routes() -> list[Route]:
    return [
        Route("/api/v0/tokens", endpoint(create), methods=["POST"]),
        Route("/api/v0/tokens", endpoint(listing), methods=["GET"]),
        Route("/api/v0/tokens/revoke", endpoint(revoke), methods=["POST"]),
    ]
