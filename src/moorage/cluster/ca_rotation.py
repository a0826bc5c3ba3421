"""Rolling the cluster to a new CA (`moorage certs rotate --ca`), through a period where both
CAs are trusted. The CLI drives it (moorage.recovery.certs); the state lives in etcd, so a
crash anywhere leaves a state `certs status` explains and a second run finishes.

The record `/moorage-pki/rotation` (PKI_CA_ROTATION) holds the phase, both CA certificates
and both sealed keys (sealed with the cluster secret, as the CA key always is):

* `trust`   (after `begin`): the new CA exists, the old one still signs. Each replica in turn
  makes `D/tls/ca.crt` the bundle [old, new] and restarts its etcd member (etcd 3.4 reads
  --trusted-ca-file and --peer-trusted-ca-file only at start) — `apply_trust`.
* `reissue` (after `switch`): one transaction made the new CA the cluster CA
  (`/moorage-pki/ca.crt`, `ca.key.sealed`: renewals sign with it, the old sealed key is gone
  from there); each replica's bundle becomes [new, old] (the signing CA first: the one
  `ca export` and join pins show) and its certificate is re-issued (`certs.renew`).
* `drop`: each replica's bundle becomes [new] and its etcd member restarts again; from then
  on a certificate of the old CA is refused everywhere.
* `finish` deletes the record, and with it the old CA's certificate and sealed key.

Every step is idempotent: `apply_trust` rewrites the bundle only when it differs and restarts
etcd only when a probe shows the running member does not trust what it must yet (a client
certificate of the new CA accepted in `trust`/`reissue`; one of the old CA refused in
`drop`), so a second run after a crash redoes only what is missing. Joins are refused while
the record exists (`cluster.tls.sign_join`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import http.client
import json
import logging
import os
import signal
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography import x509

from moorage.cluster.certs import RELOAD_INTERVAL, drain_ack, drain_marker
from moorage.cluster.etcd_process import ETCD_PID, etcd_health
from moorage.cluster.processes import alive, owned_pid, read_pid
from moorage.cluster.tls import LOOPBACK, replica_hosts, tls_dir
from moorage.config import DataDir, ReplicaConfig
from moorage.errors import MoorageError
from moorage.meta.cluster_store import ClusterStore
from moorage.pki import ca as pki
from moorage.pki.files import PRIVATE_MODE, write_atomic

log = logging.getLogger("moorage.ca_rotation")
PHASES = ("trust", "reissue", "drop")
#: How long a replica waits for its restarted etcd member to be healthy again.
RESTART_TIMEOUT = 90.0
PROBE_TIMEOUT = 5.0
#: How long the API workers get to move their etcd client off the local member, and then
#: how long calls already in flight on the old channel get to finish.
DRAIN_TIMEOUT = 3 * RELOAD_INTERVAL + 2.0
DRAIN_SETTLE = 1.5
#: The lock a replica holds while it applies a trust step (its etcd member may restart).
RESTART_LOCK = "ca-rotation-restart"
RESTART_LOCK_TTL = 300


class RotationError(MoorageError):
    """A CA rotation step cannot be done (no rotation, wrong phase, a probe failed)."""


@dataclass(frozen=True)
class Rotation:
    phase: str
    old_ca: x509.Certificate
    new_ca: x509.Certificate
    old_key: bytes  # sealed with the cluster secret
    new_key: bytes
    started_at: str
    revision: int = 0

    def encode(self) -> bytes:
        return json.dumps(
            {
                "phase": self.phase,
                "old_ca": pki.cert_pem(self.old_ca).decode(),
                "new_ca": pki.cert_pem(self.new_ca).decode(),
                "old_key": base64.b64encode(self.old_key).decode(),
                "new_key": base64.b64encode(self.new_key).decode(),
                "started_at": self.started_at,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def decode(cls, data: bytes, revision: int) -> Rotation:
        try:
            doc = json.loads(data)
            if doc["phase"] not in PHASES:
                raise ValueError(f"unknown phase {doc['phase']!r}")
            return cls(
                phase=doc["phase"],
                old_ca=pki.load_cert(doc["old_ca"].encode()),
                new_ca=pki.load_cert(doc["new_ca"].encode()),
                old_key=base64.b64decode(doc["old_key"]),
                new_key=base64.b64decode(doc["new_key"]),
                started_at=str(doc["started_at"]),
                revision=revision,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RotationError(
                f"the CA rotation record in etcd (/moorage-pki/rotation) is unreadable: {exc}"
            ) from None

    def bundle(self) -> list[x509.Certificate]:
        """What every replica trusts in this phase; the signing CA first."""
        if self.phase == "trust":
            return [self.old_ca, self.new_ca]
        if self.phase == "reissue":
            return [self.new_ca, self.old_ca]
        return [self.new_ca]

    def public(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "old_ca": pki.fingerprint(self.old_ca),
            "new_ca": pki.fingerprint(self.new_ca),
            "new_ca_subject": self.new_ca.subject.rfc4514_string(),
            "new_ca_pem": pki.cert_pem(self.new_ca).decode(),
            "signing_ca": pki.fingerprint(self.bundle()[0]),
            "trusted": [pki.fingerprint(c) for c in self.bundle()],
            "started_at": self.started_at,
        }


async def current(store: ClusterStore) -> Rotation | None:
    found = await store.get_ca_rotation()
    return None if found is None else Rotation.decode(*found)


def _secret(config: ReplicaConfig) -> bytes:
    try:
        return tls_dir(config).read_secret()
    except OSError as exc:
        raise RotationError(f"this replica cannot read its cluster secret: {exc}") from None


async def begin(store: ClusterStore, config: ReplicaConfig) -> Rotation:
    """Make the new CA and store it, sealed, beside the current one (phase `trust`); the
    rotation in progress if there is one already (a second run resumes it)."""
    found = await current(store)
    if found is not None:
        return found
    stored = await store.get_ca()
    if stored is None:
        raise RotationError("the cluster stores no CA (etcd keys /moorage-pki/)")
    secret = _secret(config)
    old_cert = pki.load_cert(stored[0])
    try:
        pki.unseal_ca_key(stored[1], secret, old_cert)  # this replica can sign with it
    except ValueError as exc:
        raise RotationError(f"cannot open the current CA key: {exc}") from None
    now = datetime.datetime.now(datetime.UTC)
    authority = pki.create_ca(config.cluster_id, generation=f"rotated {now:%Y-%m-%dT%H:%M:%SZ}")
    record = Rotation(
        phase="trust",
        old_ca=old_cert,
        new_ca=authority.cert,
        old_key=stored[1],
        new_key=pki.seal_ca_key(authority, secret),
        started_at=now.isoformat(timespec="seconds"),
    )
    if not await store.put_ca_rotation(record.encode(), 0):
        found = await current(store)  # another run began at the same time: that one
        if found is None:
            raise RotationError("the CA rotation record changed meanwhile; run it again")
        return found
    log.info("CA rotation begun: new CA %s", authority.fingerprint)
    return (await current(store)) or record


async def advance(store: ClusterStore, to: str) -> Rotation:
    """Move the rotation to phase `to` (`reissue`: the new CA becomes the cluster CA in the
    same transaction; `drop`). Already there or beyond: nothing to do."""
    rot = await current(store)
    if rot is None:
        raise RotationError("no CA rotation is in progress")
    if PHASES.index(rot.phase) >= PHASES.index(to):
        return rot
    if PHASES.index(to) != PHASES.index(rot.phase) + 1:
        raise RotationError(f"the CA rotation is in phase {rot.phase}, not ready for {to}")
    nxt = replace(rot, phase=to)
    ca = (pki.cert_pem(rot.new_ca), rot.new_key) if to == "reissue" else None
    if not await store.put_ca_rotation(nxt.encode(), rot.revision, ca):
        raise RotationError("the CA rotation record changed meanwhile; run it again")
    log.info("CA rotation: phase %s", to)
    return (await current(store)) or nxt


async def finish(store: ClusterStore) -> str:
    """Delete the rotation record (the old CA with it); the cluster CA's fingerprint."""
    rot = await current(store)
    stored = await store.get_ca()
    if rot is not None:
        if rot.phase != "drop":
            raise RotationError(f"the CA rotation is in phase {rot.phase}, not finished")
        if not await store.put_ca_rotation(None, rot.revision):
            raise RotationError("the CA rotation record changed meanwhile; run it again")
        log.info("CA rotation finished: the cluster CA is %s", pki.fingerprint(rot.new_ca))
        return pki.fingerprint(rot.new_ca)
    if stored is None:
        raise RotationError("the cluster stores no CA")
    return pki.fingerprint(pki.load_cert(stored[0]))


# --- one replica: trust the phase's bundle, its etcd member too --------------------------


def _probe_context(config: ReplicaConfig, sealed: bytes, ca: x509.Certificate) -> ssl.SSLContext:
    """A TLS client context presenting a throw-away certificate (1 day) of `ca`, with this
    replica's names (etcd checks a peer's source address against them): whether etcd
    accepts it says whether etcd trusts `ca`. The server is not verified (the question is
    only what it accepts)."""
    tls = tls_dir(config)
    authority = pki.unseal_ca_key(sealed, _secret(config), ca)
    hosts = [*replica_hosts(config.http_host, config.etcd_host), LOOPBACK]
    key, cert = pki.issue_replica(authority, config.replica_id, hosts, days=1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    stem = tls.path / f".probe.{os.getpid()}"
    key_file, cert_file = Path(f"{stem}.key"), Path(f"{stem}.crt")
    try:
        write_atomic(key_file, pki.key_pem(key), PRIVATE_MODE)
        write_atomic(cert_file, pki.cert_pem(cert), PRIVATE_MODE)
        ctx.load_cert_chain(str(cert_file), str(key_file))
    finally:
        key_file.unlink(missing_ok=True)
        cert_file.unlink(missing_ok=True)
    return ctx


def accepts(url: str, ctx: ssl.SSLContext) -> bool:
    """Whether the etcd listener at `url` accepts the client certificate of `ctx` (any HTTP
    answer: yes; a TLS refusal: no; it does not answer at all: MoorageError)."""
    try:
        with urllib.request.urlopen(f"{url}/version", timeout=PROBE_TIMEOUT, context=ctx):
            return True
    except urllib.error.HTTPError:
        return True
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLError | ConnectionResetError):
            return False
        raise MoorageError(f"{url} does not answer: {exc.reason}") from None
    except (ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected):
        return False
    except OSError as exc:
        raise MoorageError(f"{url} does not answer: {exc}") from None


def _etcd_urls(config: ReplicaConfig) -> list[str]:
    return [config.etcd_client_url, config.etcd_peer_url]


def etcd_trusts(config: ReplicaConfig, rot: Rotation) -> dict[str, bool]:
    """What the running etcd member trusts, probed on its client and peer listeners:
    `new` (a new-CA certificate is accepted) and `old` (an old-CA one is)."""
    out = {}
    for name, sealed, ca in (("new", rot.new_key, rot.new_ca), ("old", rot.old_key, rot.old_ca)):
        ctx = _probe_context(config, sealed, ca)
        out[name] = all(accepts(url, ctx) for url in _etcd_urls(config))
    return out


def _trust_ok(rot: Rotation, trusts: dict[str, bool]) -> bool:
    return trusts["new"] and (trusts["old"] != (rot.phase == "drop"))


def restart_etcd(config: ReplicaConfig, timeout: float = RESTART_TIMEOUT) -> None:
    """Stop this replica's etcd member (SIGTERM: a leader hands leadership over first); the
    replica's supervisor (EtcdWatchdog) starts it again, with the current `D/tls/` files.
    Returns once the new process is healthy: it has a leader and answered a linearizable read,
    i.e. it has caught up with the raft log as of that read."""
    data_dir = DataDir(Path(config.data_dir))
    pid_file = data_dir.pid_file(ETCD_PID)
    old = owned_pid(pid_file, str(data_dir.etcd_dir))
    if old is None:
        raise RotationError(
            "this replica's etcd member is not running under its supervisor (no etcd pid); "
            "see moorage status"
        )
    marker = drain_marker(config)
    try:
        _drain(config, data_dir, marker)
        os.kill(old, signal.SIGTERM)
        ctx = tls_dir(config).client_context()
        deadline = time.monotonic() + timeout
        last = "not restarted yet"
        while time.monotonic() < deadline:
            time.sleep(0.25)
            pid = owned_pid(pid_file, str(data_dir.etcd_dir))
            if pid is None or pid == old:
                continue
            healthy, last = etcd_health(config.etcd_client_port, ctx)
            if healthy:
                log.info("etcd restarted (pid %d -> %d) with the CAs of D/tls/ca.crt", old, pid)
                return
        raise RotationError(
            f"this replica's etcd member was not healthy again within {timeout:.0f} s after "
            f"its restart ({last}); see {data_dir.log_dir / 'etcd.log'}"
        )
    finally:
        marker.unlink(missing_ok=True)
        for ack in data_dir.run_dir.glob("etcd-drained-*"):
            ack.unlink(missing_ok=True)


def _workers(data_dir: DataDir) -> list[int]:
    """The pids of this replica's live API workers (their `api-PID.pid` files)."""
    out = []
    for f in data_dir.run_dir.glob("api-*.pid"):
        pid = read_pid(f)
        if pid is not None and alive(pid):
            out.append(pid)
    return out


def _drain(config: ReplicaConfig, data_dir: DataDir, marker: Path) -> None:
    """Move every API worker's etcd client off the local member before it stops (they see
    `marker` within DRAIN_POLL and acknowledge); calls in flight finish meanwhile. A
    worker that does not acknowledge in time is not waited for (its next call fails over)."""
    for ack in data_dir.run_dir.glob("etcd-drained-*"):
        ack.unlink(missing_ok=True)
    marker.write_text(f"{os.getpid()}\n")
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        waiting = [p for p in _workers(data_dir) if not drain_ack(config, p).exists()]
        if not waiting:
            break
        time.sleep(0.2)
    else:
        log.warning("API workers %s did not move off the local etcd member in time", waiting)
    time.sleep(DRAIN_SETTLE)


def _apply(config: ReplicaConfig, rot: Rotation) -> dict[str, Any]:
    tls = tls_dir(config)
    wrote = tls.write_bundle(rot.bundle())
    trusts = etcd_trusts(config, rot)
    restarted = False
    if not _trust_ok(rot, trusts):
        restart_etcd(config)
        restarted = True
        trusts = etcd_trusts(config, rot)
        if not _trust_ok(rot, trusts):
            raise RotationError(
                f"after its restart this replica's etcd member trusts new CA: {trusts['new']}, "
                f"old CA: {trusts['old']} (phase {rot.phase}); see its D/log/etcd.log"
            )
    return {
        "replica_id": config.replica_id,
        "phase": rot.phase,
        "trusted": [pki.fingerprint(c) for c in tls.read_bundle()],
        "bundle_written": wrote,
        "etcd_restarted": restarted,
        "etcd_trusts": trusts,
    }


async def apply_trust(store: ClusterStore, config: ReplicaConfig, phase: str) -> dict[str, Any]:
    """This replica trusts what phase `phase` of the rotation needs: its `D/tls/ca.crt` and
    (restarted if needed) its etcd member. Refused if the rotation is in another phase."""
    rot = await current(store)
    if rot is None:
        raise RotationError("no CA rotation is in progress")
    if rot.phase != phase:
        raise RotationError(f"the CA rotation is in phase {rot.phase}, not {phase}")
    # One member at a time, even if two runs of the command overlap: two restarting members
    # of three would stop the cluster.
    holder = await store.acquire_lock(RESTART_LOCK, config.replica_id, RESTART_LOCK_TTL,
                                      time.time())  # fmt: skip
    if holder is not None:
        raise RotationError(
            f"replica {holder.owner} is applying a CA rotation step (another run of 'certs "
            "rotate --ca'?); wait for it to end, then run the command again"
        )
    try:
        return await asyncio.to_thread(_apply, config, rot)
    finally:
        with contextlib.suppress(MoorageError):  # else its lease ends it
            await store.release_lock(RESTART_LOCK, config.replica_id)
