"""The audit log over HTTP, and what the handlers call to write to it.

    GET /api/v0/audit?since=&until=&limit=&cursor=&actor=&action=&format=json|jsonl

Admin only. Events oldest first, at most `limit` (1..1000, default 100) per page; `since`
and `until` take RFC 3339, unix seconds or a span back from now (`1h`, `7d`); `cursor` is
the previous page's `next`. JSON: `{"events": [...], "next": cursor or null}`; with
`format=jsonl`, one event per line (for syslog) and the next cursor in the
`Moorage-Next-Cursor` header. Bad parameters answer 400 `{"error", "code": "INVALID"}`.

What handlers call to write to the log is in `moorage.api.auditing`.
"""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from moorage.api.cluster import _admin_identity, _JSONResponse
from moorage.api.errors import admin_error
from moorage.api.http import decimal
from moorage.api.state import AppState
from moorage.audit.query import DEFAULT_LIMIT, MAX_LIMIT, BadQuery, Query, parse_time, read_events
from moorage.errors import MoorageError

_PARAMS = frozenset({"since", "until", "limit", "cursor", "actor", "action", "format"})
_MAX_PARAM = 256


def _invalid(message: str) -> JSONResponse:
    return _JSONResponse(admin_error("INVALID", message), status_code=400)


def _query(request: Request) -> Query | str:
    """The query, or why it is refused."""
    params = request.query_params
    for name, value in params.multi_items():
        if name not in _PARAMS:
            return f"unknown parameter {name[:40]!r}: use {', '.join(sorted(_PARAMS))}"
        if len(value) > _MAX_PARAM or len(params.getlist(name)) > 1:
            return f"parameter {name} must be given once, at most {_MAX_PARAM} characters"
        if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in value):
            return f"parameter {name} holds control characters"
    limit = DEFAULT_LIMIT
    if (raw := params.get("limit")) is not None:
        parsed = decimal(raw)
        if parsed is None or not 1 <= parsed <= MAX_LIMIT:
            return f"limit must be a number from 1 to {MAX_LIMIT}, not {raw[:40]!r}"
        limit = parsed
    if params.get("format", "json") not in ("json", "jsonl"):
        return "format must be json or jsonl"
    try:
        since = parse_time(params["since"]) if "since" in params else None
        until = parse_time(params["until"]) if "until" in params else None
    except BadQuery as exc:
        return str(exc)
    return Query(
        since=since,
        until=until,
        cursor=params.get("cursor") or None,
        limit=limit,
        actor=params.get("actor"),
        action=params.get("action"),
    )


async def audit_events(request: Request) -> Response:
    st: AppState = request.app.state.moorage
    refused = await _admin_identity(request, st)
    if refused is not None:
        return refused
    query = _query(request)
    if isinstance(query, str):
        return _invalid(query)
    try:
        events, cursor = await read_events(st.registry.meta, query)
    except BadQuery as exc:
        return _invalid(str(exc))
    except MoorageError as exc:
        refusal = admin_error("UNAVAILABLE", str(exc))
        return _JSONResponse(refusal, status_code=503, headers={"Retry-After": "5"})
    if request.query_params.get("format") == "jsonl":
        body = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events)
        headers = {"Moorage-Next-Cursor": cursor} if cursor else {}
        return Response(body.encode(), headers=headers, media_type="application/x-ndjson")
    return _JSONResponse({"events": events, "next": cursor})


def audit_routes() -> list[Route]:
    return [Route("/api/v0/audit", audit_events, methods=["GET"])]
