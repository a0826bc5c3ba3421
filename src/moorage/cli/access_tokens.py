"""`moorage token create/list/revoke`: access tokens and robot accounts (DESIGN.md §7;
moorage.auth.access_tokens). A token is the password of `docker login`, podman, skopeo and
oras; it is shown once."""

from __future__ import annotations

import datetime
from typing import Any

import click

from moorage.cli.base import Failed, Group, emit
from moorage.cli.options import admin_client, admin_options, json_option
from moorage.errors import MoorageError


def _when(ts: float | None, never: str = "never") -> str:
    if ts is None:
        return never
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _call(client: Any, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    try:
        return client.call(method, path, body)
    except MoorageError as exc:
        raise Failed(str(exc)) from None


@click.group("token", cls=Group)
def token() -> None:
    """Access tokens and robot accounts: scoped, expiring, revocable registry passwords."""


@token.command("create")
@admin_options
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    help="What the token may do: repository:NAME:ACTIONS (NAME a repository or NAMESPACE/*; "
    "ACTIONS from pull, push, delete). Repeat for several.",
)
@click.option(
    "--robot",
    default=None,
    help="Make a token of the robot account robot+NAME (cluster admins only) instead of a "
    "personal token of --username.",
)
@click.option(
    "--expires",
    default="90d",
    show_default=True,
    help="Lifetime: 30d, 12h, 2w, 1y, or 'never'.",
)
@json_option
def create(
    existing: str,
    username: str,
    password: str | None,
    scopes: tuple[str, ...],
    robot: str | None,
    expires: str,
    as_json: bool,
) -> None:
    """Create an access token (shown once: the cluster keeps only its hash). A personal
    token acts as --username within its scope; a robot's token may do exactly its scope."""
    from moorage.auth.access_tokens import normalize_scopes, parse_expiry, robot_name

    try:
        normalize_scopes(list(scopes))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--scope") from None
    if not expires.strip():
        raise click.BadParameter(
            "give a lifetime such as 30d, 12h, 2w, 1y or 'never' (leave --expires out for "
            "the default, 90d)",
            param_hint="--expires",
        )
    try:
        parse_expiry(expires)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--expires") from None
    if robot is not None:
        try:
            robot_name(robot)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--robot") from None
    client = admin_client(existing, username, password)
    body: dict[str, Any] = {"scopes": list(scopes), "expires": expires}
    if robot is not None:
        body["robot"] = robot
    doc = _call(client, "POST", "/api/v0/tokens", body)
    registry = str(client.urls[0]).split("://", 1)[-1].rstrip("/")
    emit(
        as_json,
        doc,
        f"Access token {doc['token']}\n"
        f"  id {doc['id']}, user name {doc['username']}, expires "
        f"{_when(doc['expires_at'])}\n"
        f"  scope {' '.join(doc['scopes'])}\n"
        "  shown once: the cluster keeps only its hash. Log in with it as the password:\n"
        f"  podman login -u {doc['username']} --password-stdin {registry}",
    )


def _line(t: dict[str, Any]) -> str:
    kind = "robot" if t["robot"] else "user "
    state = "EXPIRED" if t["expired"] else f"expires {_when(t['expires_at'])}"
    used = _when(t["last_used_at"], "never used")
    used = used if t["last_used_at"] is None else f"used {used}"
    return (
        f"{t['id']}  {kind} {t['owner']}  {' '.join(t['scopes'])}  "
        f"created {_when(t['created_at'])}  {state}  {used}"
    )


@token.command("list")
@admin_options
@click.option("--user", default=None, help="Only the tokens of this user (or robot+NAME).")
@json_option
def list_(
    existing: str, username: str, password: str | None, user: str | None, as_json: bool
) -> None:
    """Tokens: id, owner, scope, created, expiry and last use (never the token). An admin
    sees everybody's; a user its own."""
    import urllib.parse

    client = admin_client(existing, username, password)
    tokens: list[dict[str, Any]] = []
    last: str | None = None
    while True:
        query = {k: v for k, v in (("user", user), ("last", last)) if v}
        path = "/api/v0/tokens" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        doc = _call(client, "GET", path)
        tokens += doc["tokens"]
        last = doc.get("next")
        if not last:
            break
    emit(as_json, {"tokens": tokens}, "\n".join(_line(t) for t in tokens) or "no tokens")


@token.command("revoke")
@admin_options
@click.argument("token_id", metavar="ID")
@json_option
def revoke(
    existing: str, username: str, password: str | None, token_id: str, as_json: bool
) -> None:
    """Revoke the token ID (from 'token list', or the token itself): refused at once on
    every replica."""
    client = admin_client(existing, username, password)
    doc = _call(client, "POST", "/api/v0/tokens/revoke", {"id": token_id})
    emit(as_json, doc, f"revoked {doc['id']} ({doc['owner']})")


COMMANDS = [token]
