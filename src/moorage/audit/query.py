"""Reading the audit log (moorage.audit.log keeps it): paged and bounded.

At most `MAX_LIMIT` events per page and at most `MAX_SCAN` keys examined per call (filters by
actor or action may leave a page short; its cursor then continues after the last key
examined). A cursor is the last key returned, base64url-encoded, and is checked against the
key grammar before use: it can only point inside the log.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from moorage.audit.log import END, PREFIX, time_key
from moorage.meta.base import MetaStore

log = logging.getLogger("moorage.audit")

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_SCAN = 10_000
_SUFFIX = re.compile(r"[0-9]{17}-[0-9a-z.]{1,64}-[0-9a-f]{8}")


class BadQuery(ValueError):
    """A query parameter that cannot be used (a 400)."""


_RELATIVE = re.compile(r"([0-9]{1,9})([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, now: float | None = None) -> float:
    """Unix seconds from `1700000000[.5]`, RFC 3339 (`2026-12-01T04:00:00Z`) or a span
    back from now (`90s`, `30m`, `1h`, `7d`, `2w`); BadQuery otherwise."""
    raw = text.strip()
    if not raw or len(raw) > 64:
        raise BadQuery(f"not a time: {text[:64]!r}")
    now = time.time() if now is None else now
    if m := _RELATIVE.fullmatch(raw):
        return now - int(m.group(1)) * _UNITS[m.group(2)]
    if re.fullmatch(r"[0-9]{1,12}(\.[0-9]{1,9})?", raw):
        return float(raw)
    try:
        when = datetime.datetime.fromisoformat(raw.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise BadQuery(
            f"not a time: {text[:64]!r} (give RFC 3339 such as 2026-12-01T04:00:00Z, unix "
            "seconds, or a span back from now such as 1h or 7d)"
        ) from None
    if when.tzinfo is None:
        raise BadQuery(f"{text[:64]!r} has no time zone: add Z or +HH:MM")
    return when.timestamp()


def encode_cursor(key: bytes) -> str:
    return base64.urlsafe_b64encode(key[len(PREFIX) :]).decode().rstrip("=")


def decode_cursor(cursor: str) -> bytes:
    """The key a cursor names; BadQuery when it is not one this log handed out."""
    if len(cursor) > 128:
        raise BadQuery("cursor is not one this API returned")
    try:
        suffix = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise BadQuery("cursor is not one this API returned") from None
    if not _SUFFIX.fullmatch(suffix):
        raise BadQuery("cursor is not one this API returned")
    return PREFIX + suffix.encode()


def rfc3339(at: float) -> str:
    when = datetime.datetime.fromtimestamp(at, datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def event_doc(key: bytes, value: bytes) -> dict[str, Any] | None:
    """The event of one key as the API shows it, or None when the value is unreadable."""
    try:
        doc = json.loads(value)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("at"), (int, float)):
        return None
    try:
        when = rfc3339(float(doc["at"]))
    except (ValueError, OverflowError, OSError):  # a time no date has (year 0, 1e300, nan)
        return None
    suffix = key[len(PREFIX) :].decode("ascii", "replace")
    origin = suffix.split("-")[1] if suffix.count("-") == 2 else ""
    return {
        "id": encode_cursor(key),
        "time": when,
        **doc,
        "replica": origin.split(".")[0],
    }


@dataclass(frozen=True)
class Query:
    since: float | None = None
    until: float | None = None
    cursor: str | None = None
    limit: int = DEFAULT_LIMIT
    actor: str | None = None
    action: str | None = None


async def read_events(
    store: MetaStore, query: Query, max_scan: int = MAX_SCAN
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of events, oldest first: (events, cursor of the next page or None).

    Reads at most `query.limit` (≤ MAX_LIMIT) events and examines at most `max_scan` keys."""
    limit = max(1, min(query.limit, MAX_LIMIT))
    start = time_key(query.since) if query.since is not None else PREFIX
    if query.cursor:
        start = max(start, decode_cursor(query.cursor) + b"\x00")
    end = time_key(query.until) if query.until is not None else END
    if start >= end:
        return [], None
    filtered = query.actor is not None or query.action is not None
    out: list[dict[str, Any]] = []
    scanned = 0
    while True:
        want = min(MAX_LIMIT, max_scan - scanned) if filtered else limit - len(out)
        kvs, more = await store._range(start, end, limit=max(1, want))
        consumed = len(kvs)
        for i, kv in enumerate(kvs):
            scanned += 1
            doc = event_doc(kv.key, kv.value)
            if doc is None:
                log.warning("audit log: unreadable event %r skipped", kv.key[:120])
            elif (query.actor is None or doc.get("actor") == query.actor) and (
                query.action is None or doc.get("action") == query.action
            ):
                out.append(doc)
                if len(out) >= limit:
                    consumed = i + 1
                    break
        if not kvs or not (more or consumed < len(kvs)):
            return out, None
        last = kvs[consumed - 1].key
        if len(out) >= limit or scanned >= max_scan:
            return out, encode_cursor(last)
        start = last + b"\x00"
