"""Administration of accounts: users, organizations and their teams, grants and public
repositories (what `moorage user|org|team|grant|revoke|repo set-public` do).

Listings read one page of `PAGE` records at a time (a "Next page" link continues after the
last one shown). Changes go through the handlers of api/accounts.py (see web/admin.py) and
are answered once every replica can see them (`accounts.settled`), like the API's.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from moorage.api import accounts
from moorage.api.account_input import Invalid, name_of, target_of
from moorage.api.state import AppState
from moorage.meta.account_records import ROLES
from moorage.meta.accounts import AccountMissing
from moorage.web import admin
from moorage.web.admin import ADMIN, PAGE, field
from moorage.web.common import Viewer


def _after(request: Request) -> str | None:
    return request.query_params.get("after", "")[:512] or None


async def _call(
    request: Request, st: AppState, viewer: Viewer, handler: accounts.Handler, body: Any
) -> Any:
    return await accounts.settled(st, handler(request, st, viewer.principal, body))


# -- users ------------------------------------------------------------------------------


async def users(request: Request, st: AppState, viewer: Viewer) -> Response:
    found, more = await accounts.accounts_of(st).users(PAGE, _after(request))
    return admin.render(
        request,
        "admin/users.html",
        viewer,
        users=found,
        next_after=found[-1].name if more and found else None,
    )


async def add_user(request: Request, st: AppState, viewer: Viewer) -> Response:
    password = field(request, "password", 2000)
    body = {
        "name": field(request, "name"),
        "password": password or None,
        "admin": field(request, "admin") == "on",
    }
    doc = await _call(request, st, viewer, accounts.add_user, body)
    if "password" in doc:  # generated: shown this once
        return admin.render(request, "admin/password.html", viewer, user=doc["name"],
                            password=doc["password"], created=True)  # fmt: skip
    return admin.done(f"{ADMIN}/users", done="user.add", target=doc["name"])


_USER_ACTIONS = {
    "disable": (accounts.disable_user, "user.disable"),
    "enable": (accounts.enable_user, "user.enable"),
    "delete": (accounts.delete_user, "user.delete"),
}


async def user_action(request: Request, st: AppState, viewer: Viewer) -> Response:
    """Disable, enable or delete a user (delete: GET asks to confirm, the POST does it)."""
    what = request.path_params["action"]
    name = name_of(field(request, "name"), "user")
    if what not in _USER_ACTIONS:
        raise Invalid(f"no such action {what[:40]!r}")
    if request.method == "GET":
        if what != "delete":
            raise Invalid("use the buttons of the Users page")
        return admin.confirm(
            request,
            viewer,
            title=f"Delete user {name}?",
            explain="The account, its grants and its team memberships go away at once; its "
            "access tokens stop working. This cannot be undone.",
            action=f"{ADMIN}/users/delete",
            fields={"name": name},
            button=f"Delete user {name}",
            cancel=f"{ADMIN}/users",
        )
    handler, code = _USER_ACTIONS[what]
    await _call(request, st, viewer, handler, {"name": name})
    return admin.done(f"{ADMIN}/users", done=code, target=name)


async def reset_password(request: Request, st: AppState, viewer: Viewer) -> Response:
    """GET: the confirmation (with an optional new password); POST: the reset."""
    name = name_of(field(request, "name"), "user")
    if request.method == "GET":
        if await accounts.accounts_of(st).user(name) is None:
            raise AccountMissing(f"no user {name}")
        return admin.render(request, "admin/passwd.html", viewer, user=name)
    password = field(request, "password", 2000)
    doc = await _call(request, st, viewer, accounts.passwd,
                      {"name": name, "password": password or None})  # fmt: skip
    if "password" in doc:
        return admin.render(request, "admin/password.html", viewer, user=name,
                            password=doc["password"], created=False)  # fmt: skip
    return admin.done(f"{ADMIN}/users", done="user.passwd", target=name)


# -- organizations and teams --------------------------------------------------------------


async def orgs(request: Request, st: AppState, viewer: Viewer) -> Response:
    found, more = await accounts.accounts_of(st).orgs(PAGE, _after(request))
    names = [o.name for o in found]
    return admin.render(
        request,
        "admin/orgs.html",
        viewer,
        orgs=names,
        next_after=names[-1] if more and names else None,
    )


async def add_org(request: Request, st: AppState, viewer: Viewer) -> Response:
    doc = await _call(request, st, viewer, accounts.add_org, {"name": field(request, "name")})
    return admin.done(f"{ADMIN}/org", name=doc["name"], done="org.add", target=doc["name"])


async def org(request: Request, st: AppState, viewer: Viewer) -> Response:
    name = name_of(field(request, "name"), "organization")
    store = accounts.accounts_of(st)
    if await store.org(name) is None:
        raise AccountMissing(f"no organization {name}")
    teams, more = await store.teams(name, PAGE, _after(request))
    return admin.render(
        request,
        "admin/org.html",
        viewer,
        org=name,
        teams=teams,
        next_after=teams[-1].name if more and teams else None,
    )


async def delete_org(request: Request, st: AppState, viewer: Viewer) -> Response:
    name = name_of(field(request, "name"), "organization")
    if request.method == "GET":
        return admin.confirm(
            request,
            viewer,
            title=f"Delete organization {name}?",
            explain="The organization goes away (the store refuses while it still has teams: "
            "delete them first). Its repositories stay. This cannot be undone.",
            action=f"{ADMIN}/orgs/delete",
            fields={"name": name},
            button=f"Delete organization {name}",
            cancel=f"{ADMIN}/org?name={name}",
        )
    await _call(request, st, viewer, accounts.delete_org, {"name": name})
    return admin.done(f"{ADMIN}/orgs", done="org.delete", target=name)


def _team_body(request: Request) -> dict[str, str]:
    return {"org": field(request, "org"), "team": field(request, "team")}


async def team_action(request: Request, st: AppState, viewer: Viewer) -> Response:
    """Add or delete a team (delete: GET asks to confirm), add or remove a member."""
    what = request.path_params["action"]
    body = _team_body(request)
    org_name = name_of(body["org"], "organization")
    back = f"{ADMIN}/org"
    if what == "delete" and request.method == "GET":
        team = name_of(body["team"], "team")
        return admin.confirm(
            request,
            viewer,
            title=f"Delete team {org_name}/{team}?",
            explain="The team, its members' membership and its grants go away at once. This "
            "cannot be undone.",
            action=f"{ADMIN}/teams/delete",
            fields={"org": org_name, "team": team},
            button=f"Delete team {org_name}/{team}",
            cancel=f"{back}?name={org_name}",
        )
    if request.method == "GET":
        raise Invalid("use the buttons of the organization's page")
    handlers = {
        "add": accounts.add_team,
        "delete": accounts.delete_team,
        "add-member": accounts.add_member,
        "remove-member": accounts.remove_member,
    }
    if what not in handlers:
        raise Invalid(f"no such action {what[:40]!r}")
    if what.endswith("member"):
        body["user"] = field(request, "user")
    await _call(request, st, viewer, handlers[what], body)
    target = f"{body['org']}/{body['team']}" + (f" {body['user']}" if "user" in body else "")
    return admin.done(back, name=org_name, done=f"team.{what}", target=target)


# -- grants and public repositories -------------------------------------------------------


async def grants(request: Request, st: AppState, viewer: Viewer) -> Response:
    raw_on = field(request, "on")
    on = target_of(raw_on) if raw_on else None
    found, more = await accounts.accounts_of(st).grants(on, PAGE, _after(request))
    cont = None
    if more and found:
        g = found[-1]
        cont = g.subject if on else f"{g.target}@{g.subject}"
    public = await accounts.accounts_of(st).is_public(on) if on and "/" in on else None
    return admin.render(
        request,
        "admin/grants.html",
        viewer,
        on=on or "",
        grants=found,
        roles=ROLES,
        public=public,
        next_after=cont,
    )


async def grant(request: Request, st: AppState, viewer: Viewer) -> Response:
    body = {"on": field(request, "on"), "to": field(request, "to"), "role": field(request, "role")}
    doc = await _call(request, st, viewer, accounts.grant, body)
    return admin.done(
        f"{ADMIN}/grants", on=doc["on"], done="grant", target=f"{doc['role']} to {doc['to']}"
    )


async def revoke(request: Request, st: AppState, viewer: Viewer) -> Response:
    body = {"on": field(request, "on"), "to": field(request, "to")}
    doc = await _call(request, st, viewer, accounts.revoke, body)
    return admin.done(f"{ADMIN}/grants", on=doc["on"], done="revoke", target=doc["to"])


async def set_public(request: Request, st: AppState, viewer: Viewer) -> Response:
    body = {"repo": field(request, "repo"), "public": field(request, "public") == "true"}
    doc = await _call(request, st, viewer, accounts.set_public, body)
    code = "public" if doc["public"] else "private"
    return admin.done(f"{ADMIN}/grants", on=doc["repo"], done=code, target=doc["repo"])
