"""`/_ping` for load balancers and `/api/v0/health` for people."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from moorage import __version__
from moorage.api.errors import error_response
from moorage.api.state import AppState
from moorage.cluster.replica import READ_ONLY_MESSAGE


def acknowledge_write(st: AppState, response: Response) -> Response:
    """The fence check of the write path: `response` acknowledges a write (2xx) whose
    metadata is committed and whose journal entry is durable; it goes out only if this
    replica is not fenced now, else 503. Why this ordering loses no acknowledged write to
    an emergency repair: see moorage.cluster.fence."""
    why = st.write_refusal()
    if why is None:
        return response
    return error_response(503, "UNAVAILABLE", why, headers={"Retry-After": "60"})


async def ping(request: Request) -> Response:
    """200 healthy; 200 read-only (pulls work, pushes do not); 503 cannot serve.

    `?writable=1` answers 503 whenever pushes would fail, for routing writes.
    """
    st: AppState = request.app.state.moorage
    problem = st.problem()
    if problem is None:
        return JSONResponse({"healthy": True})
    writable = request.query_params.get("writable", "") not in ("", "0", "false")
    if st.read_only and st.storage.healthy and not writable and not st.fenced:
        return JSONResponse({"healthy": False, "read_only": True, "error": READ_ONLY_MESSAGE})
    if not writable and st.etcd.healthy and st.storage.healthy and not st.fenced:
        # Only the fence marker's check fails (on S3, its last read is too old: the store
        # just came back): pulls work, pushes are refused until the next read.
        return JSONResponse({"healthy": False, "read_only": True, "error": problem})
    body: dict[str, object] = {"healthy": False, "error": problem}
    if st.read_only:
        body["read_only"] = True
    return JSONResponse(body, status_code=503)


async def health(request: Request) -> Response:
    st: AppState = request.app.state.moorage
    problem = st.problem()
    free = st.registry.storage.free_bytes()
    doc = {
        "healthy": problem is None,
        "error": problem,
        "version": __version__,
        "cluster_id": st.config.cluster_id,
        "replica_id": st.config.replica_id,
        "role": st.role,
        "read_only": st.read_only,
        "components": {
            "etcd": {
                "healthy": st.etcd.healthy,
                "error": st.etcd.error,
                "endpoint": st.config.etcd_client_url,
                "checked_at": st.etcd.checked_at,
            },
            "storage": {
                "healthy": st.storage.healthy,
                "error": st.storage.error,
                "path": st.config.storage,
                "free_bytes": free,
                "checked_at": st.storage.checked_at,
            },
        },
    }
    return JSONResponse(doc, status_code=200 if problem is None else 503)
