"""Whether this replica's etcd member knows a leader: the gate on reading its own copy.

A quorum read that fails or times out used to open a window (LOCAL_READ_WINDOW) in which
reads took the member's own copy, so that pulls go on during an election or without quorum.
But a member that was only slow or paused (a stopped process, a full disk, a long GC) has
a leader again as soon as it runs, and is still catching up: its copy then lacked writes
the cluster had acknowledged, and a probe saw 262 reads, for 3 s after such a pause, serve
tags that had been re-pointed or deleted elsewhere. Now the copy is read only while the
member knows no leader (an election, or no quorum: what the window was for); with a leader,
the read is a quorum read again, which waits for the member to catch up.

Not at once, either: a member knows no leader during any election too, and just after the
leader's loss it may lack writes the old leader committed with the other members (a probe
pausing the leader saw another replica serve tags from its copy ~1 s later, re-pointed or
deleted up to 1.5 s before: 803 stale reads in one round). The new leader brings it up to
date once elected; so the copy is read only once the member has said it knows no leader for
SETTLED_SECONDS, longer than an election takes (1-3 s here after a leader's loss): no
quorum, not an election. Until then a read waits for a quorum read to succeed.

Nor while another member that answers knows a leader or holds more: a member resumed after a
pause can lag for seconds and stay leaderless that long (it campaigns with its old log, which
no one votes for), while the others still form a quorum; the same probe saw such a member
serve tags up to 4.6 s after the next leader's loss. So the copy is read only if no member
that answers knows a leader, and none reports a newer store revision (`Peers`) unless no
member has known a leader for BEHIND_SECONDS: then the quorum is lost for good (two
survivors of five, one behind the other) and pulls go on from each one's copy, as before.
That time is counted from the other members' answers (`copy_usable`), not from the member's
own: a member cut off from a quorum that went on has been leaderless for as long as it was cut
off, and when that quorum next holds an election its copy lacks what the quorum committed.

The other way round, a member that knows a leader but whose quorum reads fail (resumed after
a pause, it holds them until it has applied the leader's commits: 1-4.6 s in a probe; or
down while its replica runs) has them made through the other members (`Peers.quorum_read`):
as linearizable there, and no copy is read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import grpc
from aetcd import rpc

from moorage.errors import StoreUnavailable, own_cancellation

#: A member's answer is trusted this long (reads during a window ask at most this often).
CHECK_EVERY = 0.2
#: A member's status is asked with this deadline. One that does not answer (paused, hung) is
#: not taken to lack a leader: its copy would be read the moment it runs again, before it
#: caught up (a probe saw such reads, started while the member was paused, serve old tags).
STATUS_TIMEOUT = 0.5
#: How long the member must have said it knows no leader, in every answer, before its copy
#: is read: longer than an election takes.
SETTLED_SECONDS = 3.0
#: How long a member behind another one that answers waits before its copy is read anyway,
#: if no member knows a leader all that time (quorum lost, not an election).
BEHIND_SECONDS = 8.0
#: Answers of the members further apart than this do not make one stretch of "no member knows
#: a leader": one may have known a leader in between, unseen.
STREAK_GAP = 2.0
#: After the member's own quorum read failed while it knew a leader, reads go straight through
#: the other members this long (then it is tried again).
ELSEWHERE_SECONDS = 2.0

Call = Callable[[str, Any, float | None], Awaitable[Any]]


class _Client(Protocol):
    maintenancestub: Any
    kvstub: Any
    metadata: Any

    async def connect(self) -> None: ...

    async def close(self) -> None: ...


class Peers:
    """A channel to each member of its own (the store's channel fails over between them, so
    it cannot ask one in particular), opened the first time they are asked."""

    def __init__(self, endpoints: Sequence[str], client: Callable[[str], _Client]) -> None:
        self.endpoints = list(endpoints)
        self._client = client
        self._clients: dict[str, _Client] = {}

    async def _ask(self, endpoint: str, stub: str, method: str, request: Any, limit: float) -> Any:
        """The member's answer, or None when it gives none within `limit`."""
        client = self._clients.get(endpoint)
        if client is None:
            client = self._clients[endpoint] = self._client(endpoint)
        try:
            await client.connect()
            call = getattr(getattr(client, stub), method)
            return await call(request, timeout=limit, metadata=client.metadata)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, OSError):
            return None  # UsageError: its channel was closed (a reopen) before the call
        except asyncio.CancelledError:
            # grpc cancels the calls in flight on a channel being closed (the store's
            # reopen with renewed certificates or new members): no answer, not the
            # reader's cancellation, which goes on (a full run saw it reach a GET as 500).
            if own_cancellation():
                raise
            return None

    async def statuses(self) -> list[tuple[int, bool]]:
        """(store revision, whether it knows a leader) of each member that answers within
        STATUS_TIMEOUT."""
        found = await asyncio.gather(
            *(
                self._ask(e, "maintenancestub", "Status", rpc.StatusRequest(), STATUS_TIMEOUT)
                for e in self.endpoints
            )
        )
        return [(int(r.header.revision), bool(r.leader)) for r in found if r is not None]

    async def quorum_read(self, request: Any, limit: float) -> Any:
        """A linearizable Range through the other members (`endpoints` but the first, the
        store channel's), the first answer within `limit`; None when none answers. For a
        member that knows a leader but whose quorum reads stall: resumed after a pause, it
        holds them until it has applied the leader's commits (a probe: 1-4.6 s). Any member's
        linearizable read is as fresh as its own would be."""
        asked = [
            asyncio.ensure_future(self._ask(e, "kvstub", "Range", request, limit))
            for e in self.endpoints[1:]
        ]
        try:
            for answer in asyncio.as_completed(asked):
                if (resp := await answer) is not None:
                    return resp
            return None
        finally:
            for task in asked:
                task.cancel()

    async def close(self, endpoints: Sequence[str] | None = None) -> None:
        """Close the channels (`endpoints`: the members from now on)."""
        clients, self._clients = list(self._clients.values()), {}
        self.endpoints = list(endpoints) if endpoints is not None else self.endpoints
        for client in clients:
            await client.close()


def _no_client(endpoint: str) -> _Client:
    raise AssertionError("no members to ask")  # pragma: no cover: Peers([]) asks none


class LeaderCheck:
    def __init__(self, call: Call, peers: Peers | None = None) -> None:
        self._call = call
        self.peers = peers or Peers([], _no_client)
        self._revision = 0  # the member's store revision, as of its last answer
        #: (asked at, the members' statuses); until asked: as if one knew a leader
        self._seen: tuple[float, list[tuple[int, bool]]] = (-CHECK_EVERY, [(0, True)])
        self._checked = -CHECK_EVERY
        self._applied = -CHECK_EVERY  # when the answer in `_known` was asked
        self._known = True
        #: When an answer first said no leader, of the answers saying so since (None: the
        #: last answer named a leader).
        self._leaderless_since: float | None = None
        #: When the members' answers first showed no member knowing a leader, of those showing
        #: none since, each within STREAK_GAP of the one before (None: the last named one).
        self._none_since: float | None = None
        self._elsewhere_until = 0.0  # reads go through the other members until then

    async def read_elsewhere(self, request: Any, limit: float, failed: bool) -> Any:
        """A quorum read through the other members (`Peers.quorum_read`) when the member's
        own just `failed` while it knows a leader, or one did within ELSEWHERE_SECONDS before
        (then it is not tried first: each try waits out its deadline); None when not, or
        when no other member answers."""
        now = time.monotonic()
        if not failed and now >= self._elsewhere_until:
            return None
        if failed and not await self.known():  # not asked in the window: a hung member's
            return None  # status waits out its deadline too (the others' answer is as fresh)
        resp = await self.peers.quorum_read(request, limit)
        if resp is None:
            self._elsewhere_until = 0.0
        elif failed:
            self._elsewhere_until = now + ELSEWHERE_SECONDS
        return resp

    async def known(self) -> bool:
        """False only when the member the store talks to said it knows no leader (as of
        CHECK_EVERY ago at most); answers are taken in the order they were asked."""
        now = time.monotonic()
        if now - self._checked >= CHECK_EVERY:
            self._checked = now
            try:
                resp = await self._call(
                    "maintenancestub.Status", rpc.StatusRequest(), STATUS_TIMEOUT
                )
            except StoreUnavailable:
                return self._known
            if now >= self._applied:
                self._applied, self._known = now, bool(resp.leader)
                self._revision = int(resp.header.revision)
                if self._known:
                    self._leaderless_since = None
                elif self._leaderless_since is None:
                    self._leaderless_since = now
        return self._known

    async def leaderless_for(self) -> float:
        """How long the member has said it knows no leader, in every answer since (0.0 while
        it knows one)."""
        if await self.known() or self._leaderless_since is None:
            return 0.0
        return max(time.monotonic() - self._leaderless_since, 1e-9)

    async def copy_usable(self) -> bool:
        """Whether the member's copy may be read, the member knowing no leader (the caller
        checks for how long): no member that answers knows a leader, and none has a newer
        revision unless no member that answers has known one for BEHIND_SECONDS, in every
        answer since (the statuses as of CHECK_EVERY ago at most, asked by one read at a time:
        the others take the last answer). The member's own leaderless time is not enough: cut
        off from a quorum that went on for longer than that, it is behind when that quorum
        holds its next election, and its copy lacks what the quorum committed."""
        asked, seen = self._seen
        if time.monotonic() - asked >= CHECK_EVERY:
            before = asked
            asked = time.monotonic()
            self._seen = (asked, seen)
            seen = await self.peers.statuses()
            if self._seen[0] == asked:
                self._seen = (asked, seen)
                if any(leader for _, leader in seen):
                    self._none_since = None
                elif self._none_since is None or asked - before > STREAK_GAP:
                    self._none_since = asked
        if any(leader for _, leader in seen):
            return False  # a quorum elsewhere: wait for it (quorum reads)
        own = self._revision
        if all(revision <= own for revision, _ in seen):
            return True
        since = self._none_since
        return since is not None and time.monotonic() - since >= BEHIND_SECONDS

    def behind_until(self, leaderless: float) -> float:
        """When a member behind another may read its copy at the earliest, if no member comes
        to know a leader: BEHIND_SECONDS after the members were first seen without one (after
        the member itself said so, until they are asked)."""
        since = self._none_since
        start = since if since is not None else time.monotonic() - leaderless
        return start + BEHIND_SECONDS
