"""The replica process: `run_replica` is what `moorage run` executes in the foreground.

1. `moorage.cluster.supervisor.supervise` locks the data directory, starts the replica's
   etcd member and keeps it running (its watchdog), and stops it at the end;
2. HTTP: with one API worker (the default) this process serves it itself
   (`moorage.server.inprocess`: granian's embedded server on this process's loop; a
   replica is then this process and etcd); with `--workers N` (N > 1) granian's worker
   processes fork from this one (so every process carries the absolute data directory in
   its command line) and each calls `moorage.server.worker.create_app`;
3. on SIGTERM/SIGINT the API stops serving, then etcd.

This module must not import the worker's modules (the HTTP layer): prometheus_client picks
its multiprocess mode when it is first imported, and that must happen after
PROMETHEUS_MULTIPROC_DIR is set here (tests/test_server.py checks it); `inprocess` imports
them by name once it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading

from moorage.cluster.supervisor import EtcdWatchdog, supervise
from moorage.config import DataDir, ReplicaConfig
from moorage.server import transport

log = logging.getLogger("moorage.server")
WORKER_APP = "moorage.server.worker:create_app"


def run_replica(data_dir: DataDir, admin_password: str | None, workers: int = 1) -> None:
    """Run the replica in the foreground until SIGTERM/SIGINT."""
    config = data_dir.load()
    tls = transport.material(config)  # refuses before anything starts
    transport.raise_open_files()  # connections, served files, etcd channels
    with supervise(data_dir, config, admin_password) as watchdog:
        os.environ["MOORAGE_DATA_DIR"] = str(data_dir.path)
        metrics_dir = data_dir.run_dir / "metrics"  # shared by the API workers
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        os.environ.pop("MOORAGE_ADMIN_PASSWORD", None)  # workers never need it
        if workers == 1:
            from moorage.server.inprocess import serve_here

            serve_here(config, tls, watchdog)
        else:
            _serve_forked(config, tls, watchdog, workers)


def _serve_forked(
    config: ReplicaConfig, tls: transport.Material | None, watchdog: EtcdWatchdog, workers: int
) -> None:
    """granian's main loop here, `workers` API worker processes forked from this one."""
    from granian import Granian  # the server is only needed in this process

    server = Granian(
        WORKER_APP,
        factory=True,
        interface="asgi",  # type: ignore[arg-type]
        workers=workers,
        respawn_failed_workers=True,
        **transport.server_options(config, tls),
    )
    watchdog.give_up = server.signal_handler_interrupt
    watchdog.start()
    stop_watch = threading.Event()
    if tls is not None:
        transport.watch(tls, server.signal_handler_reload, stop_watch)
    log.info("replica %s serving on %s", config.replica_id, config.url)
    try:
        with contextlib.suppress(SystemExit):
            server.serve()
    finally:
        stop_watch.set()
