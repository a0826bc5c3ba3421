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
#: A member's status is asked with this deadline. One that does not answer (paused, hung) is
#: not taken to lack a leader: its copy would be read the moment it runs again, before it
#: caught up (a probe saw such reads, started while the member was paused, serve old tags).
STATUS_TIMEOUT = 0.5

Call = Callable[[str, Any, float | None], Awaitable[Any]]


class LeaderCheck:
    def __init__(self, call: Call) -> None:
        self._call = call
        self._checked = -CHECK_EVERY
        self._applied = -CHECK_EVERY  # when the answer in `_known` was asked
        self._known = True

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
        return self._known
