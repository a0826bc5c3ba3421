"""Content discovery: tag lists, the catalog and referrers, all served from the store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moorage.errors import NameUnknown
from moorage.meta.base import MetaStore
from moorage.meta.referrers import referrers_page
from moorage.oci.digest import parse_digest

#: The most names one tag list or catalog answer holds, with or without `n` (the spec lets
#: a registry cap `n`); the `Link` header leads to the rest. The store is read in pages.
MAX_PAGE = 10000
#: The most descriptors, and bytes of them, one referrers answer holds (`n` lowers the
#: count): a subject's referrers can be many and large (annotations); `Link` leads on.
REFERRERS_PAGE = 1000
REFERRERS_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Page:
    items: list[str]
    more: bool


@dataclass(frozen=True, slots=True)
class ReferrersPage:
    descriptors: list[dict[str, Any]]
    #: The referrer digest the next page starts after (its `last`), None at the end.
    following: str | None


class Discovery:
    def __init__(self, meta: MetaStore) -> None:
        self.meta = meta

    async def tags(self, repo: str, n: int | None, last: str | None) -> Page:
        items, more = await self.meta.list_tags(repo, _limit(n), last)
        if not items and not await self.meta.repo_exists(repo):
            raise NameUnknown(f"repository {repo} is not known to this registry")
        return Page(items, more)

    async def catalog(self, n: int | None, last: str | None) -> Page:
        items, more = await self.meta.list_repos(_limit(n), last)
        return Page(items, more)

    async def referrers(
        self,
        repo: str,
        digest: str,
        artifact_type: str | None,
        n: int | None = None,
        last: str | None = None,
    ) -> ReferrersPage:
        """One page of `digest`'s referrers after the referrer digest `last`: at most `n`
        (capped at REFERRERS_PAGE) and REFERRERS_BYTES of descriptors. A filter applies
        to each page, so a page may come out short, even empty, with more to come."""
        subject = str(parse_digest(digest))
        after = str(parse_digest(last)) if last is not None else None
        limit = REFERRERS_PAGE if n is None else min(n, REFERRERS_PAGE)
        if limit == 0:
            return ReferrersPage([], None)
        found, following = await referrers_page(
            self.meta, repo, subject, limit, REFERRERS_BYTES, after
        )
        if artifact_type is not None:
            found = [d for d in found if d.get("artifactType") == artifact_type]
        return ReferrersPage(found, following)


def _limit(n: int | None) -> int:
    if n is None:
        return MAX_PAGE
    return min(n, MAX_PAGE)
