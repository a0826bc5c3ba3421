"""The audit log's interface: who did what, when, from where (issue #9 item 6).

Every part that does something worth auditing (logins, pushes, deletes, account, permission
and token changes, cluster operations) calls `record` on the replica's `AuditSink`. The
cluster-wide log kept in etcd implements it in `moorage.audit.log`; `LoggingSink` writes
events to the process log only (the in-memory store, and tests of single parts).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field

log = logging.getLogger("moorage.audit")

#: Through what a change was made, when not the API or the CLI: the web UI sets "ui" for
#: its requests, and every event recorded meanwhile (by whichever part records it) carries
#: it as `detail["via"]`, unless the event names its own.
VIA: ContextVar[str | None] = ContextVar("moorage_audit_via", default=None)

OK = "ok"
DENIED = "denied"  # refused: wrong password, no permission, throttled
FAILED = "failed"  # allowed but did not complete


@dataclass(frozen=True, slots=True)
class AuditEvent:
    action: str  # e.g. "login", "push", "delete", "user.add", "grant", "token.revoke", "join"
    actor: str  # the account ("" anonymous, "moorage" for the cluster itself)
    target: str = ""  # what it acted on: "acme/app:latest", "user:bob", a replica id
    outcome: str = OK
    client: str | None = None  # the client's address
    detail: dict[str, str] = field(default_factory=dict)
    at: float = field(default_factory=time.time)  # Unix time, seconds

    def __post_init__(self) -> None:
        via = VIA.get()
        if via is not None and "via" not in self.detail:
            object.__setattr__(self, "detail", {**self.detail, "via": via})

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    def json_line(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True)


class AuditSink(ABC):
    @abstractmethod
    async def record(self, event: AuditEvent) -> None:
        """Keep `event`. Never raises: an audit failure is logged, it does not fail the
        operation it describes (the operation already happened)."""

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """What the sink runs in the background while the replica serves (the etcd log's
        flusher and retention job); nothing by default."""
        yield


class LoggingSink(AuditSink):
    """Events to the process log only."""

    async def record(self, event: AuditEvent) -> None:
        log.info("audit %s", event.json_line())
