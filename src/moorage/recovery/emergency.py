"""`moorage emergency-repair`: make a one-replica cluster from the most up-to-date survivor.

1. Candidates: the data directory D (running or stopped), the `--candidate-dir` directories,
   the `--existing` replicas, and every old member whose etcd answers here. Each is compared
   by the newest revision of *registry data* in its local copy of the store (heartbeats,
   leases and replica records do not count). A stopped directory is read through a
   throw-away copy, never modified.
2. Every old member is probed. One that answers and has a leader means quorum is not lost:
   refused, and no flag overrides that (a member naming a leader is probed again for a few
   election timeouts first, so a leader that has just died is not taken for a live one).
   A member that answers without a leader is on the minority side: it is a candidate like
   the others (when it is the most up to date, the repair is refused here and must run on
   its host), the fence ends its epoch, and the result says how to rejoin it (destroy, then
   join). What cannot be told apart from a dead member (no answer at all) is a member on the
   far side of a partition: the fence stops it from acknowledging writes, and the journal
   brings back what it acknowledged before (see moorage.cluster.fence).
3. The plan is printed before anything changes: the chosen replica, what every other
   candidate has that the chosen one lacks, what the journal will replay.
4. On the chosen local replica: stop it (its supervisor ends cleanly), restart its etcd
   once with --force-new-cluster, bump the epoch, write the fencing marker to blob storage,
   wait out the fence's grace (0 on a local filesystem), delete the other replicas' records,
   replay the journal, then start the replica again and return once it accepts writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from moorage.audit import AuditEvent
from moorage.audit.log import command_actor, write_now
from moorage.cluster.etcd_process import EtcdProcess
from moorage.cluster.fence import fence_grace, put_fence
from moorage.cluster.guidance import rejoin_procedure
from moorage.cluster.lifecycle import ping, running_pid, start_background, stop
from moorage.cluster.tls import client_tls
from moorage.config import DataDir, ReplicaConfig
from moorage.errors import ConfigError, MoorageError
from moorage.meta.cluster_store import JOIN_LOCK
from moorage.meta.etcd import ClientTls, EtcdCluster, data_revision
from moorage.meta.keys import JOURNAL_TRIM_LOCK
from moorage.meta.records import ClusterRecord, ReplicaRecord
from moorage.recovery.candidates import Candidate, Probe, inspect_dir, inspect_urls, probe_members
from moorage.recovery.client import AdminClient
from moorage.recovery.journal_replay import apply, read_plan


class RepairRefused(MoorageError):
    pass


__all__ = [
    "Candidate",
    "Probe",
    "RepairPlan",
    "RepairRefused",
    "execute",
    "prepare",
    "probe_members",
]


@dataclass
class RepairPlan:
    """What `emergency-repair` will do: the public plan (`doc`), the chosen survivor and the old
    members' records (for `execute`), the journal replay planned and why it is refused."""

    doc: dict[str, Any]
    best: Candidate
    records: dict[str, ReplicaRecord]
    journal_replay: dict[str, Any] | None = None
    refused: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.doc,
            "journal_replay": self.journal_replay,
            "refused": self.refused,
            "command": "emergency-repair",
        }


def prepare(
    d: DataDir,
    candidate_dirs: list[DataDir],
    client: AdminClient | None,
    urls: list[str],
    force: bool,
    replay: bool,
) -> RepairPlan:
    """The plan, its refusals (`force` as in `check_refusals`) and the journal replay."""
    from moorage.recovery.journal_replay import plan_replay

    doc = plan(d, candidate_dirs, client, urls)
    best = doc.pop("_best")
    records = doc.pop("_records")
    result = RepairPlan(doc, best, records)
    result.refused = refusals(doc["answering"], best, force)
    if best.data_dir is not None and replay:
        cfg = best.data_dir.load()
        result.journal_replay = plan_replay(
            cfg.storage, cfg.cluster_id, (cfg.epoch, best.revision or 0)
        ).summary()
    return result


def _member_tls(dirs: list[DataDir]) -> ClientTls:
    """The old members are asked with a local replica's certificate (one that was read)."""
    for d in dirs:
        with contextlib.suppress(MoorageError):
            return client_tls(d.load())
    raise ConfigError(f"no usable TLS material in {', '.join(str(d.path) for d in dirs)}")


def plan(
    d: DataDir, candidate_dirs: list[DataDir], client: AdminClient | None, urls: list[str]
) -> dict[str, Any]:
    candidates: list[Candidate] = []
    records: dict[str, ReplicaRecord] = {}
    seen_dirs: set[Path] = set()
    for cd in [d, *candidate_dirs]:
        if cd.path in seen_dirs:
            continue
        seen_dirs.add(cd.path)
        cand, recs = inspect_dir(cd)
        candidates.append(cand)
        records.update({r.replica_id: r for r in recs})
    local_ids = {c.replica_id for c in candidates}
    if client is not None:
        for cand in inspect_urls(client, urls):
            if cand.replica_id is None or cand.replica_id not in local_ids:
                candidates.append(cand)
    known = {c.replica_id for c in candidates if c.revision is not None}
    # Every old member, the candidates included: one with a leader means quorum is not lost;
    # one without is a survivor on the minority side, compared like the others.
    probes = (
        asyncio.run(
            probe_members(
                list(records.values()), set(records) - known, _member_tls([d, *candidate_dirs])
            )
        )
        if records
        else []
    )
    revisions = {c.replica_id: c.revision for c in candidates if c.revision is not None}
    for p in probes:
        rec = p.record
        if rec.replica_id in revisions:
            p.revision = revisions[rec.replica_id]
        elif p.has_leader is False and p.revision is not None:
            candidates = [c for c in candidates if c.replica_id != rec.replica_id]
            candidates.append(Candidate(rec.url, rec.replica_id, None, rec.url, p.revision, True))
    usable = [c for c in candidates if c.revision is not None]
    if not usable:
        reasons = "; ".join(f"{c.name}: {c.error}" for c in candidates)
        if any(not c.no_data for c in candidates):
            # Unread is not lost: never send the operator to a lossier procedure.
            raise RepairRefused(
                f"could not read the registry data of any candidate ({reasons}). Their data "
                "may well be intact: fix the cause above and run emergency-repair again. Do "
                "not restore from a backup for this: it would lose every push since the backup."
            )
        raise RepairRefused(
            f"no candidate has registry data ({reasons}). If every replica's data is gone, "
            "restore from a backup (moorage restore)."
        )
    best = max(usable, key=lambda c: (c.revision or 0, c.data_dir is not None))
    newest = best.revision or 0
    chosen = best.replica_id or ""
    config = best.data_dir.load() if best.data_dir is not None else None
    # Survivors left out (answering without a leader, or local data directories): fenced by
    # the repair, they come back as new replicas of the repaired cluster.
    left_out = [p.record.replica_id for p in probes if p.has_leader is False]
    left_out += [c.replica_id for c in candidates if c.data_dir is not None and c.replica_id]
    rejoin = [
        {
            "replica_id": rid,
            "data_dir": records[rid].data_dir,
            "url": records[rid].url,
            "commands": rejoin_procedure(
                records[rid], best.url or "URL", config.storage if config else None
            ),
        }
        for rid in sorted(set(left_out))
        if rid != chosen and rid in records
    ]
    return {
        "chosen": best.as_dict(),
        "candidates": [
            {
                **c.as_dict(),
                "behind_by_revisions": None if c.revision is None else newest - c.revision,
            }
            for c in candidates
        ],
        "old_replicas": sorted(records),
        "answering": [
            {
                "replica_id": p.record.replica_id,
                "answered": p.answered,
                "has_leader": p.has_leader,
                "raft_index": p.raft_index,
                "data_revision": p.revision,
                "error": p.error,
            }
            for p in probes
        ],
        "rejoin": rejoin,
        "_best": best,
        "_records": records,
    }


def check_refusals(doc: dict[str, Any], force: bool) -> list[str]:
    """`refusals` of a plan document (`plan`'s, with its `_best`)."""
    return refusals(doc["answering"], doc["_best"], force)


def refusals(answering: list[dict[str, Any]], best: Candidate, force: bool) -> list[str]:
    """Why the repair must not go ahead. `force` overrides only what may be overridden: a
    quorum that still exists, or a better survivor elsewhere, never is."""
    hard: list[str] = []
    soft: list[str] = []
    for a in answering:
        where = f"replica {a['replica_id']} ({a['answered']})"
        if a["has_leader"]:
            hard.append(
                f"{where} still has a leader: quorum is not lost, and nothing may force an "
                "emergency repair while it exists. Use 'moorage status', then 'moorage "
                "remove' and 'moorage join' (if that leader was lost just now, run this "
                "again in a few seconds)."
            )
        elif a["has_leader"] is None:
            soft.append(
                f"{where} answers but cannot tell whether it has a quorum ({a['error']}); "
                "stop it, or pass --force to fence it with the others"
            )
        elif a["data_revision"] is None and a["replica_id"] != best.replica_id:
            soft.append(
                f"{where} answers without a leader but its registry data could not be read "
                f"({a['error']}), so it cannot be compared with the chosen survivor: pass its "
                "data directory with --candidate-dir or its URL with --existing, or --force"
            )
    if best.data_dir is None:
        hard.append(
            f"the most up-to-date survivor is {best.name} (replica {best.replica_id}), which "
            "is not a local data directory here: run emergency-repair on its host, with its "
            "--data-dir"
        )
    return hard if force else hard + soft


def execute(repair: RepairPlan, replay: bool = True) -> dict[str, Any]:
    best = repair.best
    assert best.data_dir is not None
    d = best.data_dir
    config = d.load()
    was_running = running_pid(d) is not None
    if was_running:
        stop(d)
    records = repair.records
    etcd = EtcdProcess(
        d,
        replace(config, etcd_initial_cluster=None, etcd_cluster_state="new"),
        extra_args=("--force-new-cluster",),
    )
    etcd.start()
    try:
        etcd.wait_ready(timeout=60)
        epoch, replayed = asyncio.run(_rewrite(config, records, replay))
    finally:
        etcd.stop()
    new_config = replace(
        config,
        epoch=epoch,
        etcd_initial_cluster=None,
        etcd_cluster_state="new",
        etcd_endpoints=(),
    )
    d.save(new_config)
    start_background(d, timeout=120)
    _wait_writable(new_config)
    return {
        "replica_id": config.replica_id,
        "url": config.url,
        "cluster_id": config.cluster_id,
        "epoch": epoch,
        "removed_replicas": sorted(r for r in records if r != config.replica_id),
        "journal_replayed": replayed,
        "rejoin": repair.doc["rejoin"],
    }


async def _rewrite(
    config: ReplicaConfig, records: dict[str, ReplicaRecord], replay: bool
) -> tuple[int, dict[str, Any]]:
    tls = client_tls(config)  # the survivor keeps its D/tls/ and the CA sealed in its etcd
    store = EtcdCluster([config.etcd_client_url], tls=tls)
    try:
        survivor_revision = await data_revision(config.etcd_client_url, tls=tls)
        cluster = await store.get_cluster()
        old_epoch = max(cluster.epoch if cluster else 1, config.epoch)
        epoch = old_epoch + 1
        # Fence first: from now on no replica of the old epoch may serve.
        # (on S3 a conditional write: of two repairs racing, one stops here; cluster.s3fence)
        await put_fence(config.storage, config.cluster_id, epoch, config.replica_id)
        # From here no replica of the old epoch acknowledges a write, and every write it did
        # acknowledge is in the journal read below (see moorage.cluster.fence); on a shared
        # filesystem that caches attributes, wait until every host sees the marker.
        await asyncio.sleep(fence_grace(config.storage))
        # The size before the repair (every replica record of the old epoch), so that status
        # says to join replicas until the cluster survives as many failures as before.
        size = max(cluster.size if cluster else 0, len(records))
        await store.put_cluster(ClusterRecord(config.cluster_id, epoch, size))
        for rid in records:
            if rid != config.replica_id:
                await store.forget_replica(rid)
        await store.release_lock(JOIN_LOCK)
        await store.release_lock(JOURNAL_TRIM_LOCK)  # its holder may be a lost replica
        replayed: dict[str, Any] = {"applied": 0, "unrecoverable": []}
        if replay:
            plan = await read_plan(
                config.storage, config.cluster_id, (old_epoch, survivor_revision)
            )
            result = await apply(store, config.storage, plan)
            replayed = {"applied": result.applied, "unrecoverable": result.unrecoverable}
        actor, host = command_actor()
        detail = {
            "epoch": str(epoch),
            "survivor_revision": str(survivor_revision),
            "removed_replicas": ",".join(sorted(r for r in records if r != config.replica_id)),
            "journal_applied": str(replayed["applied"]),
        }
        event = AuditEvent(
            "emergency-repair", actor, f"replica:{config.replica_id}", client=host, detail=detail
        )
        await write_now(store, [event], "emergency")
        return epoch, replayed
    finally:
        await store.close()


def _wait_writable(config: ReplicaConfig, patience: float = 60) -> None:
    deadline = time.monotonic() + patience
    doc: dict[str, object] = {}
    while time.monotonic() < deadline:
        status, doc = ping(config.url, 2.0, writable=True)
        if status == 200:
            return
        time.sleep(0.3)
    raise MoorageError(f"the repaired replica does not accept writes: {doc.get('error')}")
