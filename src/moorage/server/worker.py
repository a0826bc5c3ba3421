"""The replica's API: `in_process_app` is what the replica process serves itself (one API
worker, the default); `create_app` is the factory granian calls in each forked API worker
(`moorage run --workers N`, N > 1).

`build_app` assembles the replica a worker serves: blob storage, the journal, the registry
and authentication (`moorage.cluster.replica.Replica`), its background jobs
(`moorage.cluster.jobs`, run while the app serves) and its HTTP app (`moorage.api.app`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from moorage import logs
from moorage.api.app import ASGIApp, http_app
from moorage.api.metrics import observe_gc, observe_trim, set_health
from moorage.audit.log import EtcdAuditLog, login_recorder, origin_name
from moorage.auth.basic import BasicAuthenticator
from moorage.auth.policy import AccessView, Policy
from moorage.auth.token_auth import TokenAuthenticator
from moorage.cluster import jobs
from moorage.cluster.certs import reloading
from moorage.cluster.heartbeat import Heartbeat
from moorage.cluster.replica import Replica
from moorage.cluster.tls import client_tls, tls_dir
from moorage.cluster.webhooks import Webhooks
from moorage.config import DataDir, ReplicaConfig
from moorage.meta.account_journal import journal_to
from moorage.meta.base import MetaStore
from moorage.meta.etcd import EtcdCluster
from moorage.meta.tag_cache import TagCache, stall_file
from moorage.pki.trust import trust_data_dir
from moorage.registry import Registry
from moorage.server import transport
from moorage.server.token_auth import token_authenticator
from moorage.storage import open_blob_storage, open_journal
from moorage.storage.journal import Journal
from moorage.web import ui_routes

IO_THREADS = 32


def assemble(config: ReplicaConfig, meta: MetaStore) -> Replica:
    """The replica of this process over the store `meta`: its blob storage, journal,
    registry and authentication (and, with etcd, its cluster API and heartbeat)."""
    storage = open_blob_storage(config.storage)
    journal: Journal | None = open_journal(
        config.storage, f"{config.replica_id}-{os.getpid()}", config.epoch, config.cluster_id
    )
    if os.environ.get("MOORAGE_JOURNAL", "1") == "0":
        journal = None  # only to measure the journal's cost in the benchmark
    if journal is not None:  # account changes are journaled too, before they are answered
        meta.account_log = journal_to(journal.append, meta)
    # The cluster-wide audit log: this worker's events, batched into the store.
    audit = EtcdAuditLog(meta, origin_name(config.replica_id, os.getpid()))
    view = AccessView(meta)  # accounts and grants, cached under an etcd watch
    # access tokens as passwords (token_auth), Bearer JWTs over both (bearer)
    basic = BasicAuthenticator(meta, on_login=login_recorder(audit), view=view, rehash=True)
    auth = token_authenticator(config, meta, TokenAuthenticator(basic, meta))
    # tag -> manifest, cached under an etcd watch, kept exact across the cluster
    # (MOORAGE_TAG_CACHE=0 turns it off: only to measure what it saves in the benchmark)
    tags = None
    if isinstance(meta, EtcdCluster) and os.environ.get("MOORAGE_TAG_CACHE", "1") != "0":
        tags = TagCache(meta, f"{config.replica_id}-{os.getpid()}", stall_file())
    replica = Replica(
        config=config,
        registry=Registry(storage, meta, journal, tags),
        auth=auth,
        authorizer=Policy(view),
        audit=audit,
    )
    if isinstance(meta, EtcdCluster):
        replica.cluster = meta
        replica.heartbeat = Heartbeat(meta, config)
        secret = b""
        with contextlib.suppress(OSError):  # webhook secrets are sealed with a key from it
            secret = tls_dir(config).read_secret()
        replica.webhooks = Webhooks(meta, config.replica_id, config.http_addr, secret)
        # retention and garbage collection send delete events
        replica.registry.manifests.on_delete = replica.webhooks.on_delete
    return replica


def _observe(replica: Replica) -> None:
    set_health(replica.etcd.healthy, replica.storage.healthy, replica.role)


def build_app(config: ReplicaConfig, meta: MetaStore, admin_password: str | None = None) -> ASGIApp:
    """One replica's ASGI app: while it serves (its lifespan), the replica's jobs run; at
    the end the store is closed. `admin_password` creates the admin account if missing."""
    replica = assemble(config, meta)

    @contextlib.asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        # fsyncs and file I/O run in threads: enough of them that concurrent pushes do not
        # queue behind each other's fsync (asyncio's default is cpu count + 4).
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="moorage-io")
        )
        if replica.registry.manifests.tags is not None:
            replica.registry.manifests.tags.start()
        try:
            async with (
                jobs.running(replica, admin_password, _observe, observe_gc, observe_trim),
                reloading(config, meta),
                replica.audit.running(),
            ):
                yield
        finally:
            if replica.registry.manifests.tags is not None:
                await replica.registry.manifests.tags.close()
            await replica.registry.aclose()  # the journal's descriptor would outlive the app
            await replica.registry.storage.close()  # an S3 client's connections
            if isinstance(replica.authorizer, Policy):
                await replica.authorizer.view.close()
            await meta.close()

    return http_app(replica, lifespan, ui_routes())


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


def _bound_malloc() -> None:
    """glibc keeps freed memory per arena (up to 8 per core, one per busy thread) and raises
    its mmap threshold to the largest buffer freed, after which 4 MiB upload buffers come from
    those arenas and stay there. Two arenas and a fixed 1 MiB threshold (big buffers go back
    to the kernel when freed) keep a worker's memory flat under concurrent pushes. The worker
    is forked, or the replica process itself, so the MALLOC_* environment variables would
    come too late: mallopt."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_ARENA_MAX, 2)
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)


_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8  # glibc's malloc.h


def create_app() -> ASGIApp:
    """Factory the ASGI server calls in each forked worker; the replica comes from the
    environment."""
    return _replica_app(forked=True)


def in_process_app() -> ASGIApp:
    """The app the replica process serves itself (`moorage.server.inprocess`)."""
    return _replica_app(forked=False)


def _replica_app(forked: bool) -> ASGIApp:
    _bound_malloc()
    data_dir = DataDir(os.environ["MOORAGE_DATA_DIR"])
    config = data_dir.load()
    logs.configure(config.log_format, config.replica_id)  # as the replica process's
    trust_data_dir(data_dir.path)  # peers' HTTPS (status pings) chains to the cluster CA
    # The process serving the API, forked or not: the CA rotation waits for each to move
    # its etcd client off the local member (cluster.ca_rotation._workers).
    pid_file = data_dir.pid_file(f"api-{os.getpid()}")
    pid_file.write_text(f"{os.getpid()}\n")
    if forked:
        _exit_with_parent(pid_file)
    meta = EtcdCluster(config.store_endpoints, tls=client_tls(config))
    app = build_app(config, meta)
    tls = transport.material(config)
    if tls is None:
        return app
    # A renewed certificate respawns this worker: close kept-alive connections first.
    closing: ASGIApp = transport.CloseWhenReplaced(app, tls)
    return closing
