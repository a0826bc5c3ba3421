"""The one builder of the `moorage status` document and of its replica rows.

Two places make a status document: the cluster's own diagnosis (`cluster.status.diagnose`,
served by `GET /api/v0/cluster/status`) and the operator's side when no replica answers
(`recovery.status.status`, from the data directories it was given). Both build it here, so
the two carry the same fields in the same order; what only one side knows is added as extras
at the end (a row's `cluster_id` from its data directory; the document's `error` and
`urls_examined` when nothing answered, `data_dirs` when status was given some).

`StatusReport` is the typed document: what `moorage status` prints, with its one JSON form
(`to_json()`, the document served by the admin API and printed by `--json`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from moorage.errors import MoorageError


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


@dataclass
class StatusReport:
    """The status document, typed. `fault_tolerance` is None when no replica answered
    (unknown); `extra` holds what only one side knows, in the order it was added."""

    cluster_id: str | None
    epoch: int | None
    scenario: str
    action: str
    commands: list[dict[str, Any]]
    placeholders: dict[str, str]
    # Quorum lost: every step of the procedure, in order, with the replica whose host
    # runs it (the action says the same in one line).
    procedure: list[dict[str, str]]
    quorum: dict[str, int | None]
    # How many more voting members can fail now with the cluster still accepting writes
    # ((members - 1) // 2 when all are healthy).
    fault_tolerance: int | None
    replicas: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The one JSON form: the fields above in this order, then the extras."""
        return {
            "cluster_id": self.cluster_id,
            "epoch": self.epoch,
            "scenario": self.scenario,
            "action": self.action,
            "commands": self.commands,
            "placeholders": self.placeholders,
            "procedure": self.procedure,
            "quorum": self.quorum,
            "fault_tolerance": self.fault_tolerance,
            "replicas": self.replicas,
            **self.extra,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> StatusReport:
        """The report of a document (as the admin API serves it); keys it does not know
        are kept as extras, in order."""
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        return cls(
            cluster_id=doc.get("cluster_id"),
            epoch=doc.get("epoch"),
            scenario=str(doc.get("scenario")),
            action=str(doc.get("action", "")),
            commands=list(doc.get("commands") or []),
            placeholders=dict(doc.get("placeholders") or {}),
            procedure=list(doc.get("procedure") or []),
            quorum=dict(doc.get("quorum") or {}),
            fault_tolerance=doc.get("fault_tolerance"),
            replicas=list(doc.get("replicas") or []),
            extra={k: v for k, v in doc.items() if k not in known},
        )


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
    """The status document's JSON form (`StatusReport.to_json()`)."""
    return StatusReport(
        cluster_id=cluster_id,
        epoch=epoch,
        scenario=scenario,
        action=action,
        commands=commands,
        placeholders=placeholders,
        procedure=procedure,
        quorum=quorum,
        fault_tolerance=fault_tolerance,
        replicas=replicas,
        extra=extra,
    ).to_json()


def status_answer(doc: object) -> dict[str, Any]:
    """MoorageError unless `doc` has the shape of a replica's status (what the report and its
    text read) and the recovery commands read: never a KeyError traceback for another
    server's JSON. Returns `doc`."""
    ok = isinstance(doc, dict)
    if isinstance(doc, dict):
        quorum, replicas, commands = doc.get("quorum"), doc.get("replicas"), doc.get("commands")
        ok = (
            isinstance(doc.get("scenario"), str)
            and isinstance(replicas, list)
            and all(isinstance(r, dict) and isinstance(r.get("id"), str) for r in replicas)
            and isinstance(quorum, dict)
            and all(
                k in quorum and (quorum[k] is None or isinstance(quorum[k], int))
                for k in ("healthy", "members", "needed")
            )
            and (commands is None or isinstance(commands, list))
            and all(
                isinstance(c, dict) and isinstance(c.get("command"), str) for c in commands or ()
            )
        )
    if not ok:
        raise MoorageError(
            "the answer to GET /api/v0/cluster/status is not a Moorage replica's status "
            "(check --existing)"
        )
    assert isinstance(doc, dict)
    return doc
