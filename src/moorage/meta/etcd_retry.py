"""When a call to etcd is tried again: the errors of a leader election (retried until it is
over, within a budget `moorage.meta.etcd` sets) and the deadline of each attempt."""

from __future__ import annotations

from collections.abc import Iterator

from moorage.errors import StoreUnavailable

ELECTION = (
    "leader changed",
    "no leader",
    "connection refused",
    "failed to connect",
    "deadline exceeded",
    "request timed out",
)


#: An attempt after one that hit its deadline: the member sent that one to a leader that is
#: gone, and learns so within etcd's randomized election timeout (1-2 s after the leader
#: died). Until then it forwards each new attempt to the dead leader too, which hangs: short
#: attempts there end the wait about when the election does, where a second full attempt
#: kept a write in flight at the leader's death waiting ~3.2 s (measured: the failover
#: bench's stuck pushes). Two short ones, then full attempts again (a slow, not leaderless,
#: cluster still gets its full time).
SHORT_ATTEMPTS = (0.5, 0.5)


def attempts(first: float) -> Iterator[float]:
    """The deadlines of a call's successive attempts: `first`, SHORT_ATTEMPTS (capped at
    `first`), then `first` again, endlessly."""
    yield first
    for short in SHORT_ATTEMPTS:
        yield min(short, first)
    while True:
        yield first


def election(exc: StoreUnavailable) -> bool:
    text = str(exc).lower()
    return any(marker in text for marker in ELECTION)
