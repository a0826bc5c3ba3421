"""The Repositories list: one page of the repositories a viewer may pull, found by key
ranges of the catalog instead of by filtering it.

The policy says where the viewer's repositories are (`Authorizer.pull_scope`: everything
for a cluster admin; else its namespaces, the repositories granted one by one, and the
public ones), so the page reads only those ranges of `/moorage/repos/`, in name order,
and stops as soon as it has a page. A search by prefix narrows each range to the names
that start with the query: a key-range read too, never a scan of other names. A search
for names that merely contain the query does scan the viewer's ranges, but at most
`SCAN_BUDGET` names a request: a page that stopped there says how far it looked and
links to the rest (`after=`). Every read is bounded (pages of at most `SCAN` names, at
most `MAX_READS` reads a request).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from moorage.api.state import AppState
from moorage.auth.access import Principal, PullScope
from moorage.meta import names as name_ranges
from moorage.meta.accounts import Accounts

PAGE = 50
SCAN = 500  # names a read asks for when a search filters them
#: Names a "contains" search examines per request at most (MOORAGE_UI_SCAN_BUDGET: tests
#: make it small to follow a search across many requests).
SCAN_BUDGET = max(1, int(os.environ.get("MOORAGE_UI_SCAN_BUDGET", "") or 2000))
MAX_READS = 40  # store reads per request at most (a viewer with many grants)
MAX_QUERY = 200
#: Sorts after every character a repository name may hold: `NS/` + END is past every name
#: under `NS/`, so it can stand as the `after` of a page that ended with that range.
END = "~"


@dataclass(frozen=True, slots=True)
class Listing:
    names: list[str]
    after: str | None  # where the next page starts (None: this was the last)
    scanned: int  # names read to make this page
    partial: bool = False  # the budget ran out before a full page: `after` searches on


@dataclass(frozen=True, slots=True)
class _Range:
    """Names that start with `prefix`, or (`exact`) the name `prefix` only."""

    prefix: str
    exact: bool

    @property
    def end(self) -> str:
        return self.prefix if self.exact else self.prefix + END


@dataclass(slots=True)
class _Chunk:
    names: list[str]
    upto: str | None  # every match in (after, upto] is in names; None: the source is done
    scanned: int = 0
    reads: int = 0


def ranges(scope: PullScope, prefix: str) -> list[_Range]:
    """The catalog ranges of a scope, narrowed to names starting with `prefix`, disjoint
    and in name order (so reading them one after the other lists names in order)."""
    wide = [_Range("", False)] if scope.everything else []
    for ns in scope.namespaces:
        wide += [_Range(ns, True), _Range(ns + "/", False)]
    wide += [_Range(r, True) for r in scope.repositories]
    out = []
    for r in wide:
        if r.exact:
            if r.prefix.startswith(prefix):
                out.append(r)
        elif prefix.startswith(r.prefix):
            out.append(_Range(prefix, False))
        elif r.prefix.startswith(prefix):
            out.append(r)
    return sorted(out, key=lambda r: r.prefix)


async def _read_ranges(
    st: AppState,
    spans: Sequence[_Range],
    after: str | None,
    want: int,
    keep: Callable[[str], bool] | None,
) -> _Chunk:
    """Up to `want` matching names after `after`, reading the ranges in order."""
    meta = st.registry.meta
    chunk = _Chunk([], None)
    frontier = after

    def budget_left() -> bool:
        return chunk.reads < MAX_READS and (keep is None or chunk.scanned < SCAN_BUDGET)

    i = 0
    while i < len(spans):
        if not budget_left():
            chunk.upto = frontier
            return chunk
        span = spans[i]
        if after is not None and span.end <= after:
            i += 1
            continue
        if span.exact:  # this and the exact names next to it: one batched read
            group: list[str] = []
            while i < len(spans) and spans[i].exact and len(group) < SCAN:
                group.append(spans[i].prefix)
                i += 1
            wanted = [n for n in group if (after is None or n > after) and (not keep or keep(n))]
            found = await name_ranges.existing_repos(meta, wanted) if wanted else []
            chunk.reads += 1 if wanted else 0
            chunk.scanned += len(wanted)
            for name in found:
                chunk.names.append(name)
                if len(chunk.names) == want:
                    chunk.upto = name
                    return chunk
            frontier = group[-1]
            continue
        cursor = after
        while True:
            n = min(SCAN, SCAN_BUDGET - chunk.scanned) if keep else want - len(chunk.names)
            names, more = await name_ranges.repos_prefixed(meta, span.prefix, n, cursor)
            chunk.reads += 1
            chunk.scanned += len(names)
            for name in names:
                if keep is None or keep(name):
                    chunk.names.append(name)
                    if len(chunk.names) == want:
                        chunk.upto = name
                        return chunk
            if not more or not names:
                break
            cursor = frontier = names[-1]
            if not budget_left():
                chunk.upto = frontier
                return chunk
        frontier = span.end
        i += 1
    return chunk


async def _read_public(
    st: AppState, prefix: str, after: str | None, want: int, keep: Callable[[str], bool] | None
) -> _Chunk:
    """Up to `want` matching public repositories (in the catalog) after `after`."""
    accounts = Accounts(st.registry.meta)
    chunk = _Chunk([], None)
    cursor = after
    while chunk.reads < MAX_READS and (keep is None or chunk.scanned < SCAN_BUDGET):
        n = min(SCAN, SCAN_BUDGET - chunk.scanned) if keep else want
        names, more = await accounts.public_repos(prefix, n, cursor)
        chunk.reads += 1
        chunk.scanned += len(names)
        wanted = [n for n in names if keep is None or keep(n)]
        found = await name_ranges.existing_repos(st.registry.meta, wanted) if wanted else []
        chunk.reads += 1 if wanted else 0
        for name in found:
            chunk.names.append(name)
            if len(chunk.names) == want:
                chunk.upto = name
                return chunk
        if not more or not names:
            return chunk
        cursor = names[-1]
    chunk.upto = cursor
    return chunk


async def _filtered(
    st: AppState, principal: Principal, prefix: str, after: str | None, keep: Callable[[str], bool]
) -> _Chunk:
    """Without a scope (a credential with a limit): the catalog filtered name by name, at
    most SCAN_BUDGET names a request."""
    chunk = _Chunk([], None)
    cursor = after
    while chunk.scanned < SCAN_BUDGET:
        n = min(SCAN, SCAN_BUDGET - chunk.scanned)
        names, more = await name_ranges.repos_prefixed(st.registry.meta, prefix, n, cursor)
        chunk.reads += 1
        chunk.scanned += len(names)
        for name in await st.authorizer.pullable(principal, [n for n in names if keep(n)]):
            chunk.names.append(name)
            if len(chunk.names) == PAGE + 1:
                chunk.upto = name
                return chunk
        if not more or not names:
            return chunk
        cursor = names[-1]
    chunk.upto = cursor
    return chunk


def _validated_after(after: str | None) -> str | None:
    return after[: MAX_QUERY * 2] if after else None


async def page(
    st: AppState, principal: Principal, query: str, after: str | None, contains: bool
) -> Listing:
    """One page of the repositories `principal` may pull, after `after`: those that start
    with `query` (a key range), or (`contains`) whose name holds it anywhere."""
    after = _validated_after(after)
    needle = query.lower()
    prefix = "" if contains else query
    keep = (lambda name: needle in name) if contains and needle else None
    scope = await st.authorizer.pull_scope(principal)
    want = PAGE + 1  # one more than a page: whether there is a next one
    if scope is None:
        chunks = [await _filtered(st, principal, prefix, after, keep or (lambda _: True))]
    else:
        reads = [_read_ranges(st, ranges(scope, prefix), after, want, keep)]
        if scope.public and not scope.everything:
            reads.append(_read_public(st, prefix, after, want, keep))
        chunks = list(await asyncio.gather(*reads))
    bounds = [c.upto for c in chunks if c.upto is not None]
    bound = min(bounds) if bounds else None
    names = sorted({n for c in chunks for n in c.names if bound is None or n <= bound})
    scanned = sum(c.scanned for c in chunks)
    if len(names) > PAGE:
        return Listing(names[:PAGE], names[PAGE - 1], scanned)
    return Listing(names, bound, scanned, partial=bound is not None and len(names) < PAGE)
