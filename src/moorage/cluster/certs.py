"""A replica's certificates: what it reports (`certs status`), its renewal (`certs rotate`),
and the reload of its etcd clients once its files change.

* `local_report`: the cluster CA and this replica's certificate (`D/tls/`), and the
  operator's HTTPS certificate when it serves one (`--tls-cert`), as `pki.summary` rows.
* `renew`: a fresh key and CSR made here, signed with the cluster CA (unsealed from etcd with
  this replica's `D/tls/cluster.secret`, as for a join) for the same names; both files are
  staged, then renamed key then certificate back to back (a mismatched pair is visible for
  the time between two renames; etcd, granian and `reloader` all wait a half-written pair
  out). etcd loads its certificate on every new connection (client and peer); HTTPS
  workers are respawned by `moorage.server.transport.watch`; every worker's etcd client is
  reopened by `reloader` (also on plain HTTP).
* `reloader`: every RELOAD_INTERVAL seconds, when `D/tls/` changed and the new pair loads, a
  fresh etcd channel (`EtcdMetaStore.reopen`; calls in flight finish on the old one); within
  DRAIN_POLL seconds of a drain marker appearing or going, the endpoints' new order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import urllib.parse
from pathlib import Path
from typing import Any

from moorage.cluster.tls import client_tls, replica_hosts, sign_join, tls_dir
from moorage.config import DataDir, ReplicaConfig
from moorage.errors import MoorageError
from moorage.meta.cluster_store import ClusterStore
from moorage.meta.etcd import EtcdCluster, EtcdMetaStore
from moorage.pki import ca as pki
from moorage.pki.files import PRIVATE_MODE, PUBLIC_MODE, load_bundle, write_atomic

log = logging.getLogger("moorage.certs")
RELOAD_INTERVAL = 2.0
#: Between rounds the drain marker is looked for this often: a round starts as soon as it
#: appears or goes (an etcd restart of `certs rotate --ca` waits for every worker's ack).
DRAIN_POLL = 0.25
#: The members' client URLs are read every this many RELOAD_INTERVALs (and at the first).
ENDPOINTS_EVERY = 5
PROBE_TIMEOUT = 5.0


def _summary(path: Path) -> dict[str, Any]:
    try:
        return pki.summary(pki.load_cert(path.read_bytes())).as_dict() | {"path": str(path)}
    except (OSError, ValueError) as exc:
        return {"path": str(path), "error": f"cannot read the certificate: {exc}"}


def _trusted(path: Path) -> list[dict[str, Any]]:
    """The CAs of a bundle after the first (there are some during a CA rotation)."""
    try:
        certs = load_bundle(path.read_bytes())
    except (OSError, ValueError):
        return []
    return [pki.summary(c).as_dict() | {"path": str(path)} for c in certs[1:]]


def local_report(config: ReplicaConfig) -> dict[str, Any]:
    """This replica's certificates (files only: milliseconds). `ca` is the CA that signs (the
    first of `D/tls/ca.crt`); `trusted_cas` the others it trusts (during a CA rotation)."""
    tls = tls_dir(config)
    doc: dict[str, Any] = {
        "replica_id": config.replica_id,
        "url": config.url,
        "ca": _summary(tls.ca_cert),
        "trusted_cas": _trusted(tls.ca_cert),
        "replica": _summary(tls.cert),
        "https": None,
    }
    if config.tls_cert is not None:  # the operator's own, served instead of the cluster's
        doc["https"] = _summary(Path(config.tls_cert))
    return doc


def _stage(path: Path, data: bytes, mode: int) -> Path:
    staged = path.with_name(f".{path.name}.renew")
    write_atomic(staged, data, mode)
    return staged


async def renew(store: ClusterStore, config: ReplicaConfig) -> dict[str, Any]:
    """A new certificate (and key) for this replica, written to `D/tls/`; the old and new
    fingerprints."""
    tls = tls_dir(config)
    old = pki.fingerprint(tls.read_cert())
    hosts = replica_hosts(config.http_host, config.etcd_host)
    key = pki.generate_key()
    csr = pki.csr_pem(pki.make_csr(key, config.replica_id, hosts)).decode()
    signed = await sign_join(store, config, config.replica_id, csr, hosts, renewal=True)
    cert = pki.load_cert(signed["certificate"].encode())
    staged_key = _stage(tls.key, pki.key_pem(key), PRIVATE_MODE)
    staged_cert = _stage(tls.cert, pki.cert_pem(cert), PUBLIC_MODE)
    os.replace(staged_key, tls.key)
    os.replace(staged_cert, tls.cert)
    fd = os.open(tls.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    new = pki.fingerprint(cert)
    log.info("renewed this replica's certificate: %s -> %s", old, new)
    return {"replica_id": config.replica_id, "old": old, "new": new}


def presented(url: str, context: ssl.SSLContext | None = None) -> str:
    """The fingerprint of the certificate a TLS server at `url` (https://HOST:PORT) presents
    now, on a new connection (not verified: the caller compares it)."""
    parsed = urllib.parse.urlsplit(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 443
    ctx = context or ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT) as sock,
        ctx.wrap_socket(sock, server_hostname=host) as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    if not der:
        raise ValueError(f"{url} presented no certificate")
    from cryptography import x509

    return pki.fingerprint(x509.load_der_x509_certificate(der))


def etcd_presents(config: ReplicaConfig) -> dict[str, str]:
    """What this replica's etcd member presents on new client and peer connections (a
    client certificate is offered: etcd requires one)."""
    out = {}
    tls = tls_dir(config)
    for name, url in (("etcd_client", config.etcd_client_url), ("etcd_peer", config.etcd_peer_url)):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
        try:
            out[name] = presented(url, ctx)
        except (OSError, ValueError, ssl.SSLError) as exc:
            out[name] = f"error: {exc}"
    return out


def _stamp(config: ReplicaConfig) -> tuple[tuple[int, int, int], ...]:
    tls = tls_dir(config)
    out = []
    for f in (tls.ca_cert, tls.cert, tls.key):
        try:
            st = f.stat()
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((0, 0, 0))
    return tuple(out)


def _loads(config: ReplicaConfig) -> bool:
    tls = tls_dir(config)
    try:
        ssl.create_default_context(cafile=str(tls.ca_cert)).load_cert_chain(
            str(tls.cert), str(tls.key)
        )
    except (OSError, ssl.SSLError):
        return False
    return True


async def member_endpoints(config: ReplicaConfig, store: EtcdMetaStore) -> list[str] | None:
    """The client URLs of every voting member as this member knows them (a serializable
    read), the local one first: what the etcd client should fail over between. A replica's
    configuration lists only the members of its join (the first replica none), so without
    this its API would stop with its own etcd member (`certs rotate --ca` restarts each)."""
    if not isinstance(store, EtcdCluster):
        return None
    try:
        members = await store.members(linearizable=False)
    except MoorageError:
        return None
    others = [
        u
        for m in members
        if not m.is_learner and m.name != config.etcd_name
        for u in m.client_urls
        if u != config.etcd_client_url
    ]
    return [config.etcd_client_url, *others] if others else None


def drain_marker(config: ReplicaConfig) -> Path:
    """While this file exists, the replica's etcd member is about to restart (`certs rotate
    --ca`): every API worker's etcd client puts the other members first (`reloader`)."""
    return DataDir(Path(config.data_dir)).run_dir / "etcd-draining"


def drain_ack(config: ReplicaConfig, pid: int) -> Path:
    """What API worker `pid` writes once its etcd client has moved off the local member."""
    return DataDir(Path(config.data_dir)).run_dir / f"etcd-drained-{pid}"


async def reloader(config: ReplicaConfig, store: EtcdMetaStore) -> None:
    """Reopen `store`'s channel (runs until cancelled) whenever

    * `D/tls/` changed and the new pair loads;
    * the members' client URLs changed (read every ENDPOINTS_EVERY rounds): the client fails
      over between all of them, the local member first;
    * `drain_marker` appeared (the local member goes last, then `drain_ack` is written) or
      went away (the local member first again)."""
    served = await asyncio.to_thread(_stamp, config)
    marker = drain_marker(config)
    rounds = 0
    members: list[str] | None = None
    drained = False
    while True:
        await _next_round(marker, drained)
        rounds += 1
        draining = await asyncio.to_thread(marker.exists)
        if members is None or rounds % ENDPOINTS_EVERY == 1 or draining != drained:
            members = await member_endpoints(config, store) or members
        wanted = ([*members[1:], members[0]] if draining else members) if members else None
        endpoints = wanted if wanted and wanted != store.endpoints else None
        now = await asyncio.to_thread(_stamp, config)
        files = now != served and await asyncio.to_thread(_loads, config)
        if files or endpoints is not None:
            try:
                material = await asyncio.to_thread(client_tls, config) if files else store.tls
                await store.reopen(material, endpoints)
            except Exception as exc:  # keep serving on the old channel; try again next round
                log.warning("could not reopen the etcd client: %s", exc)
                continue
            if files:
                served = now
                log.info("TLS files changed: the etcd client uses the new certificate")
            if endpoints is not None:
                log.info("the etcd client fails over between %s", ", ".join(endpoints))
        if draining and not drained:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(drain_ack(config, os.getpid()).write_text, "drained\n")
        drained = draining


async def _next_round(marker: Path, drained: bool) -> None:
    """Wait RELOAD_INTERVAL, or less once the drain marker appeared (not `drained`) or went
    (`drained`): it is looked for every DRAIN_POLL seconds."""
    waited = 0.0
    while waited < RELOAD_INTERVAL:
        step = min(DRAIN_POLL, RELOAD_INTERVAL - waited)
        await asyncio.sleep(step)
        waited += step
        if await asyncio.to_thread(marker.exists) != drained:
            return


@contextlib.asynccontextmanager
async def reloading(config: ReplicaConfig, store: object) -> Any:
    """`reloader` running while the block runs (nothing for a store that is not etcd)."""
    if not isinstance(store, EtcdMetaStore):
        yield
        return
    task = asyncio.create_task(reloader(config, store))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
