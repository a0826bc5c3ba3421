"""Reading the audit log (moorage.audit.log keeps it): paged and bounded.

At most `MAX_LIMIT` events per page and at most `MAX_SCAN` keys examined per call (filters by
actor or action may leave a page short; its cursor then continues after the last key
examined). A cursor is the last key returned, base64url-encoded, and is checked against the
key grammar before use: it can only point inside the log.

`read_events` reads oldest first (the API and `moorage audit`); `newest_events` reads newest
first, backwards from the end of a time range in windows of at most `WINDOW` keys (what the
admin pages show: the latest retention deletions, the latest backups), under the same
`MAX_SCAN` budget of keys examined per call.
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
from moorage.meta.base import KV, MetaStore

log = logging.getLogger("moorage.audit")

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_SCAN = 10_000
#: `newest_events`: the most keys one time window may hold (a denser one is narrowed and
#: read again), the most store reads of one call, and the first window's span (µs).
WINDOW = 1000
MAX_READS = 64
FIRST_SPAN = 60_000_000
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


@dataclass(frozen=True)
class Newest:
    """What `newest_events` found: the events, newest first."""

    events: list[dict[str, Any]]
    #: Where older matches go on (`before` of the next call); None: the range holds no more.
    older: str | None
    #: The budget ran out before `limit` events were found and before `since` was reached:
    #: older matches may exist that were not examined (they continue at `older`, when set).
    stopped: bool
    scanned: int


@dataclass
class _Spent:
    keys: int = 0
    reads: int = 0


def _micros(key: bytes) -> int:
    digits = key[len(PREFIX) : len(PREFIX) + 17]
    return int(digits) if len(digits) == 17 and digits.isdigit() else 0


def _key_at(micros: int) -> bytes:
    return PREFIX + f"{min(max(micros, 0), 10**17 - 1):017d}".encode()


async def _window(
    store: MetaStore, lo: bytes, top: bytes, cap: int, spent: _Spent
) -> tuple[list[KV], bool]:
    """Every key in [lo, top), oldest first, and True; or the first `cap` + 1 and False when
    there are more than `cap` (each read bounded; several when the store answers short)."""
    got: list[KV] = []
    start = lo
    while True:
        kvs, more = await store._range(start, top, limit=cap + 1 - len(got))
        spent.reads += 1
        spent.keys += len(kvs)
        got.extend(kvs)
        if len(got) > cap:
            return got, False
        if not more or not kvs:
            return got, True
        if spent.reads >= MAX_READS:
            return got, False
        start = kvs[-1].key + b"\x00"


async def _newest_time(store: MetaStore, now_us: int, spent: _Spent) -> int:
    """A time (µs) no event is at or after: `now_us` plus 1 s, 16 s, 256 s, … (a replica
    whose clock runs ahead writes events after now); one read of one key per try."""
    ahead = 1_000_000
    for _ in range(8):
        kvs, _ = await store._range(_key_at(now_us + ahead), END, limit=1, keys_only=True)
        spent.reads += 1
        spent.keys += len(kvs)
        if not kvs:
            return now_us + ahead
        ahead *= 16
    return 10**17


def _matches(kvs: list[KV], action: str) -> list[dict[str, Any]]:
    out = []
    for kv in kvs:
        doc = event_doc(kv.key, kv.value)
        if doc is None:
            log.warning("audit log: unreadable event %r skipped", kv.key[:120])
        elif doc.get("action") == action:
            out.append(doc)
    return out


async def newest_events(
    store: MetaStore,
    action: str,
    since: float | None,
    limit: int,
    before: str | None = None,
    budget: int | None = None,
    now: float | None = None,
) -> Newest:
    """The newest `limit` (≤ MAX_LIMIT) events of `action` at or after `since` (unix seconds;
    None: any time) and before `before` (a cursor, `Newest.older` of a previous call), newest
    first. BadQuery for a cursor this log did not hand out.

    etcd reads a key range in ascending order only (a descending one is sorted in full on the
    server, whatever its limit), so the log is read backwards in time windows, each read in
    full (at most `WINDOW` keys, and an eighth of the budget): a window that holds more is
    narrowed to a quarter and read again, one much emptier widens the next. Stops at `limit`
    matches (`older`: the last one returned), at the start of the range (`older` None), or
    once the next window could exceed `budget` (default MAX_SCAN) keys examined or MAX_READS
    reads (`stopped`; `older` then goes on from the oldest time read in full)."""
    limit = max(1, min(limit, MAX_LIMIT))
    budget = MAX_SCAN if budget is None else budget
    cap = max(2, min(WINDOW, budget // 8))
    floor = time_key(since) if since is not None else PREFIX
    spent = _Spent()
    span = FIRST_SPAN
    if before:
        top, resume = decode_before(before)
        top_us, span = _micros(top), resume or span
    else:  # everything, events a clock ahead wrote too: from a time after the newest
        top = END
        top_us = await _newest_time(store, int((time.time() if now is None else now) * 1e6), spent)
    out: list[dict[str, Any]] = []
    while top > floor:
        if spent.keys + cap + 1 > budget or spent.reads >= MAX_READS:
            # Goes on from here, with the window narrowed so far: every call makes progress.
            return Newest(out, _resume_cursor(top, top_us, span), True, spent.keys)
        lo = max(floor, _key_at(top_us - span)) if top_us > span else floor
        kvs, whole = await _window(store, lo, top, cap, spent)
        if not whole:
            if span <= 1:  # more than a window's keys in one microsecond: cannot narrow
                return Newest(out, _resume_cursor(top, top_us, 1), True, spent.keys)
            # Its oldest keys say how dense it is: aim at half a window of that density.
            seen = max(1, _micros(kvs[-1].key) - _micros(kvs[0].key))
            span = max(1, min(span // 4, seen * cap // (2 * len(kvs))))
            continue
        for doc in reversed(_matches(kvs, action)):
            out.append(doc)
            if len(out) == limit:
                return Newest(out, out[-1]["id"], False, spent.keys)
        top, top_us = lo, _micros(lo)
        if len(kvs) < cap // 4:
            span = min(span * 4, 10**17)
    return Newest(out, None, False, spent.keys)


def _resume_cursor(top: bytes, top_us: int, span: int) -> str:
    """A cursor to go on below key `top` (the end of the log: the time `top_us` no event
    is at or after) with windows of `span` µs: where a stopped walk got to."""
    suffix = _key_at(top_us) if top == END else top
    raw = suffix[len(PREFIX) :] + f"~{span}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


_RESUME = re.compile(rb"([0-9]{17}(?:-[0-9a-z.]{1,64}-[0-9a-f]{8})?)~([1-9][0-9]{0,16})")


def decode_before(cursor: str) -> tuple[bytes, int | None]:
    """The key a `newest_events` cursor names, with the window span to go on with: an
    event's (`decode_cursor`, no span), or where a stopped walk got to (`_resume_cursor`)."""
    if len(cursor) <= 200:
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (binascii.Error, ValueError):
            raise BadQuery("cursor is not one this API returned") from None
        if m := _RESUME.fullmatch(raw):
            return PREFIX + m.group(1), int(m.group(2))
    return decode_cursor(cursor), None
