"""Join tokens over HTTP: the admin endpoints that make, list and revoke them, and the
authentication of a joiner that presents one instead of the admin password.

    POST /api/v0/join-tokens          {"ttl": seconds}    -> {"token", "id", "expires_at", ...}
    GET  /api/v0/join-tokens                              -> {"tokens": [...]} (no token itself)
    POST /api/v0/join-tokens/revoke   {"token": T or ID}  -> {"revoked": true}

A joiner sends `Authorization: MoorageJoin <token>` and `Moorage-Join-Secret: <64 hex>` (a
secret it chose for this one join) on the join steps that accept it (api.cluster). A refusal
is a 401 in the OCI error envelope (with the admin API's `error`/`code` beside it); failed
attempts count against the failed-login limits of the client's address and are logged.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from moorage.api.errors import admin_error, envelope
from moorage.api.state import AppState
from moorage.auth.basic import _client_key
from moorage.auth.throttle import LoginThrottle
from moorage.cluster import join_tokens
from moorage.errors import Denied, JoinTokenRefused, MoorageError, Unauthorized
from moorage.meta.etcd import EtcdCluster

log = logging.getLogger("moorage.audit")

SCHEME = "MoorageJoin"
SECRET_HEADER = "moorage-join-secret"
#: What failed token attempts count against in the failed-login limits (not a user name).
ACCOUNT = "<join-token>"
_fallback = LoginThrottle()


class NoSuchToken(LookupError):
    """Revoking a token that does not exist (a 404)."""


def refusal(exc: Unauthorized | Denied, status: int | None = None) -> Response:
    """A 401 (or 403) in the OCI envelope, readable by the admin client too."""
    code = "UNAUTHORIZED" if isinstance(exc, Unauthorized) else "DENIED"
    status = status or (401 if code == "UNAUTHORIZED" else 403)
    doc = json.loads(envelope(code, exc.message))
    doc.update(admin_error(code, exc.message))
    return JSONResponse(doc, status_code=status)


def presents_token(authorization: str | None) -> bool:
    return authorization is not None and authorization.startswith(SCHEME + " ")


def _throttle(st: AppState) -> LoginThrottle:
    found = getattr(st.auth, "throttle", None)
    return found if isinstance(found, LoginThrottle) else _fallback


async def authorize(
    request: Request, st: AppState, authorization: str
) -> join_tokens.JoinGrant | Response:
    """The joiner's grant, or the response refusing it (401; 429 past the limits)."""
    peer = _client_key(request.client.host if request.client else None)
    throttle = _throttle(st)
    now = time.monotonic()
    wait = throttle.retry_after(ACCOUNT, peer, now)
    if wait:
        resp = refusal(
            JoinTokenRefused(f"too many refused join tokens from this address: retry in {wait} s"),
            429,
        )
        resp.headers["Retry-After"] = str(wait)
        return resp
    if st.cluster is None:
        return JSONResponse(admin_error("UNSUPPORTED", "this replica has no etcd cluster"), 501)
    token = authorization[len(SCHEME) + 1 :].strip()
    secret = request.headers.get(SECRET_HEADER, "").strip()
    try:
        grant = await join_tokens.check(st.cluster, token, secret)
    except JoinTokenRefused as exc:
        throttle.failed(throttle.reserve(ACCOUNT, peer, now))
        log.warning("join token refused from %s for %s: %s", peer, request.url.path, exc)
        return refusal(exc)
    except MoorageError as exc:  # the store cannot answer
        doc = admin_error("UNAVAILABLE", str(exc))
        return JSONResponse(doc, status_code=503, headers={"Retry-After": "5"})
    log.info("join token %s accepted from %s for %s", grant.digest[:12], peer, request.url.path)
    return grant


def grant_of(request: Request) -> join_tokens.JoinGrant | None:
    """The joiner's grant when the request authenticated with a join token."""
    grant = getattr(request.state, "join_grant", None)
    return grant if isinstance(grant, join_tokens.JoinGrant) else None


async def create(request: Request, st: AppState, store: EtcdCluster, body: dict[str, Any]) -> Any:
    ttl = join_tokens.parse_ttl(str(body.get("ttl", join_tokens.DEFAULT_TTL)))
    who = getattr(request.state, "admin_name", "admin")
    doc = await join_tokens.create(store, ttl, str(who))
    log.info("join token %s created (ttl %d s)", doc["id"], ttl)
    return doc


async def listing(request: Request, st: AppState, store: EtcdCluster, body: dict[str, Any]) -> Any:
    return {"tokens": await join_tokens.list_tokens(store)}


async def revoke(request: Request, st: AppState, store: EtcdCluster, body: dict[str, Any]) -> Any:
    value = str(body["token"])
    if not await join_tokens.revoke(store, value[:200]):
        raise NoSuchToken("no such unused join token (used, expired or revoked already?)")
    log.info("join token revoked")
    return {"revoked": True}
