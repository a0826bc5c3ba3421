"""What status knows about a cluster: the `Facts` that `gather` collects.

`gather` reads the store (members, replica records, heartbeats; serializable reads, so it
works without quorum) and asks every member and replica directly (each etcd member's own
status, each replica's `/_ping`), all at once with short timeouts; `moorage.cluster.status`
diagnoses the result without any I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from moorage.errors import MoorageError
from moorage.logs import current_request_id
from moorage.meta.etcd_members import ClientTls, Member, MemberStatus
from moorage.meta.records import HeartbeatRecord, ReplicaRecord
from moorage.pki.trust import client_context

if TYPE_CHECKING:
    import httpx

    from moorage.meta.etcd import EtcdCluster

# The etcd client is imported where used: `moorage status` imports this module for `Facts`
# (through cluster.guidance) and needs no etcd client (~0.25 s of every status's start).

HEARTBEAT_FRESH = 10.0
PING_TIMEOUT = 2.0


@dataclass
class Facts:
    cluster_id: str
    epoch: int
    members: list[Member]
    statuses: dict[int, MemberStatus | str]  # member id -> status, or why it did not answer
    replicas: dict[str, ReplicaRecord]
    heartbeats: dict[str, HeartbeatRecord]
    pings: dict[str, tuple[int, str | None]]  # replica id -> (HTTP status, error)
    now: float = field(default_factory=time.time)
    size: int = 0  # voting members before an emergency repair (ClusterRecord.size)


def fault_tolerance(voters: int) -> int:
    """Failures a cluster of `voters` voting members survives: (members - 1) // 2."""
    return max(0, (voters - 1) // 2)


async def _ping(client: httpx.AsyncClient, url: str) -> tuple[int, str | None]:
    # The request asking for the status lends its id: the peers log their pings under it.
    import httpx

    rid = current_request_id()
    headers = {"X-Request-Id": rid} if rid is not None else None
    try:
        resp = await client.get(f"{url}/_ping", timeout=PING_TIMEOUT, headers=headers)
    except httpx.HTTPError as exc:
        return 0, str(exc) or type(exc).__name__
    try:
        doc = resp.json()
    except ValueError:
        return resp.status_code, "not a Moorage /_ping answer"
    if resp.status_code == 200 and doc.get("healthy") is True:
        return 200, None
    return resp.status_code, str(doc.get("error") or "unhealthy")


async def _status(url: str, tls: ClientTls) -> MemberStatus | str:
    from moorage.meta.etcd_maintenance import member_status

    try:
        return await member_status(url, PING_TIMEOUT, tls=tls)
    except MoorageError as exc:
        return str(exc)


async def gather(store: EtcdCluster, cluster_id: str, epoch: int, size: int = 0) -> Facts:
    members = await store.members(linearizable=False)
    replicas: dict[str, ReplicaRecord] = {}
    heartbeats: dict[str, HeartbeatRecord] = {}
    with contextlib.suppress(MoorageError):
        replicas = {rec.replica_id: rec for rec in await store.replicas(local=True)}
        heartbeats = {hb.replica_id: hb for hb in await store.heartbeats(local=True)}

    def client_url(m: Member) -> str | None:
        if m.client_urls:
            return m.client_urls[0]
        rec = replicas.get(m.name)
        return rec.etcd_client_url if rec else None

    async def status_of(m: Member) -> tuple[int, MemberStatus | str]:
        url = client_url(m)
        return m.id, (await _status(url, store.tls) if url else "not started yet")

    import httpx  # loaded by the first status request, not by every API worker's start

    async with httpx.AsyncClient(verify=client_context()) as client:
        answers, ping_list = await asyncio.gather(
            asyncio.gather(*(status_of(m) for m in members)),
            asyncio.gather(*(_ping(client, r.url) for r in replicas.values())),
        )
    statuses = dict(answers)
    pings = dict(zip(replicas, ping_list, strict=True))
    # A member whose replica answered its ping but that missed the status call itself (a
    # slow answer on a loaded host) is asked once more: taken as down, it would turn the
    # advice into "start the replicas" for a moment.
    again = [
        m
        for m in members
        if isinstance(statuses[m.id], str)
        and pings.get(m.name, (0, None))[0] == 200
        and client_url(m) is not None
    ]
    if again:
        statuses.update(await asyncio.gather(*(status_of(m) for m in again)))
    return Facts(
        cluster_id=cluster_id,
        epoch=epoch,
        members=members,
        statuses=statuses,
        replicas=replicas,
        heartbeats=heartbeats,
        pings=pings,
        size=size,
    )
