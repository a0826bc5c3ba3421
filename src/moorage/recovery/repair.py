"""`moorage repair`: rebuild one damaged replica in place (same id and addresses; its etcd
data wiped and re-synced from the cluster). `plan` says what it will do, `repair` does it."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from typing import Any

from moorage.audit import AuditEvent
from moorage.audit.log import command_actor, write_now
from moorage.cluster.lifecycle import stop
from moorage.cluster.status_report import status_answer
from moorage.cluster.tls import client_tls
from moorage.config import DataDir
from moorage.errors import MoorageError
from moorage.meta.etcd import EtcdCluster
from moorage.recovery.client import AdminClient
from moorage.recovery.join import JoinResult, join


class RepairFailed(MoorageError):
    """The data directory's replica is not one of the cluster's."""


def plan(status: dict[str, Any], data_dir: DataDir) -> tuple[dict[str, Any], str]:
    """What `moorage repair` will do to the replica of `data_dir`."""
    from moorage.cluster.lifecycle import running_pid

    config = data_dir.load()
    row = next((r for r in status.get("replicas", []) if r.get("id") == config.replica_id), None)
    plan: dict[str, Any] = {
        "command": "repair",
        "replica_id": config.replica_id,
        "cluster_id": config.cluster_id,
        "data_dir": str(data_dir.path),
        "running": running_pid(data_dir) is not None,
        "member": row is not None,
        "healthy": bool(row and row.get("healthy")),
        "wipes": str(data_dir.etcd_dir),
        "keeps": [str(data_dir.config_file), config.storage],
        "rejoins_as": {
            "replica_id": config.replica_id,
            "url": config.url,
            "etcd_client_port": config.etcd_client_port,
            "etcd_peer_port": config.etcd_peer_port,
        },
    }
    lines = [
        f"Repair plan for replica {config.replica_id} ({data_dir.path})",
        "  will stop: the replica"
        + (" (it is running now)" if plan["running"] else " (not running now)"),
    ]
    if row is not None:
        lines.append(
            "  will remove its etcd member from the cluster (quorum checked first), then rejoin it"
        )
    lines.append(
        f"  will wipe: {data_dir.etcd_dir} (this replica's etcd data) and re-sync it from the "
        f"cluster under the same id {config.replica_id}, URL {config.url} and etcd ports "
        f"{config.etcd_client_port}/{config.etcd_peer_port}"
    )
    lines.append(
        f"  keeps: its configuration {data_dir.config_file}, logs, and blob storage "
        f"{config.storage} (never deleted)"
    )
    if plan["healthy"]:
        lines.append(
            "  NOTE: this replica is healthy now; repair is for a damaged replica. Until it "
            "has re-synced the cluster has one replica fewer."
        )
    lines.append(
        "  could lose: nothing the cluster acknowledged (every committed change is on a "
        "quorum of the other members)"
    )
    return plan, "\n".join(lines)


@dataclass(frozen=True)
class RepairResult:
    """The replica rebuilt in place (as it joined again) and the store directory wiped."""

    joined: JoinResult
    wiped: str

    def to_json(self) -> dict[str, Any]:
        return {**self.joined.to_json(), "wiped": self.wiped}

    def text(self) -> str:
        return (
            f"Replica {self.joined.replica_id} repaired in place: local store {self.wiped} "
            f"wiped and re-synced from the cluster; serving at {self.joined.url}"
        )


def repair(client: AdminClient, data_dir: DataDir, unsafe: bool = False) -> RepairResult:
    """Rebuild a damaged replica in place: same replica id, addresses and storage.

    The replica is stopped, its etcd member removed from the cluster (with the usual quorum
    check), its local store wiped (blob storage is never touched), and it joins again.
    """
    config = data_dir.load()
    stop(data_dir)
    status = status_answer(client.call("GET", "/api/v0/cluster/status"))
    if status["cluster_id"] != config.cluster_id:
        raise RepairFailed(
            f"{data_dir.path} belongs to cluster {config.cluster_id}, but {client.urls[0]} "
            f"serves cluster {status['cluster_id']}"
        )
    known = {r["id"] for r in status["replicas"]}
    if config.replica_id in known:
        client.call(
            "POST", "/api/v0/cluster/remove", {"replica_ids": [config.replica_id], "force": False}
        )
    wiped = str(data_dir.etcd_dir)
    shutil.rmtree(data_dir.etcd_dir, ignore_errors=True)
    joined = join(
        client,
        data_dir,
        config.http_addr,
        config.storage,
        config.etcd_client_port,
        config.etcd_peer_port,
        unsafe,
        replica_id=config.replica_id,
        etcd_host=config.etcd_host,
        transport={**config.transport, "log_format": config.log_format},
    )
    asyncio.run(_record(data_dir, client.auth[0], wiped))
    return RepairResult(joined, wiped)


async def _record(data_dir: DataDir, admin: str, wiped: str) -> None:
    """The repair, into the audit log through the repaired replica's own etcd member (it is
    a voter again). A failure is logged: the repair itself is done."""
    config = data_dir.load()
    store = EtcdCluster([config.etcd_client_url], tls=client_tls(config))
    try:
        _, host = command_actor()
        event = AuditEvent(
            "repair", admin, f"replica:{config.replica_id}", client=host, detail={"wiped": wiped}
        )
        await write_now(store, [event], "repair")
    finally:
        await store.close()
