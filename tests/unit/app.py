"""A replica's HTTP app in this process: the in-memory store, blobs in a tmp directory.

`InProcessClient` is a synchronous httpx-like client over `httpx.ASGITransport`: the app
runs on an event loop in a thread of this process (as in an API worker), its lifespan
(bootstrap of the admin account, health checks) around the client's life. No socket is
opened.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
from starlette.types import ASGIApp, Message

from moorage.config import ReplicaConfig
from moorage.meta.memory import MemoryMetaStore

ADMIN_PASSWORD = "unit-admin-password"
AUTH = ("admin", ADMIN_PASSWORD)
T = TypeVar("T")


def _build_app() -> Callable[..., ASGIApp]:
    """`build_app(config, meta, admin_password)`: in moorage.server.worker once the replica
    is assembled outside the API package, in moorage.api.app before."""
    for module in ("moorage.server.worker", "moorage.api.app"):
        try:
            found = getattr(importlib.import_module(module), "build_app", None)
        except ModuleNotFoundError:
            continue
        if found is not None:
            return cast(Callable[..., ASGIApp], found)
    raise ImportError("no build_app in moorage.server.worker or moorage.api.app")


def replica_config(root: Path) -> ReplicaConfig:
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    return ReplicaConfig(
        data_dir=str(root / "data"),
        cluster_id=uuid.uuid4().hex,
        replica_id=uuid.uuid4().hex[:12],
        http_addr="127.0.0.1:5000",
        storage=str(root / "blobs"),
        etcd_client_port=2379,
        etcd_peer_port=2380,
    )


class _Lifespan:
    """The ASGI lifespan protocol, driven by hand."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.outbox: asyncio.Queue[Message] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def _expect(self, wanted: str) -> None:
        message = await self.outbox.get()
        if message["type"] != wanted:
            raise RuntimeError(f"lifespan: {message}")

    async def startup(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        self.task = asyncio.create_task(
            self.app(scope, self.inbox.get, self.outbox.put)  # type: ignore[arg-type]
        )
        await self.inbox.put({"type": "lifespan.startup"})
        await self._expect("lifespan.startup.complete")

    async def shutdown(self) -> None:
        await self.inbox.put({"type": "lifespan.shutdown"})
        await self._expect("lifespan.shutdown.complete")
        assert self.task is not None
        await self.task


class InProcessClient:
    def __init__(self, loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient) -> None:
        self._loop = loop
        self._client = client

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(60)

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        return self._run(self._client.request(method, url, **kw))

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("GET", url, **kw)

    def head(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("HEAD", url, **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("POST", url, **kw)

    def put(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("PUT", url, **kw)

    def patch(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("PATCH", url, **kw)

    def delete(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("DELETE", url, **kw)


@contextmanager
def in_process_registry(root: Path) -> Iterator[InProcessClient]:
    """A client of a fresh registry; its lifespan runs around it."""
    app = _build_app()(replica_config(root), MemoryMetaStore(), ADMIN_PASSWORD)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="in-process-registry", daemon=True)
    thread.start()

    def run(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(60)

    try:
        lifespan = run(_make_lifespan(app))
        run(lifespan.startup())
        transport = httpx.ASGITransport(app=app)
        client = httpx.AsyncClient(transport=transport, base_url="http://registry.test", auth=AUTH)
        try:
            yield InProcessClient(loop, client)
        finally:
            run(client.aclose())
            run(lifespan.shutdown())
    finally:
        run(loop.shutdown_default_executor())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def _make_lifespan(app: ASGIApp) -> _Lifespan:
    return _Lifespan(app)  # queues are made on the app's loop
