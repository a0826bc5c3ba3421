"""The fencing marker in blob storage: `<storage>/fence.json` = {"cluster_id", "epoch"}.

Emergency repair bumps the cluster's epoch and writes it here. A replica of the same
cluster with an older epoch (it was left out of the repair) refuses to serve, so a stale
majority coming back after a partition cannot take writes.

The marker is checked at start (the supervisor), every few seconds (the health loop) and,
cheaply, on the write path before every acknowledgement (`FenceWatch`): the old majority
of a partition may still have its own quorum when the repair ends its epoch, and a write it
acknowledged after the repair read the journal would be lost. Why the check on the write
path is enough (no write acknowledged by the old epoch escapes the replay):

    write (old epoch):  etcd commit -> journal append, fsynced -> fence check -> 201
    emergency repair:   write fence.json -> read the journal -> replay

A write that passed its fence check saw no fence, so the fence was written after that check,
hence after the write's journal entry was durable; the repair reads the journal only once
the fence is written, so it finds that entry and replays it. A write that finds the fence
answers 503 (it may or may not be replayed, like any write answered with an error, see
`moorage.recovery.journal_replay`). Blob uploads and blob deletes are checked the same way
but are not journaled: a blob the old epoch acknowledged comes back when a replayed manifest
names it; otherwise its client's manifest push answers MANIFEST_BLOB_UNKNOWN and the client
pushes the blob again. So the repair needs no grace period on storage whose
readers see a completed rename at once (a local filesystem; NFS mounted with `noac` or
`actimeo=0`). NFS clients that cache attributes may see the marker late, by at most their
attribute-cache timeout: `fence_grace` is that bound, and the repair waits it out after
writing the fence, before it reads the journal.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from moorage.config import ReplicaConfig
from moorage.errors import MoorageError, StorageUnavailable
from moorage.meta.records import FenceRecord
from moorage.storage.s3location import is_s3

if TYPE_CHECKING:
    from moorage.cluster.s3fence import S3FenceWatch

FENCE_FILE = "fence.json"
#: How a refusal begins when the marker cannot be checked (status recognises it in /_ping).
FENCE_UNCHECKED = "storage: cannot check the fence marker"


class Fenced(MoorageError):
    """This replica belongs to an epoch an emergency repair has ended."""


def read_fence(storage: str | Path) -> FenceRecord | None:
    """The marker, or None when there is none or it cannot be read. Not inside a running
    event loop when `storage` is on S3."""
    if isinstance(storage, str) and is_s3(storage):
        return asyncio.run(_read_s3(storage))
    try:
        raw = (Path(storage) / FENCE_FILE).read_bytes()
    except OSError:
        return None
    return FenceRecord.decode(raw)


def write_fence(storage: str | Path, cluster_id: str, epoch: int, replica_id: str) -> None:
    path = Path(storage) / FENCE_FILE
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    record = FenceRecord(cluster_id, epoch, replica_id, time.time())
    with open(tmp, "wb") as fh:
        fh.write(record.encode())
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _read_s3(storage: str) -> FenceRecord | None:
    from moorage.cluster.s3fence import read_s3_fence
    from moorage.storage.control import S3Control
    from moorage.storage.s3location import parse

    control = S3Control(parse(storage))
    try:
        return await read_s3_fence(control)
    except StorageUnavailable:
        return None
    finally:
        await control.aclose()


async def put_fence(storage: str, cluster_id: str, epoch: int, replica_id: str) -> None:
    """Write the marker of `epoch`: `write_fence` on a directory; on S3 a conditional write
    that fails (FenceConflict) when another repair wrote it first (moorage.cluster.s3fence)."""
    if not is_s3(storage):
        write_fence(storage, cluster_id, epoch, replica_id)
        return
    from moorage.cluster.s3fence import write_s3_fence
    from moorage.storage.control import S3Control
    from moorage.storage.s3location import parse

    control = S3Control(parse(storage))
    try:
        await write_s3_fence(control, cluster_id, epoch, replica_id)
    finally:
        await control.aclose()


def fence_verdict(config: ReplicaConfig, marker: FenceRecord | None) -> str | None:
    """Why `config`'s replica is fenced by `marker`, or None when it is not."""
    if marker is None or marker.cluster_id != config.cluster_id:
        return None
    epoch = marker.epoch
    if epoch > config.epoch:
        return (
            f"replica {config.replica_id} is fenced: an emergency repair moved cluster "
            f"{config.cluster_id} to epoch {epoch} without it (this replica is at epoch "
            f"{config.epoch}). Its data is stale. Run 'moorage destroy --data-dir "
            f"{config.data_dir}', then 'moorage join' it to the repaired cluster."
        )
    return None


def check_fence(config: ReplicaConfig) -> None:
    verdict = fence_verdict(config, read_fence(config.storage))
    if verdict is not None:
        raise Fenced(verdict)


class FenceCheck(Protocol):
    verdict: str | None

    def check(self) -> str | None: ...

    async def read_once(self) -> bool: ...

    async def run(self) -> None: ...


def fence_watch(config: ReplicaConfig) -> FenceWatch | S3FenceWatch:
    """The write path's fence check for `config`'s storage (a file's stat, or on S3 the
    last read of the marker, kept fresh by `run`)."""
    if is_s3(config.storage):
        from moorage.cluster.s3fence import S3FenceWatch

        return S3FenceWatch(config, fence_grace(config.storage))
    return FenceWatch(config)


class FenceWatch:
    """The fence check of the write path: one `stat` of fence.json per call.

    The marker is read again only when its (st_mtime_ns, st_ino, st_size) changed since the
    last read (write_fence replaces the file by a rename, so a new marker always has a new
    inode). Once fenced, always fenced: an epoch never comes back. A stat that fails for
    another reason than a missing file raises OSError: the caller cannot tell whether the
    replica is fenced and must not acknowledge.
    """

    def __init__(self, config: ReplicaConfig) -> None:
        self.config = config
        self.path = os.path.join(config.storage, FENCE_FILE)  # a str: the cheapest stat
        self._key: tuple[int, int, int] | None = None
        self._checked = False
        self.verdict: str | None = None

    def check(self) -> str | None:
        """Why this replica is fenced, or None (see the class docstring)."""
        if self.verdict is not None:
            return self.verdict
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            key = None
        else:
            key = (st.st_mtime_ns, st.st_ino, st.st_size)
        if self._checked and key == self._key:
            return None
        # The key is taken before the read: a marker replaced in between is read next time.
        verdict = (
            None if key is None else fence_verdict(self.config, read_fence(self.config.storage))
        )
        self._key, self._checked, self.verdict = key, True, verdict
        return verdict

    async def read_once(self) -> bool:
        """Nothing to read ahead: every check stats the file."""
        return True

    async def run(self) -> None:
        """Nothing to keep fresh: every check stats the file."""


_NFS_DEFAULT_CACHE = 60.0  # Linux NFS clients: acregmax and acdirmax default to 60 s


def fence_grace(storage: str | Path) -> float:
    """How long after the fence is written a replica on another host may still not see it.

    0 on a local filesystem. On NFS: the longest attribute-cache timeout of the mount, plus a
    second (0 with `noac` or `actimeo=0`). On S3: how old the write path's last read of the
    marker may be (5 s, at least 1 s; moorage.cluster.s3fence). `MOORAGE_FENCE_GRACE`
    (seconds) overrides it, for shared filesystems this cannot recognise.
    """
    override = os.environ.get("MOORAGE_FENCE_GRACE")
    given: float | None = None
    if override:
        try:
            given = max(0.0, float(override))
        except ValueError:
            raise MoorageError(
                f"MOORAGE_FENCE_GRACE must be a number of seconds, not {override[:40]!r}"
            ) from None
    if isinstance(storage, str) and is_s3(storage):
        from moorage.cluster.s3fence import s3_fence_grace

        return s3_fence_grace(given)
    if given is not None:
        return given
    fstype, options = _mount_of(Path(storage))
    if not fstype.startswith("nfs"):
        return 0.0
    opts = dict(o.partition("=")[::2] for o in options.split(","))
    if "noac" in opts:
        return 0.0
    names = ("actimeo",) if "actimeo" in opts else ("acregmax", "acdirmax")
    cache = 0.0
    for name in names:
        try:
            cache = max(cache, float(opts[name]))
        except (KeyError, ValueError):
            cache = max(cache, _NFS_DEFAULT_CACHE)
    return cache + 1.0 if cache > 0 else 0.0


def _mount_of(path: Path) -> tuple[str, str]:
    """(filesystem type, mount options) of the mount holding `path` ('' when unknown)."""
    try:
        target = path.resolve()
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return "", ""
    best: tuple[int, str, str] = (-1, "", "")
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        point = fields[1].replace("\\040", " ")
        if (target == Path(point) or Path(point) in target.parents) and len(point) > best[0]:
            best = (len(point), fields[2], fields[3])
    return best[1], best[2]
