"""`moorage remove`: take replicas out of the cluster, dead or alive, through the admin API of
a replica. The plan (which replicas go, membership and quorum after) comes from the cluster
itself (`dry_run`), so the plan shown is the one the cluster would carry out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moorage.errors import MoorageError
from moorage.recovery.client import AdminClient

REMOVE_PATH = "/api/v0/cluster/remove"


class RemoveUnsupported(MoorageError):
    """The replica asked for a plan removed instead (an older version)."""


def split_ids(replica_ids: str) -> list[str]:
    """`--replica-id a,b` as a list, blanks dropped."""
    return [i.strip() for i in replica_ids.split(",") if i.strip()]


def plan(client: AdminClient, ids: list[str], force: bool, existing: str) -> dict[str, Any]:
    """What removing `ids` will do; the plan's JSON form (with `command`)."""
    doc: dict[str, Any] = client.call(
        "POST", REMOVE_PATH, {"replica_ids": ids, "force": force, "dry_run": True}
    )
    if "removes" not in doc:  # a replica of an older version acted instead of planning
        raise RemoveUnsupported(f"{existing} does not support planning a remove; it removed {doc}")
    doc["command"] = "remove"
    return doc


@dataclass(frozen=True)
class RemoveResult:
    """What `remove` did: the replicas removed and the voting membership after."""

    doc: dict[str, Any]

    @property
    def removed(self) -> list[str]:
        return list(self.doc["removed"])

    @property
    def members(self) -> int:
        return int(self.doc["members"])

    @property
    def needed(self) -> int:
        return int(self.doc["needed"])

    def to_json(self) -> dict[str, Any]:
        return self.doc

    def text(self) -> str:
        return (
            f"removed {', '.join(self.removed)}; the cluster has {self.members} voting "
            f"members (quorum {self.needed}). Clear a removed replica's host with "
            "'moorage destroy --data-dir DIR' before reusing it."
        )


def remove(client: AdminClient, ids: list[str], force: bool) -> RemoveResult:
    return RemoveResult(client.call("POST", REMOVE_PATH, {"replica_ids": ids, "force": force}))
