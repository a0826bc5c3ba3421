"""`/_ping` for load balancers and `/api/v0/health` for people."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from moorage import __version__
from moorage.api.errors import error_response
from moorage.api.metrics import set_health
from moorage.api.state import AppState, ComponentHealth
from moorage.cluster.fence import FenceWatch
from moorage.config import ReplicaConfig
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
        with contextlib.suppress(OSError):  # the storage check reports an unreadable storage
            fence_refusal(st)
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


_watches: dict[ReplicaConfig, FenceWatch] = {}


def fence_refusal(st: AppState) -> str | None:
    """Why this replica is fenced, checked now (one stat of the marker, see FenceWatch), or
    None. Raises OSError when the marker cannot be checked."""
    watch = _watches.get(st.config)
    if watch is None:
        watch = _watches[st.config] = FenceWatch(st.config)
    verdict = watch.check()
    if verdict is not None and st.fenced is None:
        log.error("%s", verdict)
        st.fenced = verdict
    return st.fenced


def acknowledge_write(st: AppState, response: Response) -> Response:
    """The fence check of the write path: `response` acknowledges a write (2xx) whose
    metadata is committed and whose journal entry is durable; it goes out only if this
    replica is not fenced now, else 503. Why this ordering loses no acknowledged write to
    an emergency repair: see moorage.cluster.fence."""
    try:
        why = fence_refusal(st)
    except OSError as exc:
        why = f"storage: cannot check the fence marker in {st.config.storage}: {exc}"
    if why is None:
        return response
    return error_response(503, "UNAVAILABLE", why, headers={"Retry-After": "60"})


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
    with contextlib.suppress(OSError):
        fence_refusal(st)
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
    with contextlib.suppress(OSError):
        fence_refusal(st)
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
