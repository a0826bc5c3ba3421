"""The storage lifecycle and backups, read-only but for one button: garbage collection (the
running one, the last result, the schedule; "Run now"), the retention, quota and other
policies with each quota's usage, what retention deleted lately, and the last backups.

The facts are those `moorage gc --status`, `moorage policy list` and `moorage audit` print,
read the way their API handlers read them (cluster/gc.py, the policies store, the audit
log's paged query); each page shows the exact command that does more. Backups are the
audit log's `backup.written` events (what `moorage backup` reports once its archive is
written whole: revision, size) and the newest backup the cluster recorded.

Both audit lists are the newest events first (`newest_events`: bounded reads backwards from
now, at most MAX_SCAN events examined per request); when that budget runs out first, the page
says so and names the command that lists the older ones.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from moorage.api import gc as gc_api
from moorage.api.state import AppState
from moorage.audit.query import BadQuery, newest_events, parse_time
from moorage.cluster import gc
from moorage.meta import usage
from moorage.meta.policy_records import namespace_of
from moorage.web import admin
from moorage.web.admin import ADMIN, PAGE, field
from moorage.web.common import Viewer

RECENT = 20  # retention deletions shown
SPANS = ("1d", "7d", "30d", "90d")


def base_url(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def size_text(n: object) -> str:
    """Bytes as people read them (1.5 MiB)."""
    if not isinstance(n, int | float) or isinstance(n, bool):
        return "unknown"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


async def storage(request: Request, st: AppState, viewer: Viewer) -> Response:
    state: dict[str, Any] | None = None
    if st.cluster is not None:
        state = await gc.status(st.cluster)
    after = request.query_params.get("after", "")[:512] or None
    records, more = await st.registry.manifests.policies.page(PAGE, after)
    rows = []
    for record in records:
        doc = record.doc()
        used = None
        if record.quota is not None:
            current = await usage.current(st.registry.meta, namespace_of(record.target))
            used = {"bytes": current.bytes, "blobs": current.blobs}
        rows.append({"policy": doc, "usage": used})
    deleted = await newest_events(st.registry.meta, "retention.delete", parse_time("7d"), RECENT)
    return admin.render(
        request,
        "admin/storage.html",
        viewer,
        gc=state,
        policies=rows,
        next_after=records[-1].target if more and records else None,
        retention=deleted,
        url=base_url(request),
        size=size_text,
    )


async def run_gc(request: Request, st: AppState, viewer: Viewer) -> Response:
    """Start a collection (the defaults of `moorage gc`: 24 h grace) and go back to the
    page, which shows it running; it goes on in this replica's worker."""
    if st.cluster is None:
        raise ValueError("this replica has no etcd cluster: nothing to collect")
    doc = await gc_api.collect(request, st, st.cluster, {"wait": False})
    return admin.done(f"{ADMIN}/storage", done="gc.start", target=str(doc.get("run", "")))


async def backups(request: Request, st: AppState, viewer: Viewer) -> Response:
    span = field(request, "since") or "30d"
    if span not in SPANS:
        raise BadQuery(f"since must be one of {', '.join(SPANS)}")
    before = field(request, "before", 201) or None  # longer: not a cursor (400)
    found = await newest_events(st.registry.meta, "backup.written", parse_time(span), PAGE, before)
    last = await st.cluster.last_backup() if st.cluster is not None else None
    return admin.render(
        request,
        "admin/backups.html",
        viewer,
        found=found,
        before=before,
        since=span,
        spans=SPANS,
        last=last,
        url=base_url(request),
        size=size_text,
    )
