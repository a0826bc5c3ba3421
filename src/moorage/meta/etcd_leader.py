"""Whether this replica's etcd member knows a leader: the gate on reading its own copy.

A quorum read that fails or times out used to open a window (LOCAL_READ_WINDOW) in which
reads took the member's own copy, so that pulls go on during an election or without quorum.
But a member that was only slow or paused (a stopped process, a full disk, a long GC) has
a leader again as soon as it runs, and is still catching up: its copy then lacked writes
the cluster had acknowledged, and a probe saw 262 reads, for 3 s after such a pause, serve
tags that had been re-pointed or deleted elsewhere. Now the copy is read only while the
member knows no leader (an election, or no quorum: what the window was for); with a leader,
the read is a quorum read again, which waits for the member to catch up.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aetcd import rpc

from moorage.errors import StoreUnavailable

#: A member's answer is trusted this long (reads during a window ask at most this often).
CHECK_EVERY = 0.2
#: A member that does not answer its status within this is taken to know no leader.
STATUS_TIMEOUT = 0.5

Call = Callable[[str, Any, float | None], Awaitable[Any]]


class LeaderCheck:
    def __init__(self, call: Call) -> None:
        self._call = call
        self._checked = -CHECK_EVERY
        self._known = True

    async def known(self) -> bool:
        """Whether the member the store talks to knows a leader (as of CHECK_EVERY ago
        at most; False when it does not answer)."""
        now = time.monotonic()
        if now - self._checked >= CHECK_EVERY:
            self._checked = now
            try:
                resp = await self._call(
                    "maintenancestub.Status", rpc.StatusRequest(), STATUS_TIMEOUT
                )
                self._known = bool(resp.leader)
            except StoreUnavailable:
                self._known = False
        return self._known
