"""The candidates of an emergency repair and the probes of the old members (step 1 and 2 of
`moorage.recovery.emergency`): each candidate's newest revision of registry data, read from a
data directory (a stopped one through a throw-away copy) or through a replica's admin API."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from moorage.cluster.etcd_process import EtcdProcess, etcd_answers
from moorage.cluster.lifecycle import ping, running_pid
from moorage.cluster.tls import client_tls
from moorage.config import DataDir, ReplicaConfig
from moorage.errors import MoorageError
from moorage.meta.etcd import ClientTls, EtcdCluster, data_revision
from moorage.meta.etcd_maintenance import member_status
from moorage.meta.records import ReplicaRecord
from moorage.pki.files import TlsDir
from moorage.recovery.client import AdminClient


@dataclass
class Candidate:
    name: str  # data directory or URL
    replica_id: str | None
    data_dir: DataDir | None
    url: str | None
    revision: int | None
    running: bool
    error: str | None = None
    no_data: bool = False  # known to hold no registry data (vs. could not be read)

    def as_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.name,
            "replica_id": self.replica_id,
            "url": self.url,
            "local": self.data_dir is not None,
            "running": self.running,
            "data_revision": self.revision,
            "error": self.error,
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _read_stopped(d: DataDir, config: ReplicaConfig) -> tuple[int, list[ReplicaRecord]]:
    """Newest registry-data revision and replica records of a stopped member's data,
    read from a throw-away copy started alone (the original is not touched)."""
    with tempfile.TemporaryDirectory(prefix="moorage-candidate-") as tmp:
        copy = DataDir(Path(tmp) / "d")
        copy.make_dirs()
        shutil.copytree(d.etcd_dir, copy.etcd_dir)
        shutil.copytree(d.tls_dir, copy.tls_dir)  # the copy runs with the same TLS flags
        temp_config = replace(
            config,
            data_dir=str(copy.path),
            etcd_client_port=_free_port(),
            etcd_peer_port=_free_port(),
            etcd_initial_cluster=None,
            etcd_cluster_state="new",
        )
        etcd = EtcdProcess(copy, temp_config, extra_args=("--force-new-cluster",))
        etcd.start()
        try:
            etcd.wait_ready(timeout=60)
            return asyncio.run(_read_live(temp_config.etcd_client_url, client_tls(config)))
        finally:
            etcd.stop()


async def _read_live(client_url: str, tls: ClientTls) -> tuple[int, list[ReplicaRecord]]:
    revision = await data_revision(client_url, tls=tls)
    store = EtcdCluster([client_url], tls=tls)
    try:
        return revision, await store.replicas(local=True)
    finally:
        await store.close()


def inspect_dir(d: DataDir) -> tuple[Candidate, list[ReplicaRecord]]:
    try:
        config = d.load()
    except MoorageError as exc:
        absent = not d.config_file.exists()
        return Candidate(str(d.path), None, d, None, None, False, str(exc), absent), []
    running = running_pid(d) is not None
    cand = Candidate(str(d.path), config.replica_id, d, config.url, None, running)
    if not (d.etcd_dir / "member").is_dir():
        cand.error = "no etcd data"
        cand.no_data = True
        return cand, []
    try:
        context = TlsDir(d.path).client_context()
        if running and etcd_answers(config.etcd_client_port, context):
            cand.revision, records = asyncio.run(
                _read_live(config.etcd_client_url, client_tls(config))
            )
        else:
            cand.revision, records = _read_stopped(d, config)
    except Exception as exc:  # whatever failed, the data was not read
        cand.error = f"could not read its data: {exc}"
        return cand, []
    return cand, records


def inspect_url(client: AdminClient, url: str) -> Candidate:
    single = AdminClient([url], *client.auth, timeout=10)
    try:
        doc = single.call("GET", "/api/v0/cluster/local-revision")
    except MoorageError as exc:
        return Candidate(url, None, None, url, None, False, str(exc))
    return Candidate(url, doc["replica_id"], None, url, int(doc["revision"]), True)


@dataclass
class Probe:
    """What one old member answered (etcd first; its API when its etcd does not answer)."""

    record: ReplicaRecord
    answered: str  # what answered: "etcd URL" or "API URL"
    has_leader: bool | None  # None: its API answers but cannot tell (its etcd is not serving)
    raft_index: int | None = None
    revision: int | None = None  # newest registry data in its copy (None: not read)
    error: str | None = None


LEADER_PATIENCE = 6.0  # several etcd election timeouts (1 s by default)


async def _probe(rec: ReplicaRecord, read_revision: bool, tls: ClientTls) -> Probe | None:
    try:
        st = await member_status(rec.etcd_client_url, 2.0, tls=tls)
    except MoorageError:
        status, doc = await asyncio.to_thread(ping, rec.url, 2.0)
        if not status:
            return None  # dead, or cut off from here: the fence takes care of it
        if status == 200 and doc.get("healthy") is True:
            leader: bool | None = True  # it serves writes: its side has a quorum
        elif doc.get("read_only") is True:
            leader = False
        else:
            leader = None
        return Probe(rec, f"API {rec.url}", leader, error=str(doc.get("error") or ""))
    probe = Probe(rec, f"etcd {rec.etcd_client_url}", bool(st.leader), st.raft_index)
    if read_revision and not st.leader:
        try:
            probe.revision = await data_revision(rec.etcd_client_url, tls=tls)
        except MoorageError as exc:
            probe.error = str(exc)
    return probe


async def probe_members(
    records: list[ReplicaRecord],
    read_revision: set[str],
    tls: ClientTls,
    patience: float = LEADER_PATIENCE,
) -> list[Probe]:
    """Every old member that answers (etcd asked with a replica's certificate, `tls`). A
    member that names a leader is asked again until it does not or `patience` runs out: right
    after the leader died, the others still name it for an election timeout."""
    found = await asyncio.gather(*(_probe(r, r.replica_id in read_revision, tls) for r in records))
    probes = {p.record.replica_id: p for p in found if p is not None}
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        leading = [p.record for p in probes.values() if p.has_leader]
        if not leading:
            break
        await asyncio.sleep(0.5)
        again = await asyncio.gather(
            *(_probe(r, r.replica_id in read_revision, tls) for r in leading)
        )
        for rec, p in zip(leading, again, strict=True):
            if p is None:
                probes.pop(rec.replica_id, None)
            else:
                probes[rec.replica_id] = p
    return sorted(probes.values(), key=lambda p: p.record.replica_id)


def inspect_urls(client: AdminClient, urls: list[str]) -> list[Candidate]:
    """`inspect_url` for every URL at once (a replica cut off costs one timeout, not one each)."""

    async def all_of() -> list[Candidate]:
        return list(
            await asyncio.gather(*(asyncio.to_thread(inspect_url, client, u) for u in urls))
        )

    return asyncio.run(all_of())
