"""`moorage user|org|team|grant|revoke|grants|repo`: accounts and permissions (DESIGN.md §7,
issue #9), through the admin API of `--existing` (api/accounts.py)."""

from __future__ import annotations

import sys
import urllib.parse
from collections.abc import Iterator
from typing import Any

import click

from moorage.cli.base import Failed, Group, emit
from moorage.cli.options import admin_client, admin_options, json_option
from moorage.errors import MoorageError

_PAGE = 1000


def _call(
    existing: str, username: str, password: str | None, method: str, path: str, body: Any = None
) -> Any:
    client = admin_client(existing, username, password)
    try:
        return client.call(method, path, body)
    except MoorageError as exc:
        raise Failed(str(exc)) from None


def _pages(
    existing: str, username: str, password: str | None, path: str, field: str, **query: str
) -> Iterator[Any]:
    """Every item of a listing, one bounded request per page."""
    client = admin_client(existing, username, password)
    last: str | None = None
    while True:
        params = {**query, "n": str(_PAGE), **({"last": last} if last else {})}
        try:
            doc = client.call("GET", f"{path}?{urllib.parse.urlencode(params)}")
        except MoorageError as exc:
            raise Failed(str(exc)) from None
        yield from doc[field]
        if not doc.get("more") or not doc.get("last"):
            return
        last = doc["last"]


def _read_password(from_stdin: bool) -> str | None:
    if not from_stdin:
        return None
    text = sys.stdin.readline().rstrip("\r\n")
    if not text:
        raise click.UsageError("--password-stdin: standard input holds no password")
    return text


# -- user ------------------------------------------------------------------------------------


@click.group("user", cls=Group)
def user() -> None:
    """Local accounts: add, list, change passwords, disable, enable, delete."""


@user.command("add")
@admin_options
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the new user's password from stdin.")
@click.option("--admin", "make_admin", is_flag=True, help="Make the user a cluster admin.")
@json_option
def user_add(
    existing: str,
    username: str,
    password: str | None,
    name: str,
    password_stdin: bool,
    make_admin: bool,
    as_json: bool,
) -> None:
    """Add the user NAME (without --password-stdin a password is generated and printed
    once). A user NAME is admin of the namespace NAME."""
    body: dict[str, Any] = {"name": name, "admin": make_admin}
    new_password = _read_password(password_stdin)
    if new_password is not None:
        body["password"] = new_password
    doc = _call(existing, username, password, "POST", "/api/v0/users", body)
    text = f"user {doc['name']} added" + (" (cluster admin)" if doc["admin"] else "")
    if "password" in doc:
        text += f"\npassword: {doc['password']}\n  shown once: the cluster keeps only its hash"
    emit(as_json, doc, text)


@user.command("list")
@admin_options
@json_option
def user_list(existing: str, username: str, password: str | None, as_json: bool) -> None:
    """Every user, with whether it is a cluster admin or disabled."""
    users = list(_pages(existing, username, password, "/api/v0/users", "users"))
    lines = [
        f"{u['name']}" + (" admin" if u["admin"] else "") + (" disabled" if u["disabled"] else "")
        for u in users
    ]
    emit(as_json, {"users": users}, "\n".join(lines) or "no users")


@user.command("passwd")
@admin_options
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the new password from stdin.")
@json_option
def user_passwd(
    existing: str,
    username: str,
    password: str | None,
    name: str,
    password_stdin: bool,
    as_json: bool,
) -> None:
    """Set NAME's password (generated and printed once without --password-stdin)."""
    body: dict[str, Any] = {"name": name}
    new_password = _read_password(password_stdin)
    if new_password is not None:
        body["password"] = new_password
    doc = _call(existing, username, password, "POST", "/api/v0/users/passwd", body)
    text = f"password of {name} changed"
    if "password" in doc:
        text += f"\npassword: {doc['password']}\n  shown once: the cluster keeps only its hash"
    emit(as_json, doc, text)


def _user_change(action: str, help_text: str) -> click.Command:
    @admin_options
    @click.argument("name")
    @json_option
    def command(
        existing: str, username: str, password: str | None, name: str, as_json: bool
    ) -> None:
        doc = _call(existing, username, password, "POST", f"/api/v0/users/{action}", {"name": name})
        emit(as_json, doc, f"user {name}: {action}d")

    command.__doc__ = help_text
    return click.command(action)(command)


user.add_command(
    _user_change("disable", "Disable NAME: it loses every access at once, on every replica.")
)
user.add_command(_user_change("enable", "Enable NAME again."))
user.add_command(
    _user_change(
        "delete", "Delete NAME, its team memberships and its grants (its repositories stay)."
    )
)

# -- org and team ------------------------------------------------------------------------------


@click.group("org", cls=Group)
def org() -> None:
    """Organizations: namespaces that teams belong to."""


@org.command("add")
@admin_options
@click.argument("name")
@json_option
def org_add(existing: str, username: str, password: str | None, name: str, as_json: bool) -> None:
    """Add the organization NAME (the namespace NAME/...)."""
    doc = _call(existing, username, password, "POST", "/api/v0/orgs", {"name": name})
    emit(as_json, doc, f"organization {name} added")


@org.command("list")
@admin_options
@json_option
def org_list(existing: str, username: str, password: str | None, as_json: bool) -> None:
    """Every organization."""
    orgs = list(_pages(existing, username, password, "/api/v0/orgs", "orgs"))
    emit(as_json, {"orgs": orgs}, "\n".join(orgs) or "no organizations")


@org.command("delete")
@admin_options
@click.argument("name")
@json_option
def org_delete(
    existing: str, username: str, password: str | None, name: str, as_json: bool
) -> None:
    """Delete the organization NAME and its teams (its repositories stay)."""
    doc = _call(existing, username, password, "POST", "/api/v0/orgs/delete", {"name": name})
    emit(as_json, doc, f"organization {name} deleted")


def _split_team(value: str) -> tuple[str, str]:
    org_name, sep, team_name = value.partition("/")
    if not sep or not org_name or not team_name:
        raise click.BadParameter(f"expected ORG/TEAM, not {value!r}")
    return org_name, team_name


@click.group("team", cls=Group)
def team() -> None:
    """Teams inside an organization, and their members."""


@team.command("add")
@admin_options
@click.argument("org_team", metavar="ORG/TEAM")
@json_option
def team_add(
    existing: str, username: str, password: str | None, org_team: str, as_json: bool
) -> None:
    """Add the team ORG/TEAM."""
    o, t = _split_team(org_team)
    doc = _call(existing, username, password, "POST", "/api/v0/teams", {"org": o, "team": t})
    emit(as_json, doc, f"team {o}/{t} added")


@team.command("delete")
@admin_options
@click.argument("org_team", metavar="ORG/TEAM")
@json_option
def team_delete(
    existing: str, username: str, password: str | None, org_team: str, as_json: bool
) -> None:
    """Delete the team ORG/TEAM and its grants."""
    o, t = _split_team(org_team)
    body = {"org": o, "team": t}
    doc = _call(existing, username, password, "POST", "/api/v0/teams/delete", body)
    emit(as_json, doc, f"team {o}/{t} deleted")


def _member_change(action: str, help_text: str) -> click.Command:
    @admin_options
    @click.argument("org_team", metavar="ORG/TEAM")
    @click.argument("member", metavar="USER")
    @json_option
    def command(
        existing: str,
        username: str,
        password: str | None,
        org_team: str,
        member: str,
        as_json: bool,
    ) -> None:
        o, t = _split_team(org_team)
        body = {"org": o, "team": t, "user": member}
        doc = _call(existing, username, password, "POST", f"/api/v0/teams/{action}", body)
        verb = "added to" if action == "add-member" else "removed from"
        emit(as_json, doc, f"{member} {verb} {o}/{t}")

    command.__doc__ = help_text
    return click.command(action)(command)


team.add_command(_member_change("add-member", "Make USER a member of ORG/TEAM."))
team.add_command(_member_change("remove-member", "Remove USER from ORG/TEAM."))


@team.command("list")
@admin_options
@click.argument("org_name", metavar="ORG")
@json_option
def team_list(
    existing: str, username: str, password: str | None, org_name: str, as_json: bool
) -> None:
    """The teams of ORG and their members."""
    teams = list(_pages(existing, username, password, "/api/v0/teams", "teams", org=org_name))
    lines = [f"{t['org']}/{t['team']}: {', '.join(t['members']) or '(no members)'}" for t in teams]
    emit(as_json, {"teams": teams}, "\n".join(lines) or f"no teams in {org_name}")


# -- grant, revoke, grants, repo ------------------------------------------------------------

_on = click.option("--on", "target", required=True, help="NAMESPACE or NAMESPACE/REPO.")
_to = click.option("--to", "subject", required=True, help="user:NAME or team:ORG/TEAM.")


@click.command("grant")
@admin_options
@click.argument("role", type=click.Choice(["read", "write", "admin"]))
@_on
@_to
@json_option
def grant(
    existing: str,
    username: str,
    password: str | None,
    role: str,
    target: str,
    subject: str,
    as_json: bool,
) -> None:
    """Give ROLE on a namespace or repository: read = pull, write = pull and push, admin =
    pull, push and delete (and granting on it). Replaces an earlier role of the subject."""
    body = {"role": role, "on": target, "to": subject}
    doc = _call(existing, username, password, "POST", "/api/v0/grants", body)
    emit(as_json, doc, f"{subject} has {role} on {target}")


@click.command("revoke")
@admin_options
@click.argument("role", type=click.Choice(["read", "write", "admin"]), required=False)
@_on
@_to
@json_option
def revoke(
    existing: str,
    username: str,
    password: str | None,
    role: str | None,
    target: str,
    subject: str,
    as_json: bool,
) -> None:
    """Take back the grant on a namespace or repository from a user or team (ROLE, if
    given, is not checked: a subject holds one role per target)."""
    body = {"on": target, "to": subject}
    doc = _call(existing, username, password, "POST", "/api/v0/grants/revoke", body)
    emit(as_json, doc, f"{subject} has no grant on {target} any more")


@click.group("grants", cls=Group)
def grants() -> None:
    """Listing grants."""


@grants.command("list")
@admin_options
@click.option("--on", "target", default=None, help="Only the grants on this NAMESPACE[/REPO].")
@json_option
def grants_list(
    existing: str, username: str, password: str | None, target: str | None, as_json: bool
) -> None:
    """Every grant (or those on --on)."""
    query = {"on": target} if target else {}
    found = list(_pages(existing, username, password, "/api/v0/grants", "grants", **query))
    lines = [f"{g['on']}  {g['to']}  {g['role']}" for g in found]
    emit(as_json, {"grants": found}, "\n".join(lines) or "no grants")


@click.group("repo", cls=Group)
def repo() -> None:
    """Repository settings."""


@repo.command("set-public")
@admin_options
@click.argument("name", metavar="NAMESPACE/REPO")
@click.option("--off", is_flag=True, help="Make it private again.")
@json_option
def set_public(
    existing: str, username: str, password: str | None, name: str, off: bool, as_json: bool
) -> None:
    """Let anyone, anonymous clients included, pull NAMESPACE/REPO (--off: only grants)."""
    body = {"repo": name, "public": not off}
    doc = _call(existing, username, password, "POST", "/api/v0/repositories/public", body)
    emit(as_json, doc, f"{name} is {'public' if doc['public'] else 'private'}")


COMMANDS = [user, org, team, grant, revoke, grants, repo]
