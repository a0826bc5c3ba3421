"""The accounts admin API (issue #9, DESIGN.md §7): users, organizations, teams, grants and
public repositories. Errors are `{"error", "code"}` documents like the cluster admin API.

    GET  /api/v0/users?n=&last=                      -> {"users": [...], "more", "last"}
    POST /api/v0/users           {name, password?, admin?} -> {..., "password" if generated}
    POST /api/v0/users/passwd    {name, password?}   (an admin, or the user itself)
    POST /api/v0/users/disable|enable|delete {name}
    GET  /api/v0/orgs?n=&last=;   POST /api/v0/orgs {name};   POST /api/v0/orgs/delete {name}
    GET  /api/v0/teams?org=ORG;   POST /api/v0/teams {org, team};  POST /api/v0/teams/delete
    POST /api/v0/teams/add-member|remove-member {org, team, user}
    GET  /api/v0/grants?on=&n=&last=;  POST /api/v0/grants {role, on, to}
    POST /api/v0/grants/revoke {on, to}
    POST /api/v0/repositories/public {repo, public}

Cluster admins may call everything. An admin of a namespace (its user, or `admin` granted
on it) may grant and revoke on that namespace and its repositories, list their grants and
make its repositories public. Tokens (a principal with a limit) manage nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from moorage.api.account_input import (
    Invalid,
    flag_of,
    name_of,
    page_of,
    password_of,
    subject_of,
    target_of,
)
from moorage.api.cluster import MAX_BODY, _error, _fenced, _JSONResponse, _read_body
from moorage.api.http import authorization
from moorage.api.state import AppState
from moorage.audit import AuditEvent
from moorage.auth.access import DELETE, Principal
from moorage.auth.passwords import hash_password
from moorage.auth.policy import Policy, propagated
from moorage.errors import Denied, LoginThrottled, MoorageError
from moorage.meta.account_records import ROLES, GrantRecord
from moorage.meta.accounts import AccountConflict, AccountMissing, Accounts, namespace_of
from moorage.meta.base import LAST_REVISION
from moorage.meta.records import UserRecord

Handler = Callable[[Request, AppState, Principal, dict[str, Any]], Awaitable[Any]]


def accounts_of(st: AppState) -> Accounts:
    if isinstance(st.authorizer, Policy):
        return st.authorizer.view.accounts
    return Accounts(st.registry.meta)


def _user_doc(user: UserRecord) -> dict[str, Any]:
    return {"name": user.name, "admin": bool(user.admin), "disabled": user.disabled}


async def _principal(request: Request, st: AppState) -> Principal | Response:
    try:
        client = request.client.host if request.client else None
        principal = await st.auth.authenticate(authorization(request), client)
    except LoginThrottled as exc:
        resp = _error(429, "TOOMANYREQUESTS", str(exc))
        resp.headers["Retry-After"] = str(exc.retry_after)
        return resp
    except MoorageError as exc:
        resp = _error(503, "UNAVAILABLE", str(exc))
        resp.headers["Retry-After"] = "5"
        return resp
    if principal is None or principal.anonymous:
        resp = _error(401, "UNAUTHORIZED", "credentials required")
        resp.headers["WWW-Authenticate"] = st.auth.challenge
        return resp
    request.state.principal = principal  # the access line's user
    if principal.limit is not None:
        return _error(403, "DENIED", "an access token cannot manage accounts: log in")
    return principal


def is_admin(principal: Principal) -> bool:
    return principal.admin and principal.limit is None


async def require_admin(principal: Principal) -> None:
    if not is_admin(principal):
        raise Denied("a cluster admin's credentials are required")


async def require_namespace_admin(st: AppState, principal: Principal, target: str) -> None:
    """A cluster admin, or an admin of `target`'s namespace."""
    if is_admin(principal):
        return
    ns = namespace_of(target)
    if isinstance(st.authorizer, Policy):
        user = await st.authorizer.account(principal)
        if user is not None and DELETE in await st.authorizer._repository_actions(user, ns):
            return
    raise Denied(f"only a cluster admin or an admin of namespace {ns} may do this")


def endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def run(request: Request) -> Response:
        st: AppState = request.app.state.moorage
        principal = await _principal(request, st)
        if isinstance(principal, Response):
            return principal
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
            result = await settled(st, handler(request, st, principal, body))
        except Denied as exc:
            return _error(403, "DENIED", exc.message)
        except AccountMissing as exc:
            return _error(404, "NOT_FOUND", str(exc.args[0]))
        except AccountConflict as exc:
            return _error(409, "CONFLICT", str(exc))
        except Invalid as exc:
            return _error(400, "INVALID", str(exc))
        except (KeyError, TypeError) as exc:
            return _error(400, "INVALID", f"bad request: missing or wrong field {exc}")
        except MoorageError as exc:
            resp = _error(503, "UNAVAILABLE", str(exc))
            resp.headers["Retry-After"] = "5"
            return resp
        # The change and its journal entry are durable: acknowledged only if not fenced
        # meanwhile (the ordering argument of moorage.cluster.fence).
        if request.method == "POST" and (refused := _fenced(st)):
            return refused
        return _JSONResponse(result)

    return run


async def settled(st: AppState, change: Awaitable[Any]) -> Any:
    """Await an account change (or a read: then nothing more) and return its result once
    every replica's watch can have the change (see `propagated`), so that a request sent to
    any replica after the answer meets it."""
    view = st.authorizer.view if isinstance(st.authorizer, Policy) else None
    generation = view.generation if view is not None else 0
    before = LAST_REVISION.get()
    result = await change
    if (revision := LAST_REVISION.get()) != before and view is not None:
        if st.cluster is not None:
            await propagated(st.cluster, revision)
        await view.settle(generation)
    return result


async def _audit(
    request: Request, st: AppState, who: Principal, action: str, target: str, **detail: str
) -> None:
    client = request.client.host if request.client else None
    await st.audit.record(AuditEvent(action, who.name, target, client=client, detail=detail))


# -- users ------------------------------------------------------------------------------


async def list_users(request: Request, st: AppState, who: Principal, body: Any) -> Any:
    await require_admin(who)
    n, last = page_of(request)
    users, more = await accounts_of(st).users(n, last)
    return {
        "users": [_user_doc(u) for u in users],
        "more": more,
        "last": users[-1].name if users else None,
    }


async def add_user(request: Request, st: AppState, who: Principal, body: dict[str, Any]) -> Any:
    await require_admin(who)
    name = name_of(body["name"], "user")
    password = password_of(body.get("password"))
    generated = password is None
    password = password or secrets.token_urlsafe(18)
    admin = flag_of(body.get("admin"), "admin")
    hashed = await asyncio.to_thread(hash_password, password)
    user = UserRecord(name, hashed, "admin" if admin else "user", admin=admin)
    await accounts_of(st).add_user(user)
    await _audit(request, st, who, "user.add", f"user:{name}", admin=str(admin).lower())
    doc = _user_doc(user)
    if generated:
        doc["password"] = password
    return doc


async def passwd(request: Request, st: AppState, who: Principal, body: dict[str, Any]) -> Any:
    name = name_of(body["name"], "user")
    if name != who.name:
        await require_admin(who)
    password = password_of(body.get("password"))
    generated = password is None
    password = password or secrets.token_urlsafe(18)
    accounts = accounts_of(st)
    if await accounts.user(name) is None:
        raise AccountMissing(f"no user {name}")
    hashed = await asyncio.to_thread(hash_password, password)
    user = await accounts.change_user(name, lambda u: dataclasses.replace(u, password_hash=hashed))
    await _audit(request, st, who, "user.passwd", f"user:{name}")
    doc = _user_doc(user)
    if generated:
        doc["password"] = password
    return doc


async def _set_disabled(
    request: Request, st: AppState, who: Principal, body: dict[str, Any], disabled: bool
) -> Any:
    await require_admin(who)
    name = name_of(body["name"], "user")

    def changed(u: UserRecord) -> UserRecord:
        if not disabled or u.disabled:
            return dataclasses.replace(u, disabled=disabled)
        # Every session and token made so far dies now and stays dead after an enable
        # (an account disabled as compromised comes back without the intruder's sessions).
        return dataclasses.replace(u, disabled=True, sessions_ended=u.sessions_ended + 1)

    user = await accounts_of(st).change_user(name, changed)
    action = "user.disable" if disabled else "user.enable"
    await _audit(request, st, who, action, f"user:{name}")
    return _user_doc(user)


async def disable_user(request: Request, st: AppState, who: Principal, body: Any) -> Any:
    return await _set_disabled(request, st, who, body, True)


async def enable_user(request: Request, st: AppState, who: Principal, body: Any) -> Any:
    return await _set_disabled(request, st, who, body, False)


async def delete_user(request: Request, st: AppState, who: Principal, body: Any) -> Any:
    await require_admin(who)
    name = name_of(body["name"], "user")
    await accounts_of(st).delete_user(name)
    await _audit(request, st, who, "user.delete", f"user:{name}")
    return {"deleted": name}


# -- organizations and teams --------------------------------------------------------------


async def list_orgs(request: Request, st: AppState, who: Principal, body: Any) -> Any:
    await require_admin(who)
    n, last = page_of(request)
    orgs, more = await accounts_of(st).orgs(n, last)
    names = [o.name for o in orgs]
    return {"orgs": names, "more": more, "last": names[-1] if names else None}


async def add_org(request: Request, st: AppState, who: Principal, body: Any) -> Any:
    await require_admin(who)
    name = name_of(body["name"], "organization")
    await accounts_of(st).add_org(name)
    await _audit(request, st, who, "org.add", f"org:{name}")
    return {"name": name}


async def delete_org(request: Request, st: AppState, who: Principal, body: Any) -> Any:
    await require_admin(who)
    name = name_of(body["name"], "organization")
    await accounts_of(st).delete_org(name)
    await _audit(request, st, who, "org.delete", f"org:{name}")
    return {"deleted": name}


def _team(body: dict[str, Any]) -> tuple[str, str]:
    return name_of(body["org"], "organization"), name_of(body["team"], "team")


async def list_teams(request: Request, st: AppState, who: Principal, body: Any) -> Any:
    await require_admin(who)
    org = name_of(request.query_params.get("org"), "organization")
    n, last = page_of(request)
    accounts = accounts_of(st)
    if await accounts.org(org) is None:
        raise AccountMissing(f"no organization {org}")
    teams, more = await accounts.teams(org, n, last)
    docs = [{"org": t.org, "team": t.name, "members": list(t.members)} for t in teams]
    return {"teams": docs, "more": more, "last": teams[-1].name if teams else None}


async def add_team(request: Request, st: AppState, who: Principal, body: Any) -> Any:
    await require_admin(who)
    org, team = _team(body)
    await accounts_of(st).add_team(org, team)
    await _audit(request, st, who, "team.add", f"team:{org}/{team}")
    return {"org": org, "team": team}


async def delete_team(request: Request, st: AppState, who: Principal, body: Any) -> Any:
    await require_admin(who)
    org, team = _team(body)
    await accounts_of(st).delete_team(org, team)
    await _audit(request, st, who, "team.delete", f"team:{org}/{team}")
    return {"deleted": f"{org}/{team}"}


async def add_member(request: Request, st: AppState, who: Principal, body: Any) -> Any:
    await require_admin(who)
    org, team = _team(body)
    user = name_of(body["user"], "user")
    await accounts_of(st).add_member(org, team, user)
    await _audit(request, st, who, "team.add-member", f"team:{org}/{team}", user=user)
    return {"org": org, "team": team, "user": user}


async def remove_member(request: Request, st: AppState, who: Principal, body: Any) -> Any:
    await require_admin(who)
    org, team = _team(body)
    user = name_of(body["user"], "user")
    await accounts_of(st).remove_member(org, team, user)
    await _audit(request, st, who, "team.remove-member", f"team:{org}/{team}", user=user)
    return {"org": org, "team": team, "user": user}


# -- grants and public repositories ---------------------------------------------------------


def _grant_doc(grant: GrantRecord) -> dict[str, str]:
    return {"on": grant.target, "to": grant.subject, "role": grant.role}


async def list_grants(request: Request, st: AppState, who: Principal, body: Any) -> Any:
    raw_on = request.query_params.get("on")
    on = target_of(raw_on) if raw_on else None
    if on is None:
        await require_admin(who)
    else:
        await require_namespace_admin(st, who, on)
    n, last = page_of(request)
    grants, more = await accounts_of(st).grants(on, n, last)
    # `last` to continue with: the key after the target's prefix (subject, or target@subject).
    cont = None
    if grants:
        g = grants[-1]
        cont = g.subject if on else f"{g.target}@{g.subject}"
    return {"grants": [_grant_doc(g) for g in grants], "more": more, "last": cont}


async def grant(request: Request, st: AppState, who: Principal, body: Any) -> Any:
    on = target_of(body["on"])
    await require_namespace_admin(st, who, on)
    role, to = body["role"], subject_of(body["to"])
    if role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}")
    await accounts_of(st).put_grant(GrantRecord(on, to, role))
    await _audit(request, st, who, "grant", on, to=to, role=role)
    return {"on": on, "to": to, "role": role}


async def revoke(request: Request, st: AppState, who: Principal, body: Any) -> Any:
    on = target_of(body["on"])
    await require_namespace_admin(st, who, on)
    to = subject_of(body["to"])
    await accounts_of(st).delete_grant(on, to)
    await _audit(request, st, who, "revoke", on, to=to)
    return {"on": on, "to": to, "revoked": True}


async def set_public(request: Request, st: AppState, who: Principal, body: Any) -> Any:
    repo = target_of(body["repo"])
    if "/" not in repo:
        raise Invalid("give a repository, NAMESPACE/REPO")
    await require_namespace_admin(st, who, repo)
    public = body.get("public", True)
    if not isinstance(public, bool):
        raise Invalid("public must be true or false")
    await accounts_of(st).set_public(repo, public)
    await _audit(request, st, who, "repo.public" if public else "repo.private", repo)
    return {"repo": repo, "public": public}


def account_routes() -> list[Route]:
    def post(path: str, handler: Handler) -> Route:
        return Route(path, endpoint(handler), methods=["POST"])

    def get(path: str, handler: Handler) -> Route:
        return Route(path, endpoint(handler), methods=["GET"])

    return [
        get("/api/v0/users", list_users),
        post("/api/v0/users", add_user),
        post("/api/v0/users/passwd", passwd),
        post("/api/v0/users/disable", disable_user),
        post("/api/v0/users/enable", enable_user),
        post("/api/v0/users/delete", delete_user),
        get("/api/v0/orgs", list_orgs),
        post("/api/v0/orgs", add_org),
        post("/api/v0/orgs/delete", delete_org),
        get("/api/v0/teams", list_teams),
        post("/api/v0/teams", add_team),
        post("/api/v0/teams/delete", delete_team),
        post("/api/v0/teams/add-member", add_member),
        post("/api/v0/teams/remove-member", remove_member),
        get("/api/v0/grants", list_grants),
        post("/api/v0/grants", grant),
        post("/api/v0/grants/revoke", revoke),
        post("/api/v0/repositories/public", set_public),
    ]
