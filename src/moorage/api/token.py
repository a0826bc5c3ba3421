"""The token endpoint of the Docker token flow (issue #9; research/security.md §1.2, §1.3),
and the admin endpoints of the signing keys.

    GET  /auth/token?service=&scope=&scope=&account=&offline_token=&client_id=
         Basic credentials or none (anonymous) -> {"token", "access_token", "expires_in",
         "issued_at"} (+ "refresh_token" with offline_token=true)
    POST /auth/token  (application/x-www-form-urlencoded, OAuth2)
         grant_type=password     username, password, scope (repeated and/or space separated),
                                 service, client_id, access_type=offline -> + refresh_token
         grant_type=refresh_token refresh_token, scope, service, client_id
         -> {"access_token", "token", "scope", "expires_in", "issued_at"[, "refresh_token"]}
    GET  /api/v0/token-keys          the signing keys (admin)
    POST /api/v0/token-keys/rotate   a new signing key (admin)

Granted = requested ∩ what `st.authorizer` allows, never an error (an empty `access` list
is a valid answer). Wrong credentials: 401; too many failed logins: 429 with Retry-After;
a grant type we do not implement: 400 `unsupported_grant_type` (RFC 6749 §5.2). Errors are
`{"error", "error_description"}` documents (RFC 6749 §5.2).
"""

from __future__ import annotations

import base64
import datetime
import logging
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from moorage.api.cluster import admin
from moorage.api.http import authorization
from moorage.api.state import AppState
from moorage.audit import DENIED, OK, AuditEvent
from moorage.auth import jwt
from moorage.auth.access import (
    ALL,
    ANONYMOUS,
    MAX_SCOPES,
    REPOSITORY,
    Access,
    Principal,
    account_mark,
    parse_scope,
)
from moorage.auth.basic import parse_basic
from moorage.auth.bearer import (
    BearerAuthenticator,
    as_principal,
    bearer_token,
    user_active,
    user_principal,
)
from moorage.auth.signing_keys import SigningKeysUnavailable
from moorage.errors import LoginThrottled, MoorageError, NameInvalid
from moorage.meta.etcd import EtcdCluster
from moorage.oci.names import validate_name

log = logging.getLogger("moorage.auth")

MAX_FORM = 16 * 1024  # a token request is a few hundred bytes
MAX_FIELDS = MAX_SCOPES + 16
_HEADERS = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class _Refused(Exception):
    def __init__(self, status: int, error: str, description: str, retry_after: int = 0) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description
        self.retry_after = retry_after

    def response(self) -> Response:
        headers = dict(_HEADERS)
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="moorage"'
        if self.retry_after:
            headers["Retry-After"] = str(self.retry_after)
        body = {"error": self.error, "error_description": self.description}
        return JSONResponse(body, status_code=self.status, headers=headers)


def _service(st: AppState) -> BearerAuthenticator:
    if not isinstance(st.auth, BearerAuthenticator):
        raise _Refused(404, "not_found", "this registry does not issue tokens")
    return st.auth


def _scopes(values: list[str]) -> list[Access]:
    """Every requested access, merged per resource; `scope` repeated and/or space-joined."""
    merged: dict[tuple[str, str], frozenset[str]] = {}
    for value in values:
        if len(value.split()) > MAX_SCOPES:
            raise _Refused(400, "invalid_scope", f"more than {MAX_SCOPES} scopes")
        parsed = parse_scope(value)
        if parsed is None:
            raise _Refused(400, "invalid_scope", f"malformed scope {value[:200]!r}")
        for access in parsed:
            key = (access.type, access.name)
            merged[key] = merged.get(key, frozenset()) | access.actions
            if len(merged) > MAX_SCOPES:
                raise _Refused(400, "invalid_scope", f"more than {MAX_SCOPES} scopes")
    return [Access(t, n, a) for (t, n), a in merged.items()]


def _repository_name(name: str) -> bool:
    """Whether `name` can name a repository (`..`, control characters, uppercase, over 255
    characters cannot: never signed into a token, whatever a policy would say of them)."""
    try:
        validate_name(name)
    except NameInvalid:
        return False
    return True


async def _granted(st: AppState, principal: Principal, requested: list[Access]) -> list[Access]:
    out = []
    for access in requested:
        if access.type == REPOSITORY and not _repository_name(access.name):
            continue  # no repository has that name: nothing to grant (nor to audit as granted)
        try:
            allowed = await st.authorizer.allowed(principal, access)
        except MoorageError as exc:  # the grants cannot be read
            raise _Refused(503, "temporarily_unavailable", exc.message, 5) from None
        # `repository:X:*` (skopeo, podman and crane ask it to delete) stands for every
        # action the caller holds there, which the token names (`allowed` has them expanded).
        # `registry:catalog:*` is the catalog's one action and stays as it is.
        if access.type == REPOSITORY and ALL in access.actions:
            actions = allowed - {ALL}
        else:
            actions = access.actions & allowed
        if actions:
            out.append(Access(access.type, access.name, actions))
    return out


async def _login(st: AppState, header: str | None, client: str | None) -> Principal:
    """The principal of Basic credentials (ANONYMOUS without any); 401/429/503 otherwise."""
    if not header:
        return ANONYMOUS
    if bearer_token(header) is not None or parse_basic(header) is None:
        raise _Refused(401, "invalid_client", "send Basic credentials (or none, for anonymous)")
    try:
        principal = as_principal(await st.auth.authenticate(header, client))
    except LoginThrottled as exc:
        raise _Refused(429, "too_many_attempts", exc.message, exc.retry_after) from None
    except MoorageError as exc:
        raise _Refused(503, "temporarily_unavailable", exc.message, 5) from None
    if principal is None:  # (the authenticator counts and audits failed logins)
        raise _Refused(401, "invalid_grant", "wrong username or password")
    return principal


def _check_service(auth: BearerAuthenticator, service: str | None) -> None:
    if service and service != auth.tokens.service:
        raise _Refused(400, "invalid_request", f"this registry is service {auth.tokens.service!r}")


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1", "yes")


async def _issue(
    st: AppState,
    auth: BearerAuthenticator,
    principal: Principal,
    requested: list[Access],
    client: str | None,
    client_id: str,
) -> tuple[dict[str, Any], list[Access]]:
    granted = await _granted(st, principal, requested)
    try:
        issued = await auth.tokens.issue(principal, granted)
    except SigningKeysUnavailable as exc:
        raise _Refused(503, "temporarily_unavailable", str(exc), 5) from None
    except MoorageError as exc:  # the store cannot be read (or written, for a new key)
        raise _Refused(503, "temporarily_unavailable", exc.message, 5) from None
    log.info(
        "issued a token to %r (%s) from %s for %r (asked %r, client_id %r)",
        principal.name,
        principal.kind,
        client,
        " ".join(a.scope() for a in granted),
        " ".join(a.scope() for a in requested),
        client_id[:100],
    )
    when = datetime.datetime.fromtimestamp(issued.issued_at, datetime.UTC)
    doc: dict[str, Any] = {
        "token": issued.token,
        "access_token": issued.token,
        "expires_in": issued.expires_in,
        "issued_at": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if principal.anonymous and not granted:
        return doc, granted  # nothing granted to nobody: not worth an audit record each time
    await st.audit.record(
        AuditEvent(
            "token.issue",
            principal.name,
            outcome=OK,
            client=client,
            detail={
                "requested": " ".join(a.scope() for a in requested),
                "granted": " ".join(a.scope() for a in granted),
                "client_id": client_id[:100],
            },
        )
    )
    return doc, granted


async def _refresh_for(st: AppState, auth: BearerAuthenticator, principal: Principal) -> str | None:
    """A refresh token for a user who logged in with a password (robots and access tokens
    log in again with their secret instead)."""
    if principal.kind != "user" or principal.limit is not None:
        return None
    try:
        user = await st.registry.meta.get_user(principal.name)
    except MoorageError as exc:
        raise _Refused(503, "temporarily_unavailable", exc.message, 5) from None
    if not user_active(user):
        return None
    assert user is not None
    return await auth.tokens.issue_refresh(user)


async def _get(request: Request, st: AppState) -> Response:
    auth = _service(st)
    q = request.query_params
    _check_service(auth, q.get("service"))
    client = request.client.host if request.client else None
    requested = _scopes(q.getlist("scope")[: MAX_SCOPES + 1])
    principal = await _login(st, authorization(request), client)
    request.state.principal = principal  # the access line's user
    doc, _ = await _issue(st, auth, principal, requested, client, q.get("client_id") or "")
    if _flag(q.get("offline_token")):
        refresh = await _refresh_for(st, auth, principal)
        if refresh:
            doc["refresh_token"] = refresh
    return JSONResponse(doc, headers=_HEADERS)


async def _form(request: Request) -> list[tuple[str, str]]:
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise _Refused(400, "invalid_request", "send an application/x-www-form-urlencoded body")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM:
                raise _Refused(413, "invalid_request", f"the body exceeds {MAX_FORM} bytes")
    except ClientDisconnect:
        raise _Refused(400, "invalid_request", "the request body ended early") from None
    try:
        text = bytes(body).decode("ascii")
        return parse_qsl(
            text, keep_blank_values=True, max_num_fields=MAX_FIELDS, strict_parsing=False
        )
    except ValueError:
        raise _Refused(400, "invalid_request", "malformed form body") from None


async def _post(request: Request, st: AppState) -> Response:
    auth = _service(st)
    fields = await _form(request)
    form: dict[str, str] = {}
    for k, v in fields:
        form.setdefault(k, v)
    scopes = [v for k, v in fields if k == "scope"]
    _check_service(auth, form.get("service"))
    client = request.client.host if request.client else None
    requested = _scopes(scopes)
    grant = form.get("grant_type", "")
    refresh: str | None = None
    if grant == "password":
        username, password = form.get("username", ""), form.get("password", "")
        if not username:
            raise _Refused(400, "invalid_request", "username is required")
        basic = base64.b64encode(f"{username}:{password}".encode()).decode()
        principal = await _login(st, f"Basic {basic}", client)
        request.state.principal = principal  # the access line's user
        if form.get("access_type") == "offline":
            refresh = await _refresh_for(st, auth, principal)
    elif grant == "refresh_token":
        refresh = form.get("refresh_token", "")
        principal = await _refreshed(st, auth, refresh, client)
    else:
        raise _Refused(400, "unsupported_grant_type", f"grant_type {grant[:40]!r} is not supported")
    doc, granted = await _issue(st, auth, principal, requested, client, form.get("client_id", ""))
    doc["scope"] = " ".join(a.scope() for a in granted)
    if refresh:
        doc["refresh_token"] = refresh
    return JSONResponse(doc, headers=_HEADERS)


async def _refreshed(
    st: AppState, auth: BearerAuthenticator, token: str, client: str | None
) -> Principal:
    """The account a refresh token stands for, if it still may: it exists, is enabled, and
    its password did not change since the token was issued."""
    try:
        name, mark = await auth.tokens.verify_refresh(token)
    except jwt.TokenInvalid as exc:
        log.info("refused a refresh token from %s: %s", client, exc)
        raise _Refused(401, "invalid_grant", "the refresh token is not valid") from None
    try:
        user = await st.registry.meta.get_user(name)
    except MoorageError as exc:
        raise _Refused(503, "temporarily_unavailable", exc.message, 5) from None
    if user is None or not user_active(user) or account_mark(user) != mark:
        await st.audit.record(
            AuditEvent("login", name, outcome=DENIED, client=client, detail={"via": "refresh"})
        )
        raise _Refused(401, "invalid_grant", "the refresh token was revoked: log in again")
    return user_principal(user)


async def token_endpoint(request: Request) -> Response:
    st: AppState = request.app.state.moorage
    if st.fenced:
        return JSONResponse(
            {"error": "temporarily_unavailable", "error_description": st.fenced},
            status_code=503,
            headers={"Retry-After": "60"},
        )
    try:
        if request.method == "POST":
            return await _post(request, st)
        return await _get(request, st)
    except _Refused as exc:
        return exc.response()


# -- the signing keys (admin) -------------------------------------------------------------------


async def list_keys(
    request: Request, st: AppState, cluster: EtcdCluster, body: dict[str, Any]
) -> dict[str, Any]:
    auth = st.auth
    if not isinstance(auth, BearerAuthenticator):
        raise KeyError("this replica issues no tokens")
    keys = await auth.tokens.keys.listing()
    return {"keys": keys, "rotation_seconds": auth.tokens.keys.rotation}


async def rotate_keys(
    request: Request, st: AppState, cluster: EtcdCluster, body: dict[str, Any]
) -> dict[str, Any]:
    auth = st.auth
    if not isinstance(auth, BearerAuthenticator):
        raise KeyError("this replica issues no tokens")
    kid = await auth.tokens.keys.rotate()
    actor = getattr(request.state, "admin_name", "")
    await st.audit.record(AuditEvent("token-keys.rotate", actor, target=kid))
    return {"kid": kid, "keys": await auth.tokens.keys.listing()}


def token_routes() -> list[Route]:
    return [
        Route("/auth/token", token_endpoint, methods=["GET", "POST"]),
        Route("/api/v0/token-keys", admin(list_keys), methods=["GET"]),
        Route("/api/v0/token-keys/rotate", admin(rotate_keys), methods=["POST"]),
    ]
