"""`/api/v0/gc`: garbage collection (admin only).

- `POST /api/v0/gc` {"dry_run", "grace", "untagged", "wait"}: run a collection (one at a
  time in the cluster: 423 BUSY names the one running). With `wait` (the default) the
  answer is the result; with `"wait": false` it is `{"run"}` at once, and the collection
  goes on in this worker (`GET` follows it). A dry run takes no lock and writes nothing
  (not even the last result): it always answers its report, also during a collection.
- `GET /api/v0/gc`: the running collection's progress, the last result, the schedule.
- `POST /api/v0/gc/schedule` {"interval", "grace", "untagged"}: collect every `interval`
  (null: no schedule).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from moorage.api import auditing, metrics
from moorage.api.cluster import admin
from moorage.api.state import AppState
from moorage.cluster import gc
from moorage.cluster.membership import Refused
from moorage.meta.etcd import EtcdCluster
from moorage.registry.gc import GcAborted, GcOptions

log = logging.getLogger("moorage.gc")
_RUNNING: set[asyncio.Task[Any]] = set()


class GcFailed(Refused):
    """The collection stopped (409 with what to do); never retried on another replica."""


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false")
    return value


def options_of(body: dict[str, Any], allowed: frozenset[str] = frozenset({"wait"})) -> GcOptions:
    unknown = set(body) - {"dry_run", "grace", "untagged"} - allowed
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))[:200]}")
    return GcOptions(
        dry_run=_flag(body, "dry_run", False),
        grace=gc.parse_duration(body.get("grace", "24h")),
        untagged=_flag(body, "untagged", False),
    )


async def collect(request: Request, st: AppState, store: EtcdCluster, body: dict[str, Any]) -> Any:
    options = options_of(body)
    wait = _flag(body, "wait", True)
    if options.dry_run:  # no lock, nothing written: the report, even during a collection
        try:
            return await gc.dry_run(
                store,
                st.registry,
                options,
                st.config.replica_id,
                audit=st.audit,
                actor=auditing.actor_of(request),
                client=auditing.client_of(request),
                on_result=metrics.observe_gc,
            )
        except GcAborted as exc:
            raise GcFailed(exc.message) from None
    run = await gc.start(
        store,
        st.registry,
        options,
        st.config.replica_id,
        audit=st.audit,
        actor=auditing.actor_of(request),
        client=auditing.client_of(request),
        on_result=metrics.observe_gc,
    )
    if not wait:
        task = asyncio.create_task(_background(run))
        _RUNNING.add(task)
        task.add_done_callback(_RUNNING.discard)
        return {**run.describe(), "running": True}
    try:
        result = await run.execute()
    except GcAborted as exc:
        raise GcFailed(exc.message) from None
    return result.to_json()


async def _background(run: gc.GcRun) -> None:
    try:
        await run.execute()
    except GcAborted:
        pass  # recorded as the last result, with its message
    except Exception:
        log.exception("garbage collection %s failed", run.run)


async def state(request: Request, st: AppState, store: EtcdCluster, body: dict[str, Any]) -> Any:
    return await gc.status(store)


async def schedule(request: Request, st: AppState, store: EtcdCluster, body: dict[str, Any]) -> Any:
    if "interval" not in body:
        raise ValueError('give "interval" (a duration like 24h, or null for no schedule)')
    raw = body["interval"]
    interval = None if raw is None else gc.parse_duration(raw, "interval")
    options = options_of(body, frozenset({"interval"}))
    if body.get("dry_run"):
        raise ValueError("a schedule runs real collections: dry_run is not accepted here")
    doc = await gc.set_schedule(store, interval, options)
    detail = {"interval": "off" if interval is None else f"{interval:g}"}
    if doc is not None:
        detail |= {"grace": f"{options.grace:g}", "untagged": str(options.untagged).lower()}
    await auditing.record(request, st, "gc.schedule", "cluster", detail)
    return {"schedule": doc}


def gc_routes() -> list[Route]:
    return [
        Route("/api/v0/gc", admin(collect), methods=["POST"]),
        Route("/api/v0/gc", admin(state), methods=["GET"]),
        Route("/api/v0/gc/schedule", admin(schedule), methods=["POST"]),
    ]
