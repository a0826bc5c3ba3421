"""`moorage destroy`'s plan: what it will stop and delete in a data directory, and what it
keeps (blob storage, never deleted). `cluster.lifecycle.destroy` carries it out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moorage.config import DataDir
from moorage.errors import MoorageError
from moorage.storage.s3location import is_s3

#: What a data directory holds before its moorage.json is written (an install or a join that
#: failed half way): a folder holding anything else is no replica's, and is never destroyed.
_HALF_MADE = frozenset({"etcd", "tls", "run", "logs", "blobs"})


def half_made(data_dir: DataDir) -> bool:
    """Whether a data directory without moorage.json holds nothing but a replica's folders."""
    try:
        return all(
            (p.name in _HALF_MADE and p.is_dir()) or p == data_dir.restoring
            for p in data_dir.path.iterdir()
        )
    except OSError:
        return False


def plan(data_dir: DataDir) -> tuple[dict[str, Any], str]:
    """What `moorage destroy` will stop and delete, and what it keeps."""
    from moorage.cluster.processes import alive, cmdline, read_pid

    path = data_dir.path
    config = None
    if data_dir.exists():
        try:
            config = data_dir.load()
        except MoorageError:
            config = None
    storage = (
        Path(config.storage).resolve() if config is not None and not is_s3(config.storage) else None
    )
    processes = []
    if data_dir.run_dir.is_dir():
        for pid_file in sorted(data_dir.run_dir.glob("*.pid")):
            pid = read_pid(pid_file)
            if pid is not None and alive(pid) and str(path) in cmdline(pid):
                processes.append({"name": pid_file.stem, "pid": pid})
    files = []
    for p in (
        data_dir.etcd_dir,
        data_dir.tls_dir,
        data_dir.run_dir,
        data_dir.log_dir,
        data_dir.config_file,
        data_dir.restoring,
    ):
        if storage is not None and (p == storage or p in storage.parents):
            continue
        if p.exists():
            files.append(str(p))
    plan: dict[str, Any] = {
        "command": "destroy",
        "data_dir": str(path),
        "replica_id": config.replica_id if config else None,
        "cluster_id": config.cluster_id if config else None,
        "stops": processes,
        "deletes": files,
        "keeps": [str(storage)] if storage is not None else [],
        "could_lose": (
            "this replica's copy of the registry metadata (its etcd data). The cluster is not "
            "told: if the replica is still a member, remove it first with 'moorage remove'. If "
            "it holds the only copy (a one-replica cluster, or the last survivor of a lost "
            "quorum), that metadata is gone except what a backup and the journal in blob "
            "storage hold."
            if files
            else "nothing: there is nothing to delete"
        ),
    }
    lines = [f"Destroy plan for {path}"]
    if config is not None:
        lines.append(f"  replica {config.replica_id} of cluster {config.cluster_id}")
    if processes:
        lines.append(
            "  will stop: " + ", ".join(f"{p['name']} (pid {p['pid']})" for p in processes)
        )
    else:
        lines.append("  will stop: nothing (no process of this replica is running)")
    if files:
        lines.append("  will delete:")
        lines += [f"    {f}" for f in files]
    else:
        lines.append("  will delete: nothing (no replica state here)")
    if storage is not None:
        lines.append(f"  keeps: blob storage {storage} (never deleted)")
    else:
        lines.append("  keeps: blob storage (never deleted)")
    lines.append(f"  could lose: {plan['could_lose']}")
    return plan, "\n".join(lines)
