"""The /v2/ dispatcher: authentication, name validation, routing, error envelopes.

Repository names contain slashes, so routes are matched by regular expressions tried in
order (uploads before blobs); the name is validated once here for every route.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from moorage.api import blobs, discovery, manifests, uploads
from moorage.api.errors import error_response, from_domain
from moorage.api.health import acknowledge_write
from moorage.api.http import (
    authorization,
    drain_unread_body,
    range_header,
    reply,
    request_path,
)
from moorage.api.state import AppState
from moorage.auth import bearer
from moorage.auth.access import (
    CATALOG,
    DELETE,
    PULL,
    PUSH,
    REGISTRY,
    REPOSITORY,
    Access,
    Principal,
)
from moorage.errors import (
    BlobUploadUnknown,
    MoorageError,
    RangeInvalid,
    StoreReadOnly,
    own_cancellation,
)
from moorage.oci.names import validate_name

log = logging.getLogger("moorage.api")

Handler = Callable[..., Awaitable[Response]]


def _route(pattern: str) -> re.Pattern[str]:
    """Routes are matched with fullmatch and DOTALL: a control character in the path stays
    in the name, tag, digest or upload id that the grammar then refuses (a newline must not
    end a match early, nor make a path fall through to no route at all)."""
    return re.compile(pattern, re.DOTALL)


_UPLOAD_ID = re.compile(r"[a-f0-9]{32}")

_ROUTES: list[tuple[re.Pattern[str], dict[str, Handler]]] = [
    (
        _route(r"/v2/(?P<name>.+)/blobs/uploads/?"),
        {"POST": uploads.start_upload},
    ),
    (
        _route(r"/v2/(?P<name>.+)/blobs/uploads/(?P<upload_id>[^/]+)"),
        {
            "GET": uploads.upload_status,
            "PATCH": uploads.patch_upload,
            "PUT": uploads.finish_upload,
            "DELETE": uploads.cancel_upload,
        },
    ),
    (
        _route(r"/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)"),
        {"GET": blobs.get_blob, "HEAD": blobs.get_blob, "DELETE": blobs.delete_blob},
    ),
    (
        _route(r"/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)"),
        {
            "GET": manifests.get_manifest,
            "HEAD": manifests.get_manifest,
            "PUT": manifests.put_manifest,
            "DELETE": manifests.delete_manifest,
        },
    ),
    (_route(r"/v2/(?P<name>.+)/tags/list"), {"GET": discovery.list_tags}),
    (
        _route(r"/v2/(?P<name>.+)/referrers/(?P<digest>[^/]+)"),
        {"GET": discovery.referrers},
    ),
]


def _template(pattern: re.Pattern[str]) -> str:
    """`/v2/{name}/blobs/{digest}` of the route `/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)`."""
    return re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern.pattern).removesuffix("/?")


_TEMPLATES = [(pattern, _template(pattern)) for pattern, _ in _ROUTES]


def route_template(path: str) -> tuple[str, str | None]:
    """The route a /v2/ path takes, as its template, and the repository it names (None for
    the base and the catalog): what an access line says instead of the path."""
    if path in ("/v2", "/v2/", "/v2/_catalog"):
        return path, None
    for pattern, template in _TEMPLATES:
        match = pattern.fullmatch(path)
        if match is not None:
            return template, match.group("name")
    return "/v2/unmatched", None


_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})

_PULL = frozenset({PULL})
_PUSH = frozenset({PULL, PUSH})  # distribution asks pull,push for every step of a push
_DELETE = frozenset({DELETE})


def required(path_kind: str, method: str) -> frozenset[str]:
    """The repository actions a route needs: reads pull; uploads, their status and
    manifest puts push (and pull); deletes of manifests and blobs delete."""
    if path_kind == "upload":
        return _PUSH
    if method in ("GET", "HEAD"):
        return _PULL
    if method == "DELETE":
        return _DELETE
    return _PUSH


def _challenge(
    st: AppState, request: Request, required: Access | None, error: str | None = None
) -> str:
    """WWW-Authenticate for a refusal of `required` (None: the base `/v2/`): the token
    flow's Bearer challenge with the scope the route needs (`error="insufficient_scope"`
    after a token too narrow for it), or Basic when this replica issues no tokens."""
    base = bearer.realm_base(st.auth, request.headers.get("host"))
    return bearer.challenge(st.auth, base, [required] if required else [], error)


def _unauthorized(st: AppState, request: Request, required: Access | None = None) -> Response:
    response = error_response(
        401,
        "UNAUTHORIZED",
        "authentication required: log in with the registry's username and password",
        headers={"WWW-Authenticate": _challenge(st, request, required)},
    )
    if st.auth.challenge not in response.headers["www-authenticate"]:
        # Basic too, second (clients take the first scheme they support: Bearer).
        response.headers.append("WWW-Authenticate", st.auth.challenge)
    return response


async def _denied(
    st: AppState, request: Request, principal: Principal, required: Access
) -> Response:
    """401 with the challenge for an anonymous client; 401 `insufficient_scope` for a
    Bearer token too narrow for the route (the client asks for a wider one, which grants
    what the account holds), `invalid_token` for one whose account was deleted, disabled
    or given another password since; 403 DENIED for a client signed in with a password or
    an access token."""
    if bearer.bearer_token(authorization(request)) is not None:
        if await st.authorizer.void(principal):
            error, message = "invalid_token", "the token's account changed: log in again"
        else:
            error = "insufficient_scope"
            message = "the token does not grant this access: ask the token endpoint for it"
        return error_response(
            401,
            "UNAUTHORIZED",
            message,
            headers={"WWW-Authenticate": _challenge(st, request, required, error)},
        )
    if principal.anonymous:
        return _unauthorized(st, request, required)
    what = "the catalog" if required.type == REGISTRY else f"repository {required.name}"
    return error_response(
        403,
        "DENIED",
        f"{principal.name or 'this credential'} may not "
        f"{'/'.join(sorted(required.actions))} {what}: ask an admin of it for a grant",
    )


async def _authorize(
    st: AppState, request: Request, principal: Principal, access: Access
) -> Response | None:
    """None when the principal holds every action of `access`, else the refusal."""
    granted = await st.authorizer.allowed(principal, access)
    if access.actions <= granted:
        return None
    return await _denied(st, request, principal, access)


def _state(request: Request) -> AppState:
    st: AppState = request.app.state.moorage
    return st


async def dispatch(request: Request) -> Response:
    st = _state(request)
    try:
        client = request.client.host if request.client else None
        identity = await bearer.request_principal(st.auth, authorization(request), client)
    except MoorageError as exc:  # too many failed logins (429), store unavailable (503)
        return from_domain(exc)
    if identity is None:
        return _unauthorized(st, request)
    request.state.principal = identity
    path = request_path(request.scope)
    method = request.method
    params: dict[str, Any] = {}
    if st.fenced:
        return error_response(503, "UNAVAILABLE", st.fenced, headers={"Retry-After": "60"})
    try:
        if path in ("/v2/", "/v2"):
            if method not in ("GET", "HEAD"):  # a 200 to CONNECT would open a tunnel
                return _not_allowed(method, path)
            if identity.anonymous:  # clients log in when the base answers 401
                return _unauthorized(st, request)
            return reply(200, {"Content-Length": "2"}, b"{}", "application/json")
        if path == "/v2/_catalog":
            if method != "GET":
                return _not_allowed(method, path)
            catalog = Access(REGISTRY, CATALOG, frozenset({"*"}))
            if refused := await _authorize(st, request, identity, catalog):
                return refused
            return await discovery.catalog(request, st)
        for pattern, handlers in _ROUTES:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            handler = handlers.get(method)
            if handler is None:
                return _not_allowed(method, path)
            params = match.groupdict()
            validate_name(params["name"])
            upload_id = params.get("upload_id")
            kind = "upload" if "/blobs/uploads" in pattern.pattern else "other"
            need = Access(REPOSITORY, params["name"], required(kind, method))
            if refused := await _authorize(st, request, identity, need):
                return refused
            if upload_id is not None and not _UPLOAD_ID.fullmatch(upload_id):
                raise BlobUploadUnknown(f"upload {upload_id[:64]!r} is unknown")
            if st.read_only and method in _WRITES:
                raise StoreReadOnly(
                    "the registry is read-only: this replica cannot reach a quorum of its "
                    "cluster (a majority is down, or this replica is cut off from it). Pulls "
                    "work; retry pushes and deletes on another replica or later. If the "
                    "majority is really lost, 'moorage status' names the survivor to run "
                    "'moorage emergency-repair' on"
                )
            response = await handler(request, st, **params)
            if method in _WRITES and 200 <= response.status_code < 300:
                response = acknowledge_write(st, response)  # the fence check, see there
            return response
        return error_response(404, "NOT_FOUND", f"no such endpoint: {method} {path[:200]!r}")
    except RangeInvalid as exc:
        headers = {"Range": range_header(exc.current_size)}
        if "upload_id" in params:
            headers["Location"] = f"/v2/{params['name']}/blobs/uploads/{params['upload_id']}"
            headers["Docker-Upload-UUID"] = params["upload_id"]
        return from_domain(exc, headers)
    except MoorageError as exc:
        return from_domain(exc)


def _not_allowed(method: str, path: str) -> Response:
    return error_response(405, "UNSUPPORTED", f"{method} is not supported on {path[:200]}")


async def guarded(request: Request) -> Response:
    """`dispatch`, with anything unexpected logged and answered in the OCI envelope; an
    error answered before the body was read reads the rest first (`drain_unread_body`)."""
    try:
        response = await dispatch(request)
    except ClientDisconnect:  # the client is gone: nobody reads the answer, no traceback
        return error_response(400, "BLOB_UPLOAD_INVALID", "the request body ended early")
    except asyncio.CancelledError:
        # A library cancelling a call of its own (grpc does, on a channel being closed) is
        # a failure to retry; the request's own cancellation (the client left) goes on.
        if own_cancellation():
            raise
        log.exception("a call was cancelled in %s %r", request.method, request_path(request.scope))
        response = error_response(503, "UNAVAILABLE", "a backend call was cancelled; retry")
    except Exception:
        log.exception("unexpected error in %s %r", request.method, request_path(request.scope))
        response = error_response(500, "UNKNOWN", "internal error; the replica's log has details")
    if response.status_code >= 400:
        await drain_unread_body(request)
    return response
