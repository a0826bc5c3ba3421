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

import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from moorage.config import ReplicaConfig
from moorage.errors import ConfigError
from moorage.pki import TlsDir

log = logging.getLogger("moorage.server")
WATCH_INTERVAL = 2.0


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
            reload()

    thread = threading.Thread(target=loop, name="cert-watch", daemon=True)
    thread.start()
    return thread
