"""`moorage audit`: the cluster-wide audit log (who did what, when, from where), as text or
JSON lines, optionally followed like `tail -f` (GET /api/v0/audit; moorage.audit.log)."""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import click

from moorage.cli.base import Failed
from moorage.cli.options import admin_client, admin_options
from moorage.errors import MoorageError

PAGE = 1000
#: A followed log re-reads this many seconds before the newest event it printed: events
#: reach the log up to a flush interval late (and replicas' clocks differ slightly).
OVERLAP = 10.0


def _clean(value: object) -> str:
    """A field for a terminal: control characters escaped (an actor name or a target can
    come from a hostile request)."""
    text = "" if value is None else str(value)
    return "".join(
        c if c.isprintable() and c not in "\u2028\u2029" else json.dumps(c)[1:-1] for c in text
    )


def event_line(doc: dict[str, Any]) -> str:
    """One event as a line of text."""
    found = doc.get("detail")
    detail: dict[str, Any] = found if isinstance(found, dict) else {}
    extra = " ".join(f"{_clean(k)}={_clean(v)}" for k, v in sorted(detail.items()))
    parts = [
        _clean(doc.get("time")),
        _clean(doc.get("action")),
        _clean(doc.get("outcome")),
        f"actor={_clean(doc.get('actor')) or '-'}",
        f"from={_clean(doc.get('client')) or '-'}",
        _clean(doc.get("target")) or "-",
    ]
    return "  ".join(parts) + (f"  {extra}" if extra else "")


def _pages(client: Any, params: dict[str, str]) -> Iterator[dict[str, Any]]:
    """Every event the query selects, page after page."""
    cursor = None
    while True:
        query = dict(params, limit=str(PAGE))
        if cursor:
            query["cursor"] = cursor
        doc = client.call("GET", "/api/v0/audit?" + urllib.parse.urlencode(query))
        yield from doc["events"]
        cursor = doc.get("next")
        if not cursor:
            return


@click.command("audit")
@admin_options
@click.option(
    "--since",
    default="24h",
    show_default=True,
    help="From when: a span back from now (90s, 30m, 1h, 7d), RFC 3339 or unix seconds.",
)
@click.option("--until", default=None, help="Up to when (same forms as --since).")
@click.option("--actor", default=None, help="Only the events of this account.")
@click.option("--action", default=None, help="Only this action (login, push, delete, join...).")
@click.option(
    "--limit",
    type=click.IntRange(1),
    default=None,
    help="Print at most this many events (without --follow).",
)
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Then keep printing new events as they are recorded, until interrupted.",
)
@click.option(
    "--interval",
    type=click.FloatRange(0.2, 60),
    default=1.0,
    show_default=True,
    help="Seconds between polls with --follow.",
)
@click.option("--json", "as_json", is_flag=True, help="JSON lines, one event per line (syslog).")
def audit(
    existing: str,
    username: str,
    password: str | None,
    since: str,
    until: str | None,
    actor: str | None,
    action: str | None,
    limit: int | None,
    follow: bool,
    interval: float,
    as_json: bool,
) -> None:
    """The cluster-wide audit log: logins, pushes, deletes, account, permission and token
    changes, cluster operations; oldest first, one line per event."""
    from moorage.audit.query import BadQuery, parse_time

    try:
        start = parse_time(since)
        end = parse_time(until) if until else None
    except BadQuery as exc:
        raise click.BadParameter(str(exc)) from None
    if follow and end is not None:
        raise click.UsageError("--follow and --until contradict each other")
    client = admin_client(existing, username, password)
    params = {"since": f"{start:.6f}"}
    if end is not None:
        params["until"] = f"{end:.6f}"
    if actor is not None:
        params["actor"] = actor
    if action is not None:
        params["action"] = action

    def show(doc: dict[str, Any]) -> None:
        line = json.dumps(doc, separators=(",", ":")) if as_json else event_line(doc)
        click.echo(line)

    printed = 0
    seen: dict[str, float] = {}
    newest = start
    try:
        while True:
            for doc in _pages(client, params):
                if doc["id"] in seen:
                    continue
                show(doc)
                printed += 1
                seen[doc["id"]] = float(doc["at"])
                newest = max(newest, float(doc["at"]))
                if limit is not None and printed >= limit and not follow:
                    return
            if not follow:
                return
            horizon = newest - OVERLAP
            seen = {k: at for k, at in seen.items() if at >= horizon - OVERLAP}
            params["since"] = f"{max(start, horizon):.6f}"
            time.sleep(interval)
    except MoorageError as exc:
        raise Failed(str(exc)) from None
    except KeyboardInterrupt:
        return


COMMANDS = [audit]
