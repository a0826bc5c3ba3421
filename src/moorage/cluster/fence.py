"""The fencing marker in blob storage: `<storage>/fence.json` = {"cluster_id", "epoch"}.

Emergency repair bumps the cluster's epoch and writes it here. A replica of the same
cluster with an older epoch (it was left out of the repair) refuses to serve, so a stale
majority coming back after a partition cannot take writes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from moorage.config import ReplicaConfig
from moorage.errors import MoorageError

FENCE_FILE = "fence.json"


class Fenced(MoorageError):
    """This replica belongs to an epoch an emergency repair has ended."""


def read_fence(storage: str | Path) -> dict[str, object] | None:
    try:
        doc = json.loads((Path(storage) / FENCE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def write_fence(storage: str | Path, cluster_id: str, epoch: int, replica_id: str) -> None:
    path = Path(storage) / FENCE_FILE
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    doc = {"cluster_id": cluster_id, "epoch": epoch, "by_replica": replica_id, "at": time.time()}
    with open(tmp, "w") as fh:
        json.dump(doc, fh)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_fence(config: ReplicaConfig) -> None:
    doc = read_fence(config.storage)
    if doc is None or doc.get("cluster_id") != config.cluster_id:
        return
    epoch = doc.get("epoch")
    if isinstance(epoch, int) and epoch > config.epoch:
        raise Fenced(
            f"replica {config.replica_id} is fenced: an emergency repair moved cluster "
            f"{config.cluster_id} to epoch {epoch} without it (this replica is at epoch "
            f"{config.epoch}). Its data is stale. Run 'moorage destroy --data-dir "
            f"{config.data_dir}', then 'moorage join' it to the repaired cluster."
        )
