"""The tag → manifest cache of an API process, kept exact by an etcd watch.

No replica serves a tag from its cache after a change that deletes it or points it at another
manifest was acknowledged anywhere (the argument is in docs/ARCHITECTURE.md, "Tag cache"):

- a cache serves only while it is a *member*: a lease-backed key under
  `keys.TAG_CACHE_MEMBERS` saying up to which revision its watch has applied tag changes,
  its watch is established, and a keep-alive of that lease it sent less than VALID_SECONDS
  ago was answered;
- an entry read from etcd is kept only when no change to its key arrived while it was read;
- the writer of such a change (`settle`) waits until every member's revision has reached
  the change; a member that has not within SETTLE_SECONDS has its lease revoked, and the
  writer waits VALID_SECONDS more, by which time that member has stopped serving.

Without a watch, during quorum loss (no keep-alive answers) or with the in-memory store,
reads go to the store as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from pathlib import Path

from moorage.errors import StoreUnavailable
from moorage.logs import Repeating
from moorage.meta import keys
from moorage.meta.base import LAST_REVISION
from moorage.meta.etcd import EtcdCluster
from moorage.meta.records import TagRecord
from moorage.meta.tag_watch import TagEvent, TagWatch, WatchClosed, member_lease, read_members

log = logging.getLogger(__name__)

MAX_ENTRIES = 100_000  # tags kept, least recently used dropped first
SETTLE_SECONDS = 2.0  # how long a writer waits for the other caches before revoking them
VALID_SECONDS = 1.0  # a cache serves this long after sending a keep-alive that was answered
#: Between an answered keep-alive and the next: the cache serves without a gap while two
#: keep-alives' round trips add up to less than VALID_SECONDS - KEEPALIVE_EVERY. Each one is
#: a gRPC stream to the leader (forwarded by a follower): 4 a second per API worker cost a
#: 3-replica cluster about 2.5 s of CPU a minute, idle.
KEEPALIVE_EVERY = 0.5
LEASE_TTL = 10  # a member that vanished stops being waited for after this (seconds)
REPORT_EVERY = 1.0  # progress is written at once after a delete or re-point, else this often
RECENT = 10_000  # the revisions of the latest deletes and re-points, per tag key
RETRY_SECONDS = 1.0
#: A revoked cache's tombstone (`REVOKED` + its name): writers that see it wait until it is
#: gone, which its writer makes it VALID_SECONDS after the revocation; its lease ends it
#: after this many seconds should that writer die first.
REVOKED = keys.TAG_CACHE_MEMBERS + b"~revoked/"
REVOKED_TTL = 5
WARN_EVERY = 60.0  # the same reason for being off is logged again after this (seconds)
# Progress without events comes every 100 ms at most (the watch's own notifications, which
# cluster.etcd_process.PROGRESS_NOTIFY_INTERVAL sets): the only one a cache trusts.
#: Test suites only: while this file exists in the data directory, the watch applies nothing
#: (a stalled watch whose keep-alives still succeed: the case the revocation is for).
STALL_FILE = "tag-watch.stall"


def invalidating(event: TagEvent) -> bool:
    """A delete, or a put over a tag that named another manifest."""
    if event.value is None:
        return True
    if event.previous is None:
        return False  # created: no cache can hold an older value of it
    return _digest(event.previous) != _digest(event.value)


def _digest(raw: bytes) -> object:
    try:
        return json.loads(raw).get("digest")
    except (ValueError, AttributeError):
        return raw  # unreadable: compared as bytes


class TagCache:
    def __init__(self, store: EtcdCluster, name: str, stall: Path | None = None) -> None:
        self.store = store
        self.member_key = keys.tag_cache_member(name)
        self._stall = stall
        self._entries: OrderedDict[bytes, TagRecord] = OrderedDict()
        self._filling: Counter[bytes] = Counter()
        self._generation = 0  # bumped when a read in flight may have become stale
        self._live = False  # watch established, member key written
        self._valid_until = 0.0
        self.progress = 0  # every tag change up to this revision is applied
        self._reported = 0
        self._urgent = asyncio.Event()
        self._progressed = asyncio.Event()
        #: Every member's progress was seen at or past this revision (members that join
        #: later start their watch after it, with nothing cached).
        self._all_reached = 0
        self._recent: OrderedDict[bytes, int] = OrderedDict()
        self._floor = 0  # the newest revision dropped from _recent
        self._watch: TagWatch | None = None
        self._resumed_at = 0.0  # the last `_resume` (time.monotonic())
        self._task: asyncio.Task[None] | None = None
        self._dropping: set[asyncio.Task[None]] = set()
        self.hits = 0
        self.misses = 0
        #: Once per reason, then once a minute: a worker started during quorum loss retries
        #: every RETRY_SECONDS.
        self._warn = Repeating(log, every=WARN_EVERY)

    # -- reads ----------------------------------------------------------------------
    @property
    def serving(self) -> bool:
        return self._live and time.monotonic() < self._valid_until

    async def get(self, repo: str, tag: str) -> TagRecord | None:
        self._ensure_running()
        key = keys.tag(repo, tag)
        if self.serving:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return hit
        self.misses += 1
        generation = self._generation
        self._filling[key] += 1
        try:
            record = await self.store.get_tag(repo, tag)
        finally:
            self._filling[key] -= 1
            if not self._filling[key]:
                del self._filling[key]
        # Kept only if no change to it arrived while it was read, and from a quorum read
        # (a member's local copy, read during an election, may be behind the watch).
        local = time.monotonic() < self.store._local_reads_until
        if record is not None and generation == self._generation and self.serving and not local:
            self._entries[key] = record
            if len(self._entries) > MAX_ENTRIES:
                self._entries.popitem(last=False)
        return record

    # -- writers ----------------------------------------------------------------------
    async def settle(self, repo: str, tags: Sequence[str]) -> None:
        """After a committed write that may have deleted or re-pointed `tags` of `repo`:
        return once no cache in the cluster can serve their old values."""
        if not tags:
            return
        self._ensure_running()
        target = LAST_REVISION.get()
        if self._live and await self._caught_up(target):
            # The newest delete or re-point of each tag, whoever made it: also one that this
            # write only followed (the same digest pushed again while the re-point of another
            # replica still waits for a lagging cache: answered at once, that push let the
            # lagging cache serve the old digest after its 201). One dropped from the recent
            # ones is at most the floor. A new tag has none (0).
            newest = max(self._recent.get(keys.tag(repo, t), self._floor) for t in tags)
            if newest <= self._all_reached:
                return  # every member has applied it (a new tag, or settled already)
            target = newest
        await self._await_members(target)

    async def _caught_up(self, revision: int) -> bool:
        """Whether this cache's watch applied every change up to `revision` within
        SETTLE_SECONDS (a write's own change comes as an event; without one, the watch's
        periodic progress notification tells)."""
        deadline = time.monotonic() + SETTLE_SECONDS
        while self.progress < revision and self._live:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            waiter = self._progressed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await waiter.wait()
        return self.progress >= revision

    async def _members(self) -> list[tuple[bytes, int, int]]:
        """(key, lease, progress) of each member; a revoked cache's tombstone as (key, 0,
        -1): behind whatever the revision, never revoked again, waited out."""
        out = []
        for key, value in await read_members(self.store):
            if key.startswith(REVOKED):
                out.append((key, 0, -1))
                continue
            try:
                doc = json.loads(value)
                out.append((key, int(doc["lease"]), int(doc["progress"])))
            except (ValueError, KeyError, TypeError):
                log.warning("tag cache: unreadable member record %r", key)
        return out

    async def _await_members(self, revision: int) -> None:
        """Return once every member has applied `revision` or stopped serving: a member
        still behind after SETTLE_SECONDS is revoked; one another writer revoked (its
        tombstone) is waited for until that writer has waited VALID_SECONDS too (its key
        vanishes with the revocation, before the cache stops serving)."""
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            members = [
                (key, lease, self.progress if key == self.member_key else progress)
                for key, lease, progress in await self._members()
            ]
            behind = [(key, lease) for key, lease, progress in members if progress < revision]
            live = [(key, lease) for key, lease in behind if lease]
            now = time.monotonic()
            if not behind or (live and now >= deadline) or now >= deadline + REVOKED_TTL:
                break
            await asyncio.sleep(0.01)
        if not behind:
            reached = min((progress for _, _, progress in members), default=revision)
            self._all_reached = max(self._all_reached, revision, reached)
            return
        if live:
            await self._revoke_all(live, revision)
        await asyncio.sleep(VALID_SECONDS)  # by now they have stopped serving
        self._all_reached = max(self._all_reached, revision)

    async def _revoke_all(self, behind: list[tuple[bytes, int]], revision: int) -> None:
        """Revoke the leases of caches `behind`, each under a tombstone that lives until this
        writer has waited VALID_SECONDS (or REVOKED_TTL, should it die meanwhile)."""
        tombstones = await self.store.grant_lease(REVOKED_TTL)
        for key, lease in behind:
            name = key.removeprefix(keys.TAG_CACHE_MEMBERS)
            await self.store.put_with_lease(REVOKED + name, b"{}", tombstones)
            await self._revoke(lease)
        log.warning(
            "tag cache: %s had not applied revision %d within %.0f s: their leases are "
            "revoked, their caches off until they catch up",
            ", ".join(k.decode(errors="replace") for k, _ in behind),
            revision,
            SETTLE_SECONDS,
        )
        asyncio.get_running_loop().call_later(VALID_SECONDS, self._drop_tombstones, tombstones)

    def _drop_tombstones(self, lease: int) -> None:
        task = asyncio.get_running_loop().create_task(self._revoke(lease))
        self._dropping.add(task)
        task.add_done_callback(self._dropped)

    def _dropped(self, task: asyncio.Task[None]) -> None:
        self._dropping.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("tag cache: tombstones left to expire: %s", task.exception())

    async def _revoke(self, lease: int) -> None:
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            try:
                await self.store.revoke_lease(lease)
                return
            except StoreUnavailable as exc:
                if "not found" in str(exc):
                    return  # expired or revoked already
                if time.monotonic() >= deadline:
                    raise StoreUnavailable(
                        "the change was committed, but a replica's tag cache that has not seen "
                        f"it could not be turned off ({exc}); retry to confirm it"
                    ) from exc
            await asyncio.sleep(0.1)

    # -- membership and the watch ----------------------------------------------------
    def start(self) -> None:
        """Join the cluster's caches now (the API worker's start), not on the first request:
        a writer whose own cache is not live yet waits for every other member's periodic
        progress report (up to REPORT_EVERY), which the first pushes after a start did."""
        self._ensure_running()

    def _ensure_running(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _go_dark(self) -> None:
        self._live = False
        self._valid_until = 0.0
        self._entries.clear()
        self._generation += 1
        self._wake()

    def _wake(self) -> None:
        self._progressed.set()
        self._progressed = asyncio.Event()

    async def _run(self) -> None:
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                why = _unavailable(exc)
                if why is not None:
                    self._warn(f"tag cache off: {why}; retrying")
                else:
                    log.exception("tag cache failed; off until it is set up again")
            self._go_dark()
            await asyncio.sleep(RETRY_SECONDS)

    async def _session(self) -> None:
        granted = time.monotonic()
        lease = await self.store.grant_lease(LEASE_TTL)
        watch = TagWatch(self.store)
        try:
            await self._report(lease, 0)  # a member before its watch starts: writers wait
            start = await watch.open()
            self._watching(watch, start)
            self._reported = 0
            self._valid_until = granted + VALID_SECONDS
            self._live = True
            self._warn.clear()
            await self._report(lease, start)
            log.info("tag cache on (member %s)", self.member_key.decode(errors="replace"))
            async with asyncio.TaskGroup() as group:
                group.create_task(self._keep_alive(lease))
                group.create_task(self._reporter(lease))
                group.create_task(self._apply(watch))
        finally:
            self._go_dark()
            current, self._watch = self._watch, None
            watch.close()
            if current is not None:
                current.close()  # a watch resumed on a new channel (`_resume`)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await self.store.revoke_lease(lease)

    async def _report(self, lease: int, progress: int) -> None:
        value = json.dumps({"lease": lease, "progress": progress}).encode()
        await self.store.put_with_lease(self.member_key, value, lease)
        self._reported = max(self._reported, progress)

    async def _keep_alive(self, lease: int) -> None:
        while True:
            sent = time.monotonic()
            try:
                async with asyncio.timeout(VALID_SECONDS):
                    alive = await self.store.keep_alive(lease)
                    # etcd 3.4 answers keep-alives on a deposed leader (resumed after a pause,
                    # before it hears the new term): a quorum read shows the member key still
                    # on this lease, i.e. no writer revoked it (a probe saw a cache serve for
                    # 0.1 s after such a revocation).
                    held = await member_lease(self.store, self.member_key) if alive else None
            except TimeoutError:
                continue  # no answer: the validity runs out by itself
            if not alive or held != lease:
                raise StoreUnavailable("its lease was revoked or expired")
            self._valid_until = sent + VALID_SECONDS
            await asyncio.sleep(KEEPALIVE_EVERY)

    async def _reporter(self, lease: int) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REPORT_EVERY):
                    await self._urgent.wait()
            self._urgent.clear()
            if self.progress > self._reported:
                await self._report(lease, self.progress)

    async def _apply(self, watch: TagWatch) -> None:
        while True:
            try:
                events, progress = await watch.next()
            except WatchClosed:
                if time.monotonic() - self._resumed_at < RETRY_SECONDS:
                    raise  # closed again at once: not a reopen; the session ends
                self._resumed_at = time.monotonic()
                watch = await self._resume(watch)
                continue
            while self._stall is not None:  # the test hook: apply nothing while it exists
                if not self._stall.exists():
                    break
                await asyncio.sleep(0.05)
            urgent = False
            for event in events:
                self._entries.pop(event.key, None)
                if event.key in self._filling:
                    self._generation += 1
                if invalidating(event):
                    urgent = True
                    self._recent[event.key] = event.revision
                    self._recent.move_to_end(event.key)
                    if len(self._recent) > RECENT:
                        _, dropped = self._recent.popitem(last=False)
                        self._floor = max(self._floor, dropped)
            if progress > self.progress:
                self.progress = progress
                self._wake()
            if urgent:
                self._urgent.set()

    def _watching(self, watch: TagWatch, start: int) -> None:
        """Start over on `watch`, established at revision `start`: no entry kept, and the
        changes before it unknown here (the floor)."""
        self._watch, self.progress = watch, start
        self._floor = start
        self._recent.clear()
        self._entries.clear()
        self._generation += 1

    async def _resume(self, closed: TagWatch) -> TagWatch:
        """The store swapped its channel under the watch (a reopen: new members, a renewed
        certificate): watch again on the new channel, from now, and start over as a new
        session does (no entry kept, the changes before the new watch unknown here), but
        without going off: the membership and its lease go on.

        Not resumed from the first revision not applied: the changes before the new watch
        are covered by the floor instead, which writers wait for once. Until the new watch
        runs, the cache still serves what it had, as during any lag: a writer whose change
        it has not applied waits for this member's progress, which only this resets
        (reported at once)."""
        closed.close()
        fresh = TagWatch(self.store)
        start = await fresh.open()
        self._watching(fresh, start)
        self._wake()
        self._urgent.set()  # report the new progress now: writers may wait for it
        log.info("tag cache: watch resumed on a new channel at revision %d", start)
        return fresh

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None


def _unavailable(exc: BaseException) -> str | None:
    """Why the session ended when it is the store's unavailability (alone, or the only
    errors of the session's task group), else None: an unexpected failure."""
    if isinstance(exc, StoreUnavailable):
        return str(exc)
    if isinstance(exc, BaseExceptionGroup):
        whys = [_unavailable(e) for e in exc.exceptions]
        if whys and all(w is not None for w in whys):
            return "; ".join(w for w in whys if w is not None)
    return None


def stall_file() -> Path | None:
    """`D/tag-watch.stall` when the test hook is on (`MOORAGE_TEST_HOOKS=1`), else None."""
    if os.environ.get("MOORAGE_TEST_HOOKS") != "1" or "MOORAGE_DATA_DIR" not in os.environ:
        return None
    return Path(os.environ["MOORAGE_DATA_DIR"]) / STALL_FILE
