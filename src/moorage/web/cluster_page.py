"""The Cluster page: the scenario, every replica and the next command, as `moorage status`
tells them, kept live by server-sent events (`/ui/cluster.events`), with the page polling
`/ui/cluster.json` instead when the stream fails.

The facts are gathered and diagnosed exactly as `GET /api/v0/cluster/status` does
(`cluster.facts.gather`, `cluster.status.diagnose`), from this replica's local copy of the
store where needed, so the page keeps working on a replica that has lost quorum, the moment
an operator needs it most. Cluster admins only, like the status endpoint.

The event stream is an async generator: it holds no worker thread, sends the view every
`EVENT_INTERVAL` seconds, and ends after `STREAM_LIFETIME` seconds (the browser's
EventSource reconnects at once, `retry:`), so the session is checked again at least that
often and no stream outlives a signed-out or disabled account by long.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from moorage.api.state import AppState
from moorage.cluster.facts import gather
from moorage.cluster.guidance import next_block
from moorage.cluster.status import diagnose
from moorage.errors import MoorageError
from moorage.web import common
from moorage.web.common import SECURITY_HEADERS, Viewer

EVENT_INTERVAL = 2.0
#: Seconds a stream lasts (MOORAGE_UI_STREAM_LIFETIME: tests shorten it).
STREAM_LIFETIME = float(os.environ.get("MOORAGE_UI_STREAM_LIFETIME", "") or 60)
ADMIN_ONLY = "the Cluster page is for cluster admins; ask one to run 'moorage status'"


async def cluster_view(st: AppState) -> dict[str, Any]:
    """What the page shows: the status document's scenario, quorum and replicas (each with
    the age of its heartbeat), the `next:` block as status prints it, and this replica's own
    problem (read-only, fenced) if it has one."""
    here = {"replica": st.config.replica_id, "problem": st.problem(), "read_only": st.read_only}
    store = st.cluster
    if store is None:
        return {**here, "scenario": "unknown", "error": "this replica has no etcd cluster"}
    epoch, size = st.config.epoch, 0
    with contextlib.suppress(MoorageError):  # without quorum: the configured epoch
        record = await store.get_cluster()
        if record is not None:
            epoch, size = record.epoch, record.size
    try:
        facts = await gather(store, st.config.cluster_id, epoch, size)
    except MoorageError as exc:
        return {**here, "scenario": "unknown", "error": f"cannot read the cluster: {exc}"}
    doc = diagnose(facts)
    for row in doc["replicas"]:
        hb = facts.heartbeats.get(row["id"] or "")
        row["heartbeat_age"] = None if hb is None else max(0.0, round(facts.now - hb.at, 1))
        row["role"] = "leader" if row["leader"] else "learner" if row["learner"] else "member"
    return {
        **here,
        "cluster_id": doc["cluster_id"],
        "epoch": doc["epoch"],
        "scenario": doc["scenario"],
        "action": doc["action"],
        "quorum": doc["quorum"],
        "fault_tolerance": doc["fault_tolerance"],
        "replicas": doc["replicas"],
        "next": "\n".join(next_block(doc)),
        "checked_at": time.time(),
        "error": None,
    }


async def cluster_page(request: Request, st: AppState, viewer: Viewer) -> Response:
    if not viewer.admin:
        return common.refusal(request, 403, ADMIN_ONLY, viewer)
    view = await cluster_view(st)
    return common.render(request, "cluster.html", viewer=viewer, view=view, page="cluster")


async def cluster_json(request: Request, st: AppState, viewer: Viewer) -> Response:
    if not viewer.admin:
        return JSONResponse({"error": ADMIN_ONLY, "code": "DENIED"}, 403, SECURITY_HEADERS)
    return JSONResponse(await cluster_view(st), headers=SECURITY_HEADERS)


async def _events(st: AppState) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    ends = loop.time() + STREAM_LIFETIME
    yield f"retry: {int(EVENT_INTERVAL * 1000)}\n\n"
    # A client that goes away ends the generator: the response stops it (polling
    # `request.is_disconnected()` here as well would race the response for the message).
    while loop.time() < ends:
        view = await cluster_view(st)
        yield f"event: cluster\ndata: {json.dumps(view, separators=(',', ':'))}\n\n"
        await asyncio.sleep(EVENT_INTERVAL)


async def cluster_events(request: Request, st: AppState, viewer: Viewer) -> Response:
    """`text/event-stream` of the page's view, one `cluster` event every EVENT_INTERVAL
    seconds, for STREAM_LIFETIME seconds (then the browser reconnects)."""
    if not viewer.admin:
        return JSONResponse({"error": ADMIN_ONLY, "code": "DENIED"}, 403, SECURITY_HEADERS)
    headers = {**SECURITY_HEADERS, "X-Accel-Buffering": "no"}
    return StreamingResponse(_events(st), media_type="text/event-stream", headers=headers)
