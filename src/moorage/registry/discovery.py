"""Content discovery: tag lists, the catalog and referrers, all served from the store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moorage.errors import NameUnknown
from moorage.meta.base import MetaStore
from moorage.oci.digest import parse_digest

#: The most names one tag list or catalog answer holds, with or without `n` (the spec lets
#: a registry cap `n`); the `Link` header leads to the rest. The store is read in pages.
MAX_PAGE = 10000


@dataclass(frozen=True, slots=True)
class Page:
    items: list[str]
    more: bool


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
        self, repo: str, digest: str, artifact_type: str | None
    ) -> list[dict[str, Any]]:
        subject = str(parse_digest(digest))
        found = await self.meta.list_referrers(repo, subject)
        if artifact_type is not None:
            found = [d for d in found if d.get("artifactType") == artifact_type]
        return found


def _limit(n: int | None) -> int:
    if n is None:
        return MAX_PAGE
    return min(n, MAX_PAGE)
