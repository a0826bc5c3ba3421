"""Status from outside the cluster: ask any replica that answers; when none does, look at
the local data directories to tell `unreachable` (start them) from `all-lost` (restore)."""

from __future__ import annotations

from typing import Any

from moorage.config import DataDir
from moorage.errors import MoorageError
from moorage.recovery.client import AdminClient, ClusterUnreachable


def _usable(d: DataDir) -> tuple[bool, str]:
    if not d.path.exists():
        return False, "does not exist"
    if not d.exists():
        return False, "no moorage.json"
    if not (d.etcd_dir / "member" / "snap").is_dir():
        return False, "no etcd data"
    try:
        d.load()
    except MoorageError as exc:
        return False, str(exc)
    return True, "replica state present"


def status(client: AdminClient, data_dirs: list[DataDir]) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = client.call("GET", "/api/v0/cluster/status")
    except ClusterUnreachable as exc:
        unreachable_error = str(exc)
    else:
        if data_dirs:
            doc["data_dirs"] = [
                {"path": str(d.path), "usable": u, "detail": why}
                for d in data_dirs
                for u, why in [_usable(d)]
            ]
        return doc

    inspected = [(d, *_usable(d)) for d in data_dirs]
    usable = [d for d, ok, _ in inspected if ok]
    rows = []
    for d, ok, why in inspected:
        rid = url = cid = None
        if ok:
            cfg = d.load()
            rid, url, cid = cfg.replica_id, cfg.url, cfg.cluster_id
        rows.append(
            {
                "id": rid,
                "url": url,
                "healthy": False,
                "reachable": False,
                "leader": False,
                "learner": False,
                "raft_index": None,
                "data_dir": str(d.path),
                "cluster_id": cid,
                "error": why if not ok else "not running",
            }
        )
    cluster_id = usable[0].load().cluster_id if usable else None
    if data_dirs and not usable:
        scenario = "all-lost"
        action = (
            "moorage restore --in BACKUP_FILE --data-dir NEW_DIR --http-addr HOST:PORT "
            "--storage BLOB_STORAGE  # no replica's data survives: BLOB_STORAGE is the old "
            "cluster's blob storage, whose journal restore replays (changes after the backup "
            "are lost only if it is gone); then join new replicas"
        )
    else:
        scenario = "unreachable"
        action = (
            "; ".join(f"moorage start --data-dir {d.path}" for d in usable)
            if usable
            else "start the replicas: moorage start --data-dir DIR on each host (pass "
            "--data-dir to status to check whether their data survives)"
        )
    return {
        "cluster_id": cluster_id,
        "epoch": None,
        "scenario": scenario,
        "action": action,
        "procedure": [],
        "quorum": {"members": None, "needed": None, "healthy": 0},
        "replicas": rows,
        "error": unreachable_error,
        "urls_examined": list(client.urls),
    }
