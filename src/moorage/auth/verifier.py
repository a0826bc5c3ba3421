"""Password checks on a small executor of their own, one check per distinct credential.

An argon2 check costs 64 MiB and about 100 ms of CPU. Run on the thread pool that does the
blob I/O, a few dozen concurrent wrong passwords would take gigabytes and stall every push
and pull; here at most `workers` checks run at once per process, on threads of their own.

Concurrent checks of the same credential against the same hash share one run (a replica
that has just started sees a client's parallel layer uploads all arrive with the same
credential). Waiting checks are started best first: a client with fewer recent failures
before one with more, so an attacker's queue does not delay other users' first logins
more than the executor's size implies. At most `max_waiting` checks wait; past that a
login is refused with a retry hint instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import Counter, Gauge

from moorage.auth.passwords import dummy_hash, rehash, verify_password
from moorage.errors import LoginThrottled

WORKERS = 2
MAX_WAITING = 64
NICENESS = 10  # added to the process's, for the checking threads only

CHECKS = Counter("moorage_auth_password_checks_total", "argon2 password checks run", ["result"])
RUNNING = Gauge(
    "moorage_auth_password_checks_running",
    "argon2 password checks running now",
    multiprocess_mode="livesum",
)
WAITING = Gauge(
    "moorage_auth_password_checks_waiting",
    "argon2 password checks waiting for the executor",
    multiprocess_mode="livesum",
)
PEAK = Gauge(
    "moorage_auth_password_checks_peak",
    "most argon2 password checks that ran at once in one API worker since it started",
    multiprocess_mode="max",
)

_Job = tuple[int, int, bytes, str, str]


def _lower_priority() -> None:
    """Checks run at a lower CPU priority than the event loop and the blob I/O threads (on
    Linux, niceness is per thread, and argon2's lane threads inherit it): under a flood of
    wrong passwords, pushes and pulls get the CPU first."""
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(
            os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + NICENESS)
        )


class PasswordVerifier:
    def __init__(self, workers: int = WORKERS, max_waiting: int = MAX_WAITING) -> None:
        self.workers = workers
        self.max_waiting = max_waiting
        self._pool: ThreadPoolExecutor | None = None
        self._waiting: list[_Job] = []
        self._seq = itertools.count()
        self._futures: dict[bytes, asyncio.Future[bool]] = {}
        self._started = 0
        self._lock = threading.Lock()
        self._running = 0
        #: checks run so far, and the most that ran at once (also exported to /metrics)
        self.checks = 0
        self.peak = 0
        self.dummy: str | None = None

    async def dummy_hash(self) -> str:
        """The hash unknown users are checked against (made once, off the event loop)."""
        if self.dummy is None:
            self.dummy = await asyncio.get_running_loop().run_in_executor(
                self._executor(), dummy_hash
            )
        return self.dummy

    async def rehash(self, password: str, old_hash: str) -> str:
        """`passwords.rehash` on this executor (at a login: its memory is bounded with the
        checks')."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor(), rehash, password, old_hash
        )

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                self.workers, thread_name_prefix="moorage-argon2", initializer=_lower_priority
            )
        return self._pool

    def in_flight_count(self) -> int:
        return len(self._futures)

    def in_flight(self, key: bytes) -> asyncio.Future[bool] | None:
        """The check of credential `key` already waiting or running, if there is one."""
        return self._futures.get(key)

    async def verify(self, key: bytes, password_hash: str, password: str, priority: int) -> bool:
        """Whether `password` matches `password_hash`; `key` names the pair, for sharing."""
        future = self._futures.get(key)
        if future is None:
            if len(self._waiting) >= self.max_waiting:
                raise LoginThrottled(
                    "too many logins are being checked at once: retry shortly",
                    retry_after=1 + len(self._waiting) // (5 * self.workers),
                )
            future = asyncio.get_running_loop().create_future()
            self._futures[key] = future
            heapq.heappush(self._waiting, (priority, next(self._seq), key, password_hash, password))
            WAITING.inc()
            self._start_next()
        # Shielded: a client that hangs up does not cancel the check others wait for.
        return await asyncio.shield(future)

    def _start_next(self) -> None:
        loop = asyncio.get_running_loop()
        while self._started < self.workers and self._waiting:
            _, _, key, password_hash, password = heapq.heappop(self._waiting)
            WAITING.dec()
            self._started += 1
            run = loop.run_in_executor(self._executor(), self._check, password_hash, password)
            run.add_done_callback(functools.partial(self._finished, key))

    def _check(self, password_hash: str, password: str) -> bool:
        with self._lock:
            self._running += 1
            self.checks += 1
            self.peak = max(self.peak, self._running)
            peak = self.peak
        RUNNING.inc()
        PEAK.set(peak)
        try:
            ok = verify_password(password_hash, password)
        finally:
            RUNNING.dec()
            with self._lock:
                self._running -= 1
        CHECKS.labels("match" if ok else "mismatch").inc()
        return ok

    def _finished(self, key: bytes, done: asyncio.Future[bool]) -> None:
        self._started -= 1
        future = self._futures.pop(key)
        if done.cancelled():
            future.cancel()
        elif (exc := done.exception()) is not None:
            future.set_exception(exc)
        else:
            future.set_result(done.result())
        self._start_next()
