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
from moorage.cluster.fence import Fenced, check_fence
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


async def _local_member_answers(st: AppState) -> bool:
    try:
        await member_status(st.config.etcd_client_url, CHECK_TIMEOUT)
    except MoorageError:
        return False
    return True


async def health_loop(st: AppState) -> None:
    while True:
        await check_once(st)
        try:
            check_fence(st.config)
        except Fenced as exc:
            if st.fenced is None:
                log.error("%s", exc)
            st.fenced = str(exc)
        st.role = await _role(st) if st.cluster is not None else "leader"
        # Quorum lost: the local member answers but nobody leads. Pulls go on from its copy.
        st.read_only = (
            st.cluster is not None
            and not st.etcd.healthy
            and st.role == "unknown"
            and await _local_member_answers(st)
        )
        set_health(st.etcd.healthy, st.storage.healthy, st.role)
        if st.heartbeat is not None:
            problem = _problem(st)
            try:
                await asyncio.wait_for(st.heartbeat.beat(problem is None, problem), CHECK_TIMEOUT)
            except (MoorageError, TimeoutError) as exc:
                log.debug("heartbeat not written: %s", exc)
        await asyncio.sleep(CHECK_INTERVAL)


READ_ONLY_MESSAGE = (
    "etcd: no quorum reachable (a majority of the cluster is down, or this replica is cut "
    "off from it); this replica serves pulls from its local copy and refuses pushes; "
    "'moorage status' says whether the majority is really lost and what to run"
)


def _problem(st: AppState) -> str | None:
    if st.fenced:
        return f"fenced: {st.fenced}"
    if st.read_only:
        return READ_ONLY_MESSAGE
    if not st.etcd.healthy:
        return f"etcd: {st.etcd.error}"
    if not st.storage.healthy:
        return f"storage: {st.storage.error}"
    return None


async def ping(request: Request) -> Response:
    """200 healthy; 200 read-only (pulls work, pushes do not); 503 cannot serve.

    `?writable=1` answers 503 whenever pushes would fail, for routing writes.
    """
    st: AppState = request.app.state.moorage
    problem = _problem(st)
    if problem is None:
        return JSONResponse({"healthy": True})
    writable = request.query_params.get("writable", "") not in ("", "0", "false")
    if st.read_only and st.storage.healthy and not writable and not st.fenced:
        return JSONResponse({"healthy": False, "read_only": True, "error": READ_ONLY_MESSAGE})
    body: dict[str, object] = {"healthy": False, "error": problem}
    if st.read_only:
        body["read_only"] = True
    return JSONResponse(body, status_code=503)


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
