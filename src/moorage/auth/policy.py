"""The access policy (issue #9, DESIGN.md §7): who may pull, push and delete what.

* A cluster admin may do everything.
* Everyone else holds what its grants give, on the repository's namespace (the first
  component of its name) or on the repository itself, given to the user or to one of its
  teams: `read` = pull, `write` = pull + push, `admin` = pull + push + delete. A user NAME
  is admin of the namespace NAME.
* A public repository may be pulled by anyone, anonymous clients included.
* A token's or a robot's `limit` cuts that down further (`limited`).
* A disabled or deleted account holds nothing.

The accounts and grants are cached per process (`AccessView`) so that a pull costs no
store read in the steady state, and the cache is emptied by an etcd watch on every change
to users and permissions: a change made on any replica holds on every replica as soon as
etcd delivers it (milliseconds), never after a TTL. While the watch is not established
(starting, etcd unreachable) nothing is cached: every decision reads the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from moorage.auth.access import (
    ALL,
    CATALOG,
    DELETE,
    PULL,
    PUSH,
    REGISTRY,
    REPOSITORY,
    Access,
    Authorizer,
    Principal,
    PullScope,
    account_mark,
    limited,
)
from moorage.errors import StoreUnavailable
from moorage.logs import Repeating
from moorage.meta import keys
from moorage.meta.accounts import Accounts, NamespaceAccess, namespace_of
from moorage.meta.base import MetaStore
from moorage.meta.etcd import EtcdCluster, EtcdMetaStore
from moorage.meta.etcd_maintenance import member_status
from moorage.meta.etcd_watch import WatchClosed, watch_prefixes
from moorage.meta.records import UserRecord

log = logging.getLogger("moorage.auth")

T = TypeVar("T")

#: What each role allows on a repository.
ROLE_ACTIONS: dict[str, frozenset[str]] = {
    "read": frozenset({PULL}),
    "write": frozenset({PULL, PUSH}),
    "admin": frozenset({PULL, PUSH, DELETE}),
}
EVERYTHING = ROLE_ACTIONS["admin"]
#: Entries kept at most (then the cache starts over): bounded memory whatever the traffic.
MAX_ENTRIES = 50_000
_RETRY_WATCH = 1.0
SETTLE = 1.0  # the most an account change waits for the watch to deliver it


class AccessView:
    """Accounts and grants as the policy reads them: cached while an etcd watch on them is
    established, read from the store otherwise (and with an in-memory store)."""

    def __init__(self, meta: MetaStore) -> None:
        self.accounts = Accounts(meta)
        self.meta = meta
        self._cache: dict[tuple[str, str], Any] = {}
        self._generation = 0
        self.live = False  # the watch is established: cached entries are current
        self._changed = asyncio.Event()  # set (and replaced) on every invalidation
        self._task: asyncio.Task[None] | None = None
        #: The watch retries every _RETRY_WATCH while etcd is down: once per reason a minute.
        self._warn = Repeating(log)

    # -- the watch ---------------------------------------------------------------------
    def _ensure_watch(self) -> None:
        if self._task is None and isinstance(self.meta, EtcdMetaStore):
            self._task = asyncio.get_running_loop().create_task(self._watch(self.meta))

    def invalidate(self) -> None:
        self._generation += 1
        self._cache.clear()
        self._changed.set()
        self._changed = asyncio.Event()

    def _ready(self) -> None:
        self.invalidate()
        if not self.live:
            log.info("access watch established: accounts and grants are cached")
        self.live = True
        self._warn.clear()

    async def settle(self, generation: int) -> None:
        """After a change this process wrote: wait (up to SETTLE seconds) until the watch has
        delivered a change after `generation`. The other members of etcd apply it at about
        the same time, so the other replicas' watches have it too by then."""
        if not self.live:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SETTLE):
                while self._generation == generation:
                    await self._changed.wait()

    @property
    def generation(self) -> int:
        return self._generation

    async def _watch(self, meta: EtcdMetaStore) -> None:
        while True:
            pause = _RETRY_WATCH
            try:
                await watch_prefixes(meta, (keys.USERS, keys.ACCESS), self._ready, self.invalidate)
            except WatchClosed:
                pause = 0.05  # a reopen (new members, a renewed certificate): watch again now
            except StoreUnavailable as exc:
                self._warn(f"access watch: {exc}; retrying (no cache meanwhile)")
            except asyncio.CancelledError:
                self.live = False
                raise
            except Exception:  # never let the watch die silently: no cache, retry
                log.exception("access watch failed; retrying (no cache meanwhile)")
            self.live = False
            self.invalidate()
            await asyncio.sleep(pause)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
            self.live = False

    async def _cached(self, kind: str, key: str, read: Callable[[], Awaitable[T]]) -> T:
        self._ensure_watch()
        if self.live:
            hit = self._cache.get((kind, key), self)
            if hit is not self:
                return hit  # type: ignore[no-any-return]
        generation, live = self._generation, self.live
        value = await read()
        # Kept only if nothing changed while it was read (else it may be stale already).
        if live and self.live and generation == self._generation:
            if len(self._cache) >= MAX_ENTRIES:
                self._cache.clear()
            self._cache[(kind, key)] = value
        return value

    # -- what the policy reads ------------------------------------------------------
    async def user(self, name: str) -> UserRecord | None:
        return await self._cached("user", name, lambda: self.accounts.user(name))

    async def teams_of(self, name: str) -> tuple[str, ...]:
        return await self._cached("teams", name, lambda: self.accounts.teams_of(name))

    async def namespace(self, ns: str) -> NamespaceAccess:
        return await self._cached("ns", ns, lambda: self.accounts.namespace(ns))

    async def grant_targets(self, subjects: Sequence[str]) -> set[str]:
        """The targets of every grant to one of `subjects` (the whole grant index is read
        in pages once, then cached until the watch sees a change)."""
        index = await self._cached("grant-index", "", self.accounts.grant_index)
        return {t for s in subjects for t in index.get(s, ())}

    async def repository(
        self, ns: str, repo: str, subjects: Sequence[str]
    ) -> tuple[dict[tuple[str, str], str], bool]:
        key = f"{repo}\0{','.join(subjects)}"
        return await self._cached("repo", key, lambda: self.accounts.repository(ns, repo, subjects))


class Policy(Authorizer):
    """The real `Authorizer` (see the module docstring)."""

    def __init__(self, view: AccessView) -> None:
        self.view = view

    async def void(self, principal: Principal) -> bool:
        return principal.kind == "user" and await self.account(principal) is None

    async def account(self, principal: Principal) -> UserRecord | None:
        """The principal's account if it may act at all (exists, not disabled)."""
        if principal.anonymous or principal.kind == "robot":
            return None
        user = await self.view.user(principal.name)
        if user is None or user.disabled:
            return None
        if principal.mark is not None and account_mark(user) != principal.mark:
            return None  # another password, or another account of the same name
        return user

    async def _subjects(self, user: UserRecord, memo: dict[Any, Any]) -> tuple[str, ...]:
        """`user:NAME` and `team:ORG/TEAM` of each of its teams, sorted."""
        found = memo.get(("subjects",))
        if found is None:
            teams = await self.view.teams_of(user.name)
            found = memo[("subjects",)] = (f"user:{user.name}", *sorted(f"team:{t}" for t in teams))
        return tuple(found)

    async def _repository_actions(
        self, user: UserRecord | None, repo: str, memo: dict[Any, Any] | None = None
    ) -> frozenset[str]:
        """Everything the account (None: anonymous) may do on `repo` (before a limit).

        One decision reads only the grants of the user and its teams on the repository and
        its namespace, by key (bounded however many grants the namespace holds). `memo`
        (the catalog's filter, `pullable`) reads each namespace's grants once instead, for
        all of its repositories on the page."""
        if user is not None and user.admin:
            return EVERYTHING
        ns = namespace_of(repo)
        if user is not None and user.name == ns:
            return EVERYTHING
        subjects = () if user is None else await self._subjects(user, {} if memo is None else memo)
        roles: Mapping[tuple[str, str], str]
        if memo is None:
            roles, public = await self.view.repository(ns, repo, subjects)
        else:
            access = memo.get(("ns", ns))
            if access is None:
                access = memo[("ns", ns)] = await self.view.namespace(ns)
            roles, public = access.roles, repo in access.public
        held: set[str] = {PULL} if public else set()
        for subject in subjects:  # the user and its teams: at most 101 lookups per target
            for target in (ns, repo):
                role = roles.get((target, subject))
                if role is not None:
                    held |= ROLE_ACTIONS[role]
        return frozenset(held)

    async def allowed(self, principal: Principal, access: Access) -> frozenset[str]:
        wanted = access.actions
        if access.type == REGISTRY:
            if access.name != CATALOG:
                return frozenset()
            if principal.kind == "robot":
                return limited(principal, access)
            if await self.account(principal) is None:
                return frozenset()
            return limited(principal, access)
        if access.type != REPOSITORY:
            return frozenset()
        if ALL in wanted:
            wanted = (wanted - {ALL}) | EVERYTHING
        if principal.kind == "robot":  # a robot holds exactly what its scope says
            return limited(principal, Access(access.type, access.name, wanted))
        user = await self.account(principal)
        if user is None and not principal.anonymous:
            return frozenset()
        held = await self._repository_actions(user, access.name)
        granted = Access(access.type, access.name, wanted & held)
        return limited(principal, granted)

    async def pull_scope(self, principal: Principal) -> PullScope | None:
        """A cluster admin: everything. A user: its own namespace, the targets of its and
        its teams' grants (every role includes pull), and the public repositories. A
        credential with a limit (a token, a robot): None, the caller filters."""
        if principal.limit is not None or principal.kind == "robot":
            return None
        user = await self.account(principal)
        if user is None:
            return PullScope(public=principal.anonymous)
        if user.admin:
            return PullScope(everything=True)
        targets = await self.view.grant_targets(await self._subjects(user, {}))
        namespaces = {user.name} | {t for t in targets if "/" not in t}
        repositories = {t for t in targets if namespace_of(t) not in namespaces}
        return PullScope(False, tuple(sorted(namespaces)), tuple(sorted(repositories)), True)

    async def pullable(self, principal: Principal, names: Sequence[str]) -> list[str]:
        """The names the principal may pull; a namespace's grants are read once per call."""
        pull = frozenset({PULL})
        if principal.kind == "robot":
            return [n for n in names if limited(principal, Access(REPOSITORY, n, pull))]
        user = await self.account(principal)
        if user is None and not principal.anonymous:
            return []
        memo: dict[Any, Any] = {}
        out = []
        for name in names:
            held = await self._repository_actions(user, name, memo)
            if PULL in held and limited(principal, Access(REPOSITORY, name, pull)):
                out.append(name)
        return out


async def propagated(cluster: EtcdCluster, revision: int, patience: float = 2.0) -> bool:
    """Wait until every etcd member has applied `revision` (each replica's watch hears of
    it from its own member right then), up to `patience` seconds: whether they all have.

    An account change is answered after this, so that a request sent to any replica after
    the answer meets the change (a follower learns of a commit up to a heartbeat later)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    members = await cluster.members()
    pending = [m.client_urls[0] for m in members if m.client_urls]
    while pending:
        found = await asyncio.gather(
            *(member_status(url, patience / 2, tls=cluster.tls) for url in pending),
            return_exceptions=True,
        )
        pending = [
            url
            for url, status in zip(pending, found, strict=True)
            if isinstance(status, BaseException) or status.revision < revision
        ]
        if pending and loop.time() > deadline:
            log.warning("an account change did not reach etcd members %s in time", pending)
            return False
        if pending:
            await asyncio.sleep(0.02)
    return True
