"""What the API listens with (DESIGN.md §7): HTTPS with the replica's cluster certificate
(`D/tls/replica.crt`) or the operator's (`--tls-cert/--tls-key`), or plain HTTP on loopback
(or with `--insecure-http`); and the watcher that makes the server pick up a renewed
certificate without a restart.

granian reads the certificate and key files when it starts a worker, and on SIGHUP (here:
`Granian.signal_handler_reload`) it starts new workers before stopping the old ones, on the
same listening socket; so a certificate change is served by respawning the API workers one
at a time, while the replica's etcd member and supervisor keep running.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moorage import logs
from moorage.config import ReplicaConfig
from moorage.errors import ConfigError
from moorage.pki import TlsDir

log = logging.getLogger("moorage.server")
WATCH_INTERVAL = 2.0
# Between seeing a new certificate and respawning the workers: long enough for every worker
# to notice it (CHECK_EVERY) and answer the requests in flight with `Connection: close`.
DRAIN = 1.5
CHECK_EVERY = 0.25


@dataclass(frozen=True)
class Material:
    """The certificate (chain) and key files the API serves HTTPS with."""

    cert: Path
    key: Path
    own: bool  # the operator's (--tls-cert/--tls-key), not the cluster's

    def check(self) -> None:
        """Both files load and belong together, or ConfigError saying which."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(str(self.cert), str(self.key))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot serve HTTPS with certificate {self.cert} and key {self.key}: {exc}; "
                "the certificate (PEM, leaf first, then its chain) and its unencrypted PEM key "
                "must both be readable and match"
            ) from None

    def stamp(self) -> tuple[tuple[int, int, int], ...]:
        out = []
        for f in (self.cert, self.key):
            try:
                st = f.stat()
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append((0, 0, 0))
        return tuple(out)


def material(config: ReplicaConfig) -> Material | None:
    """The files to serve HTTPS with, None for plain HTTP, or ConfigError saying what to do
    when the replica must serve HTTPS and has no certificate."""
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("give both --tls-cert and --tls-key (PEM files), or neither")
    if config.tls_cert is not None and config.tls_key is not None:
        found = Material(Path(config.tls_cert), Path(config.tls_key), own=True)
        found.check()
        return found
    if not config.https:
        return None
    tls = TlsDir(Path(config.data_dir))
    if not (tls.cert.is_file() and tls.key.is_file()):
        why = "--tls" if config.tls else f"{config.http_host} is not a loopback address"
        raise ConfigError(
            f"the API must serve HTTPS ({why}) but this replica has no certificate "
            f"({tls.cert} is missing): give --tls-cert FILE --tls-key FILE (your own), or "
            "--insecure-http to serve plain HTTP anyway (passwords then cross the network "
            "in clear)"
        )
    found = Material(tls.cert, tls.key, own=False)
    found.check()
    return found


def watch(found: Material, reload: Callable[[], None], stop: threading.Event) -> threading.Thread:
    """Call `reload` once the certificate or key file changed and the new pair loads (a
    half-replaced pair is waited out, and the workers keep the old one meanwhile)."""

    def loop() -> None:
        served = warned = found.stamp()
        while not stop.wait(WATCH_INTERVAL):
            now = found.stamp()
            if now == served:
                continue
            try:
                found.check()
            except ConfigError as exc:
                if now != warned:
                    log.warning("new certificate not usable (yet); serving the old: %s", exc)
                    warned = now
                continue
            if found.stamp() != now:
                continue  # still being written
            log.info("certificate %s changed: restarting the API workers to serve it", found.cert)
            served = now
            if stop.wait(DRAIN):  # the workers close their kept-alive connections meanwhile
                return
            reload()

    thread = threading.Thread(target=loop, name="cert-watch", daemon=True)
    thread.start()
    return thread


Message = MutableMapping[str, Any]
ASGI = Callable[
    [Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]


class CloseWhenReplaced:
    """ASGI middleware of an API worker serving HTTPS. Once the certificate files differ
    from those the worker started with (the replica process respawns the workers DRAIN
    seconds later), every response carries `Connection: close`: no kept-alive connection
    is left idle on the worker when it stops, where the client's next request on it would
    get no answer ("server disconnected"). Costs at most two stats every CHECK_EVERY."""

    def __init__(self, app: ASGI, found: Material) -> None:
        self.app = app
        self.found = found
        self.started = found.stamp()
        self.checked = time.monotonic()
        self.replaced = False

    def served_again(self) -> None:
        """The files now on disk are those served (the replica process respawned its
        server on the same app): keep connections alive again."""
        self.started = self.found.stamp()
        self.replaced = False

    async def __call__(
        self,
        scope: Message,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        now = time.monotonic()
        if not self.replaced and now - self.checked >= CHECK_EVERY:
            self.checked = now
            self.replaced = self.found.stamp() != self.started
        if not self.replaced:
            await self.app(scope, receive, send)
            return

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"
                ]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing)


#: Connections one API worker holds open at once; more wait in the listen queue. granian
#: counts connections, not requests: each holds a slot for as long as it is open, idle
#: keep-alive and silent ones too. At 64 (the bound once meant for requests in flight), 64
#: sockets that sent nothing, from anyone and without credentials, shut a replica out
#: (`/_ping` included) for as long as they stayed open; a probe did that. 1024 is granian's
#: own default (the listen backlog).
BACKPRESSURE = 1024
#: Memory stays flat under many concurrent pulls: file reads run in at most this many threads
#: (granian would start up to 512), each response in flight holding a write buffer.
BLOCKING_THREADS = 16  # granian's threads for file reads (pathsend), per worker
#: A connection that sends no complete request head for this long is closed: a silent or
#: idle keep-alive socket gives its slot back (granian's default is 30 s).
HEADER_READ_TIMEOUT_MS = 10_000


#: Open files the replica asks for (its soft limit, up to the hard one): BACKPRESSURE
#: connections per worker, the files they serve, etcd channels and the journal.
OPEN_FILES = 65_536


def raise_open_files() -> None:
    """Raise the soft limit on open files to OPEN_FILES, or to the hard limit if that is
    lower (as Go programs such as Distribution do at start): at a default soft limit of 1,024,
    1,024 connections alone would leave no descriptor for a blob."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES if hard == resource.RLIM_INFINITY else min(OPEN_FILES, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(OSError, ValueError):  # not allowed: the limit stays
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def server_options(config: ReplicaConfig, tls: Material | None) -> dict[str, Any]:
    """granian's options for the API, the same whether it is served in the replica's own
    process (server/inprocess.py) or by forked workers (server/process.py): the address,
    the access log left to moorage.api.access_log, the log format, TLS (files re-read by
    each new server: see `watch`; TLS 1.2 floor) and the bounds above."""
    from granian.constants import SSLProtocols  # the HTTP server only where it runs
    from granian.http import HTTP1Settings

    return {
        "address": config.http_host,
        "port": config.http_port,
        "log_access": False,
        "log_dictconfig": logs.granian_config(config.log_format, config.replica_id),
        "ssl_cert": tls.cert if tls else None,
        "ssl_key": tls.key if tls else None,
        "ssl_protocol_min": SSLProtocols.tls12,
        "backpressure": BACKPRESSURE,
        "runtime_blocking_threads": BLOCKING_THREADS,
        "http1_settings": HTTP1Settings(header_read_timeout=HEADER_READ_TIMEOUT_MS),
    }
