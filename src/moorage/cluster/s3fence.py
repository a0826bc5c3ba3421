"""The fencing marker on S3 blob storage: the object `<prefix>/fence.json` (what
moorage.cluster.fence keeps as a file; read its docstring first).

Writing (emergency repair): the marker is read with its ETag, then written with a conditional
PUT: `If-None-Match: *` when there was none, `If-Match: <ETag>` to replace the marker of an
earlier epoch (a later repair does replace it, as on the filesystem). Two repairs racing
both read the same state and only one conditional PUT succeeds; the other stops before it
changes the cluster's records or replays anything. A repair also refuses to move a cluster's
marker back to an epoch it has already reached. Before writing, the repair checks that the
store honours If-None-Match (a second create of a probe object must fail): on a store that
ignores conditional writes, two repairs could both believe they won, so it refuses unless
`MOORAGE_S3_UNCONDITIONAL_FENCE=1` says the operator makes sure only one repair runs.

Checking (the write path): a worker cannot afford a request to the store per acknowledged
write, so `S3FenceWatch.run` re-reads the marker every `fence_grace / 4` seconds and `check`
answers from the last read, if that read began less than `fence_grace` seconds ago; older
(the store unreachable), `check` raises OSError and the write is refused. This keeps the
protocol's guarantee. The repair writes the marker at time F, then waits `fence_grace` (G)
before it reads the journal, at F + G. A write acknowledged at time A passed a check that
used a read begun at R > A - G which found no marker, so R < F (the store is read-after-write
consistent); its journal entry was durable before A < R + G < F + G: the repair's listing
finds it. (Times are on different hosts' clocks; only elapsed seconds are compared, so
only their rates need agree.) Every replica and the repair must use the same G: on S3 it is 5
seconds unless `MOORAGE_FENCE_GRACE` says otherwise (at least 1 s: below that the reads
could not keep up), set alike on every host.

After an outage of the store: a read is one attempt (no botocore retries), and a failed
read is tried again after `RETRY_AFTER_FAILURE`, not after the usual `grace / 4`. With
botocore's three attempts per read (each retried connection refused costs seconds of a busy
machine's CPU) and a full period after each failure, a replica saw the store's return up to
about `grace + grace / 4` seconds late and refused every write meanwhile, while its storage
probe already said healthy; now it is one retry interval plus one read once the store
accepts connections. Until then the replica says so (`Replica.problem`): its `/_ping` reads
as pulls-only, `?writable=1` answers 503, and `moorage status` shows it as starting, with
this module's message.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from moorage.cluster.fence import FENCE_FILE, fence_verdict
from moorage.config import ReplicaConfig
from moorage.errors import MoorageError
from moorage.meta.records import FenceRecord
from moorage.storage.control import S3Control, conditional_writes_work
from moorage.storage.s3location import parse

log = logging.getLogger("moorage.fence")

FENCE_OBJECT = FENCE_FILE
S3_FENCE_GRACE = 5.0
MIN_S3_FENCE_GRACE = 1.0
#: Seconds before a failed read of the marker is tried again (at most `grace / 4`).
RETRY_AFTER_FAILURE = 0.5


class FenceConflict(MoorageError):
    """Another emergency repair wrote the fence marker first."""


async def read_s3_fence(control: S3Control) -> FenceRecord | None:
    stored = await control.get(FENCE_OBJECT, limit=64 * 1024)
    return None if stored is None else FenceRecord.decode(stored.data)


async def write_s3_fence(control: S3Control, cluster_id: str, epoch: int, replica_id: str) -> None:
    """Write the marker of `epoch` unless another repair got there first (FenceConflict)."""
    if os.environ.get("MOORAGE_S3_UNCONDITIONAL_FENCE") != "1" and not (
        await conditional_writes_work(control)
    ):
        raise FenceConflict(
            f"the object store at {control.where} ignores conditional writes (If-None-Match), "
            "so two emergency repairs could both believe they won. Make sure no other "
            "emergency repair runs, then run this one again with "
            "MOORAGE_S3_UNCONDITIONAL_FENCE=1 in its environment"
        )
    record = FenceRecord(cluster_id, epoch, replica_id, time.time()).encode()
    current = await control.get(FENCE_OBJECT, limit=64 * 1024)
    if current is None:
        won = await control.create(FENCE_OBJECT, record)
    else:
        marker = FenceRecord.decode(current.data)
        if marker is not None and marker.cluster_id == cluster_id and marker.epoch >= epoch:
            raise FenceConflict(
                f"an emergency repair already moved cluster {cluster_id} to epoch "
                f"{marker.epoch} (by replica {marker.by_replica}); this one would move it to "
                f"{epoch} and is stopped before it changed the cluster (this replica's own "
                "etcd member was already made a one-member cluster: it cannot rejoin as it "
                "is). Run 'moorage status' against the repaired cluster, then 'moorage "
                "destroy' and 'moorage join' this replica"
            )
        won = await control.replace(FENCE_OBJECT, record, current.etag)
    if not won:
        raise FenceConflict(
            "another emergency repair wrote the fence marker at the same time and won; this "
            "one stopped before it changed the cluster (this replica's own etcd member was "
            "already made a one-member cluster: it cannot rejoin as it is). Run 'moorage "
            "status' to see the repaired cluster, then 'moorage destroy' and 'moorage join' "
            "this replica"
        )


def s3_fence_grace(override: float | None) -> float:
    return S3_FENCE_GRACE if override is None else max(MIN_S3_FENCE_GRACE, override)


class S3FenceWatch:
    """The write path's fence check on S3 (see the module docstring for why it is safe)."""

    def __init__(self, config: ReplicaConfig, grace: float) -> None:
        self.config = config
        self.grace = grace
        # One attempt per read (the loop in `run` is the retry), cut at the grace: a read
        # that succeeds later than that is of no use to `check`; a shorter cut would refuse
        # every write on a machine so loaded that a GET takes seconds.
        self.read_timeout = grace
        self.control = S3Control(parse(config.storage), attempts=1, read_timeout=grace)
        self.verdict: str | None = None
        self.reads = 0  # reads that succeeded
        self.failed_reads = 0  # reads that failed since the last one that succeeded
        self.last_error: str | None = None  # why the last read failed (None: it succeeded)
        self._read_at: float | None = None  # monotonic start of the last successful read

    def check(self) -> str | None:
        """Why this replica is fenced, or None; OSError when the last read is too old."""
        if self.verdict is not None:
            return self.verdict
        why = f"; the last attempt: {self.last_error}" if self.last_error else ""
        if self._read_at is None:
            raise OSError(f"the fence marker in {self.control.where} was not read yet{why}")
        age = time.monotonic() - self._read_at
        if age >= self.grace:
            raise OSError(
                f"the fence marker in {self.control.where} could not be read for {age:.0f} s "
                f"(the object store does not answer?){why}"
            )
        return None

    async def refresh(self) -> str | None:
        started = time.monotonic()
        marker = await read_s3_fence(self.control)
        verdict = None if marker is None else fence_verdict(self.config, marker)
        if verdict is not None:  # once fenced, always fenced: an epoch never comes back
            self.verdict = verdict
        self._read_at = started
        return self.verdict

    async def read_once(self) -> bool:
        """One read of the marker, cut at `read_timeout`: whether it succeeded (if not,
        `last_error` says why; a failure is logged when it starts or changes)."""
        try:
            # The client first, outside the cut: building one parses botocore's models (up to
            # seconds of CPU on a busy machine), and one cancelled midway is begun again.
            await self.control.client()
            await asyncio.wait_for(self.refresh(), self.read_timeout)
        except TimeoutError:
            error = f"no answer within {self.read_timeout:g} s"
        except MoorageError as exc:
            error = str(exc)
        else:
            if self.failed_reads:
                log.warning("fence marker read again after %d failed read(s)", self.failed_reads)
            self.reads += 1
            self.failed_reads, self.last_error = 0, None
            return True
        if error != self.last_error:
            log.warning("fence marker not read: %s", error)
        self.failed_reads += 1
        self.last_error = error
        return False

    async def run(self) -> None:
        """Re-read the marker every `grace / 4` seconds, and `RETRY_AFTER_FAILURE` seconds
        after a failed read, for as long as the task lives."""
        retry = min(RETRY_AFTER_FAILURE, self.grace / 4)
        try:
            while self.verdict is None:
                ok = await self.read_once()
                await asyncio.sleep(self.grace / 4 if ok else retry)
        finally:
            await self.control.aclose()
