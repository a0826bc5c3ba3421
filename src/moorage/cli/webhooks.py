"""`moorage webhook add/list/remove/test/deliveries`: registry events POSTed to receivers
in the Distribution notification format, at least once, from a queue in etcd
(moorage.cluster.webhooks; the admin API's `/api/v0/webhooks`)."""

from __future__ import annotations

import datetime
import re
from typing import Any

import click

from moorage.cli.base import Failed, Group, emit, path_segment
from moorage.cli.options import admin_client, admin_options, json_option
from moorage.errors import MoorageError


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _call(client: Any, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    try:
        return client.call(method, path, body)
    except MoorageError as exc:
        raise Failed(str(exc)) from None


#: A webhook's id: 12 hex digits (cluster/webhook_input.py makes them, the API accepts no other).
_ID = re.compile(r"[0-9a-f]{12}")


def _hook_path(hook_id: str, *rest: str) -> str:
    """The API path of webhook `hook_id` (and `rest`), or a usage error for an id that is not
    one: an id never becomes more than its own path segment (`../gc?` once started a real
    garbage collection)."""
    if not _ID.fullmatch(hook_id):
        raise click.BadParameter(
            f"{hook_id[:40]!r} is not a webhook id (12 hex digits); 'moorage webhook list' "
            "shows the ids",
            param_hint="ID",
        )
    return "/".join(["/api/v0/webhooks", path_segment(hook_id), *rest])


@click.group("webhook", cls=Group)
def webhook() -> None:
    """Webhooks: push, delete, pull, mount events POSTed to a receiver, signed."""


@webhook.command("add")
@admin_options
@click.argument("url")
@click.option(
    "--events",
    required=True,
    help="Comma-separated actions to send: push, delete, pull, mount (blob mounts).",
)
@click.option(
    "--secret",
    default=None,
    help="Sign every delivery: X-Moorage-Signature: sha256=HMAC-SHA256(secret, body) in hex. "
    "Kept by the cluster, never shown back.",
)
@click.option("--name", default=None, help="A label for the webhook (default: the URL's host).")
@json_option
def add(
    existing: str,
    username: str,
    password: str | None,
    url: str,
    events: str,
    secret: str | None,
    name: str | None,
    as_json: bool,
) -> None:
    """Send the registry's events to URL (http:// or https://)."""
    from moorage.cluster.webhook_input import check_events, check_url

    try:
        check_url(url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="URL") from None
    try:
        check_events(events)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--events") from None
    body: dict[str, Any] = {"url": url, "events": events.split(",")}
    if secret is not None:
        body["secret"] = secret
    if name is not None:
        body["name"] = name
    doc = _call(admin_client(existing, username, password), "POST", "/api/v0/webhooks", body)
    w = doc["webhook"]
    signed = "signed" if w["signed"] else "unsigned (no --secret)"
    emit(
        as_json,
        doc,
        f"webhook {w['id']} ({w['name']}): {', '.join(w['events'])} events to {w['url']}, "
        f"{signed}\n  test it: moorage webhook test {w['id']}",
    )


def _line(w: dict[str, Any]) -> str:
    signed = "signed" if w["signed"] else "unsigned"
    return (
        f"{w['id']}  {w['name']}  {w['url']}  {','.join(w['events'])}  {signed}  "
        f"{w['pending']} pending  added {_when(w['created_at'])} by {w['created_by'] or '-'}"
    )


@webhook.command("list")
@admin_options
@json_option
def list_(existing: str, username: str, password: str | None, as_json: bool) -> None:
    """Every webhook: id, name, URL, events, whether signed, events waiting (never the
    secret)."""
    doc = _call(admin_client(existing, username, password), "GET", "/api/v0/webhooks")
    emit(as_json, doc, "\n".join(_line(w) for w in doc["webhooks"]) or "no webhooks")


@webhook.command("remove")
@admin_options
@click.argument("hook_id", metavar="ID")
@json_option
def remove(existing: str, username: str, password: str | None, hook_id: str, as_json: bool) -> None:
    """Remove webhook ID, with the events still queued for it and its deliveries."""
    client = admin_client(existing, username, password)
    doc = _call(client, "DELETE", _hook_path(hook_id))
    emit(as_json, doc, f"removed webhook {doc['removed']} ({doc['url']})")


def _delivery_line(d: dict[str, Any]) -> str:
    what = (
        d["repository"]
        + (f":{d['tag']}" if d["tag"] else "")
        + (f"@{d['digest']}" if d["digest"] else "")
    )
    code = d["status_code"] if d["status_code"] is not None else "-"
    line = (
        f"{_when(d['finished_at'])}  {d['webhook']}  {d['action']:<6}  {d['status']:<9}  "
        f"HTTP {code}  {d['attempts']} attempt(s)  {what or '-'}"
    )
    return line + (f"\n    {d['error']}" if d["error"] else "")


@webhook.command("test")
@admin_options
@click.argument("hook_id", metavar="ID")
@json_option
def test(existing: str, username: str, password: str | None, hook_id: str, as_json: bool) -> None:
    """Send a `test` event to webhook ID now, once, and print what the receiver answered."""
    path = _hook_path(hook_id, "test")
    doc = _call(admin_client(existing, username, password), "POST", path, {})
    emit(as_json, doc, _delivery_line(doc["delivery"]))
    if not doc["delivery"]["delivered"]:
        raise Failed(
            f"the receiver of webhook {hook_id} did not accept the test event: "
            f"{doc['delivery']['error']}; check that it answers 2xx to a POST"
        )


@webhook.command("deliveries")
@admin_options
@click.argument("hook_id", metavar="[ID]", required=False)
@json_option
def deliveries(
    existing: str, username: str, password: str | None, hook_id: str | None, as_json: bool
) -> None:
    """The last deliveries (of webhook ID, or of every webhook), newest first: status code,
    attempts, error."""
    import urllib.parse

    path = "/api/v0/webhooks/deliveries"
    if hook_id:
        _hook_path(hook_id)  # a usage error for what is not an id
        path += "?" + urllib.parse.urlencode({"webhook": hook_id})
    doc = _call(admin_client(existing, username, password), "GET", path)
    text = "\n".join(_delivery_line(d) for d in doc["deliveries"]) or "no deliveries yet"
    emit(as_json, doc, text)


COMMANDS = [webhook]
