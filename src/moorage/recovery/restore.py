"""`moorage restore`: a new one-replica cluster (new cluster id) from a backup.

The archive is verified before anything is touched; a corrupt one is refused. Blobs the
archive (or its base archives) hold are copied into blob storage if missing there; referenced
blobs found nowhere are reported. By default (`--no-replay-journal` turns it off), changes the
old cluster made after the backup are replayed from the journal in blob storage: a restore
without them would silently drop every push acknowledged after the backup.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from moorage.audit import AuditEvent
from moorage.audit.log import command_actor, write_now
from moorage.cluster.etcd_process import EtcdProcess
from moorage.cluster.lifecycle import destroy, start_background
from moorage.cluster.replica_config import new_replica_config
from moorage.cluster.supervisor import check_http_addr
from moorage.cluster.tls import client_tls, create_cluster_tls
from moorage.config import (
    DEFAULT_ETCD_HOST,
    DataDir,
    ReplicaConfig,
)
from moorage.errors import MoorageError
from moorage.meta.etcd import EtcdCluster
from moorage.meta.records import ClusterRecord
from moorage.recovery.archive import ArchiveBlobs, BackupError, plaintext, read_header
from moorage.recovery.archive_records import Metadata, read_metadata
from moorage.recovery.backup_verify import verify_plain
from moorage.recovery.blob_access import SyncBlobs
from moorage.recovery.journal_replay import apply, plan_replay, read_plan
from moorage.recovery.restore_result import RestorePlan, RestoreResult
from moorage.storage import presence
from moorage.storage.paths import StorageLayout


def plan(
    archive: Path,
    data_dir: DataDir,
    http_addr: str,
    storage: Path | str,
    replay_journal: bool,
    passphrase: str | None = None,
) -> RestorePlan:
    """What `restore` will do, read-only: the backup it restores (header only; the full
    verification runs when it proceeds) and the journal entries it would replay."""
    from moorage.recovery.backup import inspect

    info = inspect(archive, passphrase)
    journal = plan_replay(
        str(storage), info.cluster_id, (int(info.epoch), int(info.revision))
    ).summary()
    problems = []
    if data_dir.exists() or data_dir.etcd_dir.exists():
        problems.append(
            f"{data_dir.path} already holds replica state; restore needs an empty data directory"
        )
    if isinstance(storage, Path) and not storage.is_dir():
        problems.append(f"blob storage {storage} does not exist (it will be created empty)")
    elif occupied := _occupied(storage, info.cluster_id):
        problems.append(occupied)
    return RestorePlan(
        {
            "command": "restore",
            "archive": str(archive),
            "from_cluster_id": info.cluster_id,
            "backup_epoch": info.epoch,
            "backup_revision": info.revision,
            "backup_created_at": info.created_at,
            "counts": info.counts,
            "data_dir": str(data_dir.path),
            "http_addr": http_addr,
            "storage": str(storage),
            "new_cluster": True,
            "replay_journal": replay_journal,
            "journal_entries": journal["entries"],
            "journal_changes": journal["changes"],
            "journal_rejected": journal["rejected_count"],
            "problems": problems,
        }
    )


def restore(
    archive: Path,
    data_dir: DataDir,
    http_addr: str,
    storage: Path | str,
    etcd_client_port: int | None,
    etcd_peer_port: int | None,
    replay_journal: bool,
    admin_password: str | None,
    passphrase: str | None = None,
    etcd_host: str = DEFAULT_ETCD_HOST,
    transport: Mapping[str, Any] | None = None,
) -> RestoreResult:
    with contextlib.ExitStack() as stack:
        plain = plaintext(archive, passphrase, stack)
        report = verify_plain(archive, plain, storage, passphrase, stack)
        if report.get("corrupt"):
            raise BackupError(
                f"{archive} is corrupt or was tampered with; nothing was changed:\n  "
                + "\n  ".join(report["problems"])
            )
        header = read_header(plain)
        if occupied := _occupied(storage, str(header["cluster_id"])):
            raise BackupError(occupied + "; nothing was changed")
        missing_bases = [p for p in report["problems"] if p.startswith("base archive")]
        if missing_bases:
            raise BackupError("; ".join(missing_bases) + "; put it next to the archive")
        if data_dir.exists() or data_dir.etcd_dir.exists():
            raise BackupError(
                f"{data_dir.path} already holds replica state; restore needs an empty data "
                "directory"
            )
        md = read_metadata(plain, header["version"])
        if md.invalid:  # verify refused these already; never write one into the store
            raise BackupError(f"{archive} holds invalid records: " + "; ".join(md.invalid[:20]))
        config = new_replica_config(
            data_dir, http_addr, storage, etcd_client_port, etcd_peer_port, etcd_host=etcd_host
        )
        config = dataclasses.replace(config, **(transport or {}))  # --tls, --tls-cert, ...
        check_http_addr(config)
        archives = [Path(a) for a in report["archives"]]
        # The blobs the chain actually holds (its member index), not what the header says.
        held = set(report.pop("held"))
        copied = _copy_blobs(archives, held, storage)
    data_dir.make_dirs()
    # Until the replica runs on the whole store, the directory says so: an interrupted
    # restore (Ctrl-C, a failure) is cleared here; one killed leaves the marker, and no start
    # serves the partial store behind it.
    data_dir.restoring.touch()
    try:
        # A restore makes a new cluster: a new CA and secret (the supervisor stores the sealed
        # CA key in etcd on the first start below), before etcd first starts.
        create_cluster_tls(config)
        data_dir.save(config)
        etcd = EtcdProcess(data_dir, config)
        etcd.start()
        try:
            etcd.wait_ready(timeout=60)
            replayed = asyncio.run(_load(config, md, header, replay_journal, archive))
        finally:
            etcd.stop()
    except BaseException:
        with contextlib.suppress(Exception):
            destroy(data_dir)  # what this restore made; the blobs it copied stay
        raise
    data_dir.restoring.unlink()  # the store is whole: a start may serve it
    generated = None
    if admin_password is None and md.users == 0:
        generated = admin_password = secrets.token_urlsafe(18)
    start_background(data_dir, admin_password)
    # What is still missing once the journal has been replayed.
    missing = [p for p in report["problems"] if not p.startswith("base archive")]
    out: dict[str, Any] = {
        "cluster_id": config.cluster_id,
        "replica_id": config.replica_id,
        "url": config.url,
        "data_dir": str(data_dir.path),
        "storage": config.storage,
        "from_cluster_id": header["cluster_id"],
        "backup_revision": header["revision"],
        "counts": md.counts(),  # what was restored, accounts and access tokens included
        "blobs_copied": copied,
        "missing_blobs": report["missing_blobs"],
        "problems": missing,
        "journal_replayed": replayed,
    }
    if generated:
        out["admin_password"] = generated
    return RestoreResult(out)


def _occupied(storage: Path | str, backed_up: str) -> str | None:
    """Why `storage` must not be restored onto, or None: a cluster other than the one the
    backup is of (`backed_up`, whose storage this is meant to be) uses it."""
    return presence.occupied(str(storage), backed_up, "restore onto it")


def _copy_blobs(archives: list[Path], digests: set[str], storage: Path | str) -> int:
    with ArchiveBlobs(archives) as blobs:
        if isinstance(storage, Path):
            return _copy_from(blobs, digests, storage)
        return _copy_through(blobs, digests, SyncBlobs(storage))


def _copy_through(blobs: ArchiveBlobs, digests: set[str], storage: SyncBlobs) -> int:
    """`_copy_from` through a blob storage driver (S3): each blob missing there is streamed
    from the archive into an upload, committed only when it hashes to its digest."""
    copied = 0
    try:
        for digest in sorted(digests):
            if storage.size(digest) is not None:
                continue
            if storage.store(digest, functools.partial(_copy_one, blobs, digest)):
                copied += 1
    finally:
        storage.close()
    return copied


def _copy_one(blobs: ArchiveBlobs, digest: str, write: Callable[[bytes], None]) -> bool:
    return blobs.copy(digest, write)


def _copy_from(blobs: ArchiveBlobs, digests: set[str], storage: Path) -> int:
    copied = 0
    layout = StorageLayout(storage)
    for digest in sorted(digests):
        alg, _, hex_ = digest.partition(":")
        final = layout.blob(digest)
        if final.exists():
            continue
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = layout.tmp
        tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = tmp_dir / f"restore-{secrets.token_hex(8)}"
        hasher = hashlib.new(alg)
        with open(tmp, "wb") as fh:

            def write(chunk: bytes, fh: Any = fh, hasher: Any = hasher) -> None:
                hasher.update(chunk)
                fh.write(chunk)

            found = blobs.copy(digest, write)
            fh.flush()
            os.fsync(fh.fileno())
        if not found or hasher.hexdigest() != hex_:
            tmp.unlink(missing_ok=True)
            continue
        tmp.replace(final)
        copied += 1
    return copied


async def _load(
    config: ReplicaConfig,
    md: Metadata,
    header: dict[str, Any],
    replay_journal: bool,
    archive: Path | None = None,
) -> dict[str, Any]:
    store = EtcdCluster([config.etcd_client_url], tls=client_tls(config))
    try:
        await store.load(md.restorable())  # bounded transactions
        await store.put_cluster(ClusterRecord(config.cluster_id, 1))
        since = {
            "since_epoch": int(header["epoch"]),
            "since_revision": int(header["revision"]),
            "since_time": header.get("created_at"),
        }
        if not replay_journal:
            replayed: dict[str, Any] = {"applied": 0, "unrecoverable": [], "requested": False}
        else:
            plan = await read_plan(
                config.storage,
                header["cluster_id"],
                (int(header["epoch"]), int(header["revision"])),
            )
            result = await apply(store, config.storage, plan)
            replayed = {
                "applied": result.applied,
                "unrecoverable": result.unrecoverable,
                "requested": True,
                "changes": plan.summary()["changes"],
            }
        # The new cluster's log starts with its restore (the old cluster's log stays behind).
        actor, host = command_actor()
        detail = {
            "archive": str(archive) if archive is not None else "",
            "from_cluster_id": str(header["cluster_id"]),
            "backup_revision": str(header["revision"]),
            "journal_applied": str(replayed["applied"]),
        }
        event = AuditEvent(
            "restore", actor, f"cluster:{config.cluster_id}", client=host, detail=detail
        )
        await write_now(store, [event], "restore")
        return {**replayed, **since}
    except MoorageError:
        raise
    finally:
        await store.close()
