"""The typed results of `moorage restore`: the plan it prints before acting and what it did,
each with its one JSON form and its text."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


def accounts_line(counts: dict[str, int]) -> str:
    """The accounts a backup holds; an archive older than format 3 holds no access token
    (and did not count organizations, teams and grants in its header)."""
    names = {
        "users": "users",
        "orgs": "organizations",
        "teams": "teams",
        "grants": "grants",
        "access_tokens": "access tokens",
    }
    parts = [f"{counts[key]} {label}" for key, label in names.items() if key in counts]
    if "access_tokens" not in counts:
        parts.append("no access tokens (a backup older than format 3)")
    return ", ".join(parts)


@dataclass(frozen=True)
class RestorePlan:
    """What a restore will create, copy and replay (`recovery.restore.plan`)."""

    doc: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return self.doc

    def text(self) -> str:
        plan = self.doc
        c = plan["counts"]
        taken = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(plan["backup_created_at"]))
        lines = [
            f"Restore plan from {plan['archive']}",
            f"  backup of cluster {plan['from_cluster_id']} at revision {plan['backup_revision']}"
            f" (epoch {plan['backup_epoch']}, taken {taken}): {c['repositories']} repositories, "
            f"{c['tags']} tags, {c['manifests']} manifests",
            f"  accounts: {accounts_line(c)}",
            "  will create: a NEW cluster (new cluster id) with one replica at "
            f"{plan['http_addr']}, data directory {plan['data_dir']}, "
            f"blob storage {plan['storage']}",
            "  will verify the archive first (a corrupt one is refused, nothing changed), then "
            "copy the blobs the archive holds that blob storage lacks",
        ]
        n = plan["journal_entries"]
        if plan["replay_journal"]:
            lines.append(
                f"  journal: will replay {n} change(s) made after the backup, found in blob storage"
            )
            lines += [f"    {line}" for line in plan["journal_changes"][:20]]
        else:
            lines.append(
                f"  journal: NOT replayed (--no-replay-journal): {n} change(s) made after the "
                "backup will be lost"
            )
        lines.append("  keeps: blob storage (never deleted; only missing blobs are added)")
        lines.append(
            "  could lose: "
            + (
                "changes made after the backup that are not in the journal"
                if plan["replay_journal"]
                else f"the {n} journal change(s) above, and any not in the journal"
            )
            + "; the old cluster's replicas cannot rejoin the new cluster (new id)"
        )
        if plan["journal_rejected"]:
            lines.append(f"  journal: {plan['journal_rejected']} invalid entries will be skipped")
        lines += [f"  PROBLEM: {p}" for p in plan["problems"]]
        return "\n".join(lines)


@dataclass(frozen=True)
class RestoreResult:
    """The new cluster a restore made, and the journal changes it replayed."""

    doc: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return self.doc

    def text(self) -> str:
        doc = self.doc
        c = doc["counts"]
        text = [
            f"Restored backup of cluster {doc['from_cluster_id']} "
            f"(revision {doc['backup_revision']}) as new cluster {doc['cluster_id']}",
            f"  replica {doc['replica_id']} at {doc['url']} (data {doc['data_dir']})",
            f"  {c['repositories']} repositories, {c['tags']} tags, {c['manifests']} manifests; "
            f"{doc['blobs_copied']} blobs copied from the archive",
            f"  accounts: {accounts_line(c)}; new token signing keys (Bearer tokens of the "
            "old cluster are refused: clients log in again)",
        ]
        jr = doc["journal_replayed"]
        since = f"revision {jr['since_revision']} (epoch {jr['since_epoch']}"
        if jr.get("since_time") is not None:
            since += time.strftime(", taken %Y-%m-%d %H:%M:%S UTC", time.gmtime(jr["since_time"]))
        since += ")"
        if not jr["requested"]:
            text.append(
                f"  journal: NOT replayed (--no-replay-journal): changes made after the backup's "
                f"{since} are not restored"
            )
        else:
            text.append(
                f"  journal: {jr['applied']} change(s) replayed, made after the backup's {since}"
            )
            skipped = jr["unrecoverable"]
            if skipped:
                text.append(f"  journal: {len(skipped)} change(s) not replayed:")
                text += [f"    {line}" for line in skipped[:20]]
        if doc["missing_blobs"]:
            text.append(f"  MISSING: {len(doc['missing_blobs'])} referenced blob(s) found nowhere:")
            text += [f"    {d}" for d in doc["missing_blobs"][:20]]
        if "admin_password" in doc:
            text.append(f"  admin password (shown once): {doc['admin_password']}")
        text.append(
            f"Next: moorage status --existing {doc['url']} prints the joins that restore "
            f"fault tolerance (one replica at a time: moorage join --existing {doc['url']} "
            "--data-dir NEW_DIR --http-addr HOST:PORT --etcd-client-port CLIENT_PORT "
            "--etcd-peer-port PEER_PORT)"
        )
        return "\n".join(text)
