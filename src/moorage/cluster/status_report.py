"""The one builder of the `moorage status` document and of its replica rows.

Two places make a status document: the cluster's own diagnosis (`cluster.status.diagnose`,
served by `GET /api/v0/cluster/status`) and the operator's side when no replica answers
(`recovery.status.status`, from the data directories it was given). Both build it here, so
the two carry the same fields in the same order; what only one side knows is added as extras
at the end (a row's `cluster_id` from its data directory; the document's `error` and
`urls_examined` when nothing answered)."""

from __future__ import annotations

from typing import Any


def replica_row(
    *,
    id: str | None,
    url: str | None,
    healthy: bool,
    state: str,
    progress: str | None,
    reachable: bool,
    leader: bool,
    learner: bool,
    raft_index: int | None,
    member_id: str | None,
    data_dir: str | None,
    error: str | None,
    **extra: Any,
) -> dict[str, Any]:
    """One replica's row. `state`: healthy | starting (its process answers and it is joining
    or catching up: wait, never remove it) | unhealthy."""
    return {
        "id": id,
        "url": url,
        "healthy": healthy,
        "state": state,
        "progress": progress,
        "reachable": reachable,
        "leader": leader,
        "learner": learner,
        "raft_index": raft_index,
        "member_id": member_id,
        "data_dir": data_dir,
        "error": error,
        **extra,
    }


def status_document(
    *,
    cluster_id: str | None,
    epoch: int | None,
    scenario: str,
    action: str,
    commands: list[dict[str, Any]],
    placeholders: dict[str, str],
    procedure: list[dict[str, str]],
    quorum: dict[str, int | None],
    fault_tolerance: int | None,
    replicas: list[dict[str, Any]],
    **extra: Any,
) -> dict[str, Any]:
    """The status document. `fault_tolerance` is None when no replica answered (unknown)."""
    return {
        "cluster_id": cluster_id,
        "epoch": epoch,
        "scenario": scenario,
        "action": action,
        "commands": commands,
        "placeholders": placeholders,
        # Quorum lost: every step of the procedure, in order, with the replica whose host
        # runs it (the action says the same in one line).
        "procedure": procedure,
        "quorum": quorum,
        # How many more voting members can fail now with the cluster still accepting writes
        # ((members - 1) // 2 when all are healthy).
        "fault_tolerance": fault_tolerance,
        "replicas": replicas,
        **extra,
    }
