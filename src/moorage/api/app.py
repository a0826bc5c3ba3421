"""The ASGI application of one replica (the only place Starlette is assembled)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from moorage.api.cluster import cluster_routes
from moorage.api.health import check_once, health, health_loop, ping
from moorage.api.housekeeping import purge_loop
from moorage.api.http import request_path
from moorage.api.metrics import MetricsMiddleware, metrics
from moorage.api.state import AppState
from moorage.api.v2 import guarded
from moorage.auth.basic import BasicAuthenticator
from moorage.cluster.bootstrap import bootstrap
from moorage.cluster.heartbeat import Heartbeat
from moorage.config import DataDir, ReplicaConfig
from moorage.errors import MoorageError
from moorage.meta.base import MetaStore
from moorage.meta.etcd import EtcdCluster
from moorage.registry import Registry
from moorage.storage.filesystem import FilesystemStorage
from moorage.storage.journal import Journal

log = logging.getLogger("moorage.api")
IO_THREADS = 32


def build_app(config: ReplicaConfig, meta: MetaStore, admin_password: str | None = None) -> ASGIApp:
    storage = FilesystemStorage(config.storage)
    journal: Journal | None = Journal(
        config.storage, f"{config.replica_id}-{os.getpid()}", config.epoch, config.cluster_id
    )
    if os.environ.get("MOORAGE_JOURNAL", "1") == "0":
        journal = None  # only to measure the journal's cost in the benchmark
    registry = Registry(storage, meta, journal)
    st = AppState(config=config, registry=registry, auth=BasicAuthenticator(meta))
    if isinstance(meta, EtcdCluster):
        st.cluster = meta
        st.heartbeat = Heartbeat(meta, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # fsyncs and file I/O run in threads: enough of them that concurrent pushes do not
        # queue behind each other's fsync (asyncio's default is cpu count + 4).
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="moorage-io")
        )
        try:
            await bootstrap(meta, config.cluster_id, admin_password)
        except MoorageError as exc:  # a learner, or no quorum: /_ping reports it
            log.warning("store not ready at start: %s", exc)
        await check_once(st)
        tasks = [asyncio.create_task(health_loop(st)), asyncio.create_task(purge_loop(storage))]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if journal is not None:
                journal.close()  # its descriptor would outlive the app
            await meta.close()

    app = Starlette(
        routes=[
            Route("/_ping", ping, methods=["GET", "HEAD"]),
            Route("/api/v0/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            *cluster_routes(),
        ],
        lifespan=lifespan,
    )
    app.state.moorage = st
    return MetricsMiddleware(RegistryRoutes(app))


class RegistryRoutes:
    """`/v2/...` straight to the registry dispatcher (the hot path skips Starlette's router
    and its middleware stack); everything else, lifespan included, to the Starlette app."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = request_path(scope)
        if path == "/v2" or path.startswith("/v2/"):
            scope["app"] = self.app
            response = await guarded(Request(scope, receive))
            await response(scope, receive, send)
            return
        if _UNROUTABLE.search(path):
            # Starlette's routes end in `$`, which also matches before a trailing newline.
            response = JSONResponse(
                {"error": f"no such endpoint: {path[:200]!r}", "code": "NOT_FOUND"}, 404
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


#: Control characters and U+FFFD (bytes that were not UTF-8): no endpoint has them.
_UNROUTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ufffd]")


def _exit_with_parent(pid_file: Path) -> None:
    """End this API worker when the replica process that forked it dies (SIGKILL, OOM):
    an orphaned worker would keep the HTTP port and the data directory's lock, and the
    replica could not be started again."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        pid_file.unlink(missing_ok=True)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def create_app() -> ASGIApp:
    """Factory the ASGI server calls in each worker; the replica comes from the environment."""
    data_dir = DataDir(os.environ["MOORAGE_DATA_DIR"])
    config = data_dir.load()
    pid_file = data_dir.pid_file(f"api-{os.getpid()}")
    pid_file.write_text(f"{os.getpid()}\n")
    _exit_with_parent(pid_file)
    meta = EtcdCluster(config.store_endpoints)
    return build_app(config, meta)
