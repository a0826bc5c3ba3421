"""The replica process serving its API itself (one API worker, the default).

`serve_here` runs granian's embedded server on this process's event loop: the process that
holds the data directory's lock and supervises etcd also answers HTTP and runs the
replica's jobs, so a replica is two processes (this one and etcd) instead of three, and
pays for one Python interpreter. What the forked layout gave is kept:

- the app's lifespan (its jobs, the store's close) runs once around the server here, not
  per granian worker, so a respawn of the server never runs it twice;
- a server that stops unexpectedly is started again (at most MAX_RESTARTS within
  RESTART_WINDOW seconds, then the replica stops and says so), as granian respawned a
  crashed worker;
- SIGTERM/SIGINT stop serving (requests in flight are answered), then the caller stops
  etcd; the etcd watchdog giving up stops serving too;
- a renewed certificate is served without a restart: granian's server is respawned on
  the same port with the new files (transport.watch), the old one answering meanwhile.

The API's modules are imported only here, by name, after the caller set
PROMETHEUS_MULTIPROC_DIR (see moorage.server.process).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
import threading
import time
from collections.abc import Callable

from granian.asgi import LifespanProtocol
from granian.constants import Interfaces
from granian.server.embed import Server

from moorage.cluster.supervisor import EtcdWatchdog
from moorage.config import ReplicaConfig
from moorage.errors import MoorageError
from moorage.server import transport

log = logging.getLogger("moorage.server")
WORKER_MODULE = "moorage.server.worker"
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0


class _Server(Server):
    """granian's embedded server, telling when an old worker is gone after a respawn (the
    forked server logs "Stopped old worker-N"; the embedded one does not)."""

    after_respawn: Callable[[], None] | None = None

    async def _respawn_workers(  # type: ignore[no-untyped-def]
        self, workers, spawn_target, target_loader, delay: float = 0
    ):
        await super()._respawn_workers(workers, spawn_target, target_loader, delay)
        for idx in workers:
            log.info("Stopped old worker-%d", idx + 1)
        if self.after_respawn is not None:
            self.after_respawn()


def serve_here(
    config: ReplicaConfig,
    tls: transport.Material | None,
    watchdog: EtcdWatchdog,
) -> None:
    """Serve the API in this process until SIGTERM/SIGINT (or etcd cannot be kept)."""
    from granian._loops import loops  # the loop granian's workers use (uvloop here)

    loop: asyncio.AbstractEventLoop = loops.get("auto")
    try:
        loop.run_until_complete(_serve(config, tls, watchdog))
    finally:
        loop.close()


async def _serve(
    config: ReplicaConfig,
    tls: transport.Material | None,
    watchdog: EtcdWatchdog,
) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    current: list[Server] = []

    def interrupt() -> None:
        stopping.set()
        for server in current:
            server.signal_handler_interrupt()  # type: ignore[no-untyped-call]

    def reload() -> None:
        for server in current:
            server.signal_handler_reload()  # type: ignore[no-untyped-call]

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, interrupt)

    def from_thread(call: Callable[[], None]) -> Callable[[], None]:
        def soon() -> None:
            loop.call_soon_threadsafe(call)

        return soon

    watchdog.give_up = from_thread(interrupt)
    watchdog.start()

    app = importlib.import_module(WORKER_MODULE).in_process_app()
    lifespan = LifespanProtocol(app)  # type: ignore[no-untyped-call]
    await lifespan.startup()  # type: ignore[no-untyped-call]
    if lifespan.interrupt:
        raise MoorageError(f"the API could not start: {lifespan.exc}; see the lines above")
    stop_watch = threading.Event()
    if tls is not None:
        transport.watch(tls, from_thread(reload), stop_watch)
    restarts: list[float] = []
    try:
        while not stopping.is_set():
            server = _Server(
                app,
                interface=Interfaces.ASGINL,  # the lifespan runs here, once
                **transport.server_options(config, tls),
            )
            if isinstance(app, transport.CloseWhenReplaced):
                # the same app serves the new certificate: keep-alive again from then on
                server.after_respawn = app.served_again
            current[:] = [server]
            log.info("replica %s serving on %s", config.replica_id, config.url)
            await server.serve()
            if stopping.is_set() or not server.interrupt_children:
                break
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < RESTART_WINDOW] + [now]
            if len(restarts) > MAX_RESTARTS:
                raise MoorageError(
                    f"the API server stopped unexpectedly {len(restarts)} times within "
                    f"{RESTART_WINDOW:.0f} s; see the errors above, then start the replica "
                    "again (moorage start)"
                )
            log.error("the API server stopped unexpectedly; starting it again")
    finally:
        current.clear()
        stop_watch.set()
        await lifespan.shutdown()  # type: ignore[no-untyped-call]
