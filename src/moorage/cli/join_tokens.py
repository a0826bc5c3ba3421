"""`moorage join-token create/list/revoke`: short-lived single-use tokens that let one new
replica join without the admin password (DESIGN.md §7; moorage.cluster.join_tokens)."""

from __future__ import annotations

import datetime
from typing import Any

import click

from moorage.cli.base import Failed, Group, emit
from moorage.cli.options import admin_client, admin_options, json_option
from moorage.errors import MoorageError


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def join_command(url: str, token: str, ca_fingerprint: str) -> str:
    """The command that joins a replica with `token` (its own flags to be filled in)."""
    return (
        f"moorage join --existing {url} --token {token} --ca-fingerprint {ca_fingerprint} "
        "--data-dir NEW_DIR --http-addr HOST:PORT"
    )


def create_token(client: Any, ttl: str) -> dict[str, Any]:
    doc: dict[str, Any] = client.call("POST", "/api/v0/join-tokens", {"ttl": ttl})
    return doc


@click.group("join-token", cls=Group)
def join_token() -> None:
    """Join tokens: let one new replica join without the admin password."""


@join_token.command("create")
@admin_options
@click.option(
    "--ttl", default="1h", show_default=True, help="How long it is valid: 90s, 30m, 1h (max 24h)."
)
@json_option
def create(existing: str, username: str, password: str | None, ttl: str, as_json: bool) -> None:
    """Make a single-use join token (shown once; the cluster keeps only its hash) and print
    the join command that uses it."""
    from moorage.cluster.join_tokens import parse_ttl
    from moorage.recovery.client import fetch_ca

    try:
        parse_ttl(ttl)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ttl") from None
    client = admin_client(existing, username, password)
    try:
        doc = create_token(client, ttl)
        ca = fetch_ca(client.urls[:1]).fingerprint
    except MoorageError as exc:
        raise Failed(str(exc)) from None
    doc["ca_fingerprint"] = ca
    doc["join_command"] = join_command(client.urls[0], doc["token"], ca)
    emit(
        as_json,
        doc,
        f"Join token {doc['token']}\n"
        f"  id {doc['id']}, single use, expires {_when(doc['expires_at'])}\n"
        "  shown once: the cluster keeps only its hash. On the new replica's host run:\n"
        f"  {doc['join_command']}",
    )


@join_token.command("list")
@admin_options
@json_option
def list_(existing: str, username: str, password: str | None, as_json: bool) -> None:
    """The unused join tokens (ids and expiry; never the tokens themselves)."""
    client = admin_client(existing, username, password)
    try:
        doc = client.call("GET", "/api/v0/join-tokens")
    except MoorageError as exc:
        raise Failed(str(exc)) from None
    lines = [f"{t['id']}  expires {_when(t['expires_at'])}" for t in doc["tokens"]]
    emit(as_json, doc, "\n".join(lines) or "no unused join tokens")


@join_token.command("revoke")
@admin_options
@click.argument("token")
@json_option
def revoke(existing: str, username: str, password: str | None, token: str, as_json: bool) -> None:
    """Revoke TOKEN (the token itself, or its id from 'join-token list')."""
    client = admin_client(existing, username, password)
    try:
        doc = client.call("POST", "/api/v0/join-tokens/revoke", {"token": token})
    except MoorageError as exc:
        raise Failed(str(exc)) from None
    emit(as_json, doc, "revoked")


COMMANDS = [join_token]
