"""`/_ping` for load balancers and `/api/v0/health` for people."""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from moorage import __version__
from moorage.api.metrics import set_health
from moorage.api.state import AppState, ComponentHealth
from moorage.errors import MoorageError
from moorage.meta.etcd import member_status

log = logging.getLogger("moorage.health")
CHECK_INTERVAL = 2.0
CHECK_TIMEOUT = 3.0


async def _check(component: ComponentHealth, probe: asyncio.Future[object] | object) -> None:
    try:
        await asyncio.wait_for(probe, CHECK_TIMEOUT)  # type: ignore[arg-type]
    except Exception as exc:
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        if component.healthy or component.error != message:
            log.warning("health check failed: %s", message)
        component.healthy, component.error = False, message
    else:
        component.healthy, component.error = True, None
    component.checked_at = time.time()


async def check_once(st: AppState) -> None:
    await asyncio.gather(
        _check(st.etcd, st.registry.meta.revision()),
        _check(st.storage, st.registry.storage.probe()),
    )


async def _role(st: AppState) -> str:
    try:
        status = await member_status(st.config.etcd_client_url, CHECK_TIMEOUT)
    except MoorageError:
        return "unknown"
    if status.is_learner:
        return "learner"
    if not status.leader:
        return "unknown"
    return "leader" if status.leader == status.member_id else "follower"


async def health_loop(st: AppState) -> None:
    while True:
        await check_once(st)
        st.role = await _role(st) if st.cluster is not None else "leader"
        set_health(st.etcd.healthy, st.storage.healthy, st.role)
        if st.heartbeat is not None:
            problem = _problem(st)
            try:
                await asyncio.wait_for(st.heartbeat.beat(problem is None, problem), CHECK_TIMEOUT)
            except (MoorageError, TimeoutError) as exc:
                log.debug("heartbeat not written: %s", exc)
        await asyncio.sleep(CHECK_INTERVAL)


def _problem(st: AppState) -> str | None:
    if not st.etcd.healthy:
        return f"etcd: {st.etcd.error}"
    if not st.storage.healthy:
        return f"storage: {st.storage.error}"
    return None


async def ping(request: Request) -> Response:
    st: AppState = request.app.state.moorage
    problem = _problem(st)
    if problem is None:
        return JSONResponse({"healthy": True})
    return JSONResponse({"healthy": False, "error": problem}, status_code=503)


async def health(request: Request) -> Response:
    st: AppState = request.app.state.moorage
    problem = _problem(st)
    free = st.registry.storage.free_bytes()
    doc = {
        "healthy": problem is None,
        "error": problem,
        "version": __version__,
        "cluster_id": st.config.cluster_id,
        "replica_id": st.config.replica_id,
        "role": st.role,
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
