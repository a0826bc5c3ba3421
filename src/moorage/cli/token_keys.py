"""`moorage token-keys list/rotate`: the keys that sign the registry's tokens (issue #9;
moorage.auth.signing_keys). A new key is made automatically when the newest is older than
the rotation period; `rotate` makes one now (after a suspected leak, or to test a client).
Tokens signed by older keys keep verifying until those keys retire."""

from __future__ import annotations

import datetime
from typing import Any

import click

from moorage.cli.base import Failed, Group, emit
from moorage.cli.options import admin_client, admin_options, json_option
from moorage.errors import MoorageError


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _lines(keys: list[dict[str, Any]]) -> list[str]:
    return [
        f"{k['kid']}  {'signing  ' if k['signing'] else 'verifying'}  "
        f"made {_when(k['created_at'])}, verifies until {_when(k['verifies_until'])}"
        for k in keys
    ]


@click.group("token-keys", cls=Group)
def token_keys() -> None:
    """The keys that sign the registry's Bearer tokens (Docker token flow)."""


@token_keys.command("list")
@admin_options
@json_option
def list_(existing: str, username: str, password: str | None, as_json: bool) -> None:
    """The signing keys, newest first: key id (RFC 7638 thumbprint), which one signs, ages."""
    client = admin_client(existing, username, password)
    try:
        doc = client.call("GET", "/api/v0/token-keys")
    except MoorageError as exc:
        raise Failed(str(exc)) from None
    emit(
        as_json,
        doc,
        "\n".join(_lines(doc["keys"])) or "no signing key yet (one is made with the first token)",
    )


@token_keys.command("rotate")
@admin_options
@json_option
def rotate(existing: str, username: str, password: str | None, as_json: bool) -> None:
    """Make a new signing key now: new tokens are signed with it on every replica; tokens
    signed by the older keys keep working until they expire."""
    client = admin_client(existing, username, password)
    try:
        doc = client.call("POST", "/api/v0/token-keys/rotate", {})
    except MoorageError as exc:
        raise Failed(str(exc)) from None
    emit(as_json, doc, f"new signing key {doc['kid']}\n" + "\n".join(_lines(doc["keys"])))


COMMANDS = [token_keys]
