"""Retention (issue #10 item 2): which tags a repository's policy keeps, and deleting the rest.

A repository's retention is its own policy's, else its namespace's (meta/policy_records.py).
A tag is kept when any of these holds (as in Harbor and Zot, rules add up):

- it is one of the last `keep_last` tags pushed (push time, then store revision: a tag
  recorded before push times were kept counts as older than any that has one);
- it was pushed within `keep_days` days;
- it matches one of the `keep_tags` patterns;
- it is immutable (retention never deletes an immutable tag).

Every other tag is deleted, one guarded transaction each: only while the tag is still the one
the plan read (a tag pushed again since is kept), never an immutable one (the same check a
DELETE gets), journaled like a DELETE, and written to the audit log with the rule. Deleting a
tag frees no bytes by itself: garbage collection does.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from moorage.audit import AuditEvent, AuditSink
from moorage.errors import TagImmutable
from moorage.meta.policies import Policies
from moorage.meta.policy_records import PolicyRecord
from moorage.meta.records import TagRecord
from moorage.registry.manifests import Manifests

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Doomed:
    """A tag the retention of `rule` (a policy target) does not keep."""

    repo: str
    tag: str
    digest: str
    pushed_at: float | None
    revision: int
    rule: str

    def doc(self) -> dict[str, object]:
        return {
            "repo": self.repo,
            "tag": self.tag,
            "digest": self.digest,
            "pushed_at": self.pushed_at,
            "rule": self.rule,
        }


#: Tags an answer lists (the count is always complete): 42,000 tags were a 6.9 MB answer.
LISTED = 1_000


@dataclass
class Listed:
    """How many tags, and the first LISTED of them."""

    count: int = 0
    first: list[Doomed] = field(default_factory=list)

    def add(self, doomed: Doomed) -> None:
        self.count += 1
        if len(self.first) < LISTED:
            self.first.append(doomed)

    @property
    def truncated(self) -> bool:
        return self.count > len(self.first)

    def docs(self) -> list[dict[str, object]]:
        return [d.doc() for d in self.first]


def doomed_tags(
    repo: str,
    tags: list[tuple[str, TagRecord, int]],
    rule: PolicyRecord,
    immutable: set[str],
    now: float,
) -> list[Doomed]:
    """The tags of `repo` that `rule` does not keep (pure: the table tests call it)."""
    newest = sorted(tags, key=lambda t: (t[1].pushed_at or 0.0, t[2]), reverse=True)
    keep = set(immutable)
    if rule.keep_last is not None:
        keep.update(name for name, _, _ in newest[: rule.keep_last])
    if rule.keep_days is not None:
        since = now - rule.keep_days * DAY
        keep.update(name for name, r, _ in tags if r.pushed_at is not None and r.pushed_at >= since)
    if rule.keep_tags:
        keep.update(
            name for name, _, _ in tags if any(fnmatchcase(name, p) for p in rule.keep_tags)
        )
    return [
        Doomed(repo, name, record.digest, record.pushed_at, revision, rule.target)
        for name, record, revision in reversed(newest)
        if name not in keep
    ]


class Retention:
    def __init__(self, manifests: Manifests, audit: AuditSink) -> None:
        self.manifests = manifests
        self.policies: Policies = manifests.policies
        self.audit = audit

    async def _scope(self, target: str | None) -> list[str]:
        """The repositories to look at: `target`'s (a namespace's or one repository), or
        every repository some retention rule covers."""
        if target is not None:
            return await self.policies.repositories(target)
        repos: dict[str, None] = {}
        for record in await self.policies.every():
            if record.has_retention:
                repos.update(dict.fromkeys(await self.policies.repositories(record.target)))
        return list(repos)

    async def _doomed(self, target: str | None, now: float) -> AsyncIterator[list[Doomed]]:
        """What `target`'s retention does not keep now, one repository at a time, oldest
        first (one repository's tags in memory at once, never the whole registry's)."""
        for repo in await self._scope(target):
            applicable = await self.policies.applicable(repo)
            rule = applicable.retention
            if rule is None:
                continue
            tags = await self.policies.tags(repo)
            immutable = {name for name, _, _ in tags if applicable.immutable_rule(name)}
            yield doomed_tags(repo, tags, rule, immutable, now)

    async def plan(self, target: str | None = None, now: float | None = None) -> Listed:
        """What applying retention would delete now (a dry run), oldest first per repository."""
        out = Listed()
        async for doomed in self._doomed(target, time.time() if now is None else now):
            for d in doomed:
                out.add(d)
        return out

    async def apply(
        self, target: str | None = None, actor: str = "moorage", client: str | None = None
    ) -> tuple[Listed, Listed]:
        """Delete what `plan` finds, a repository at a time: (deleted, skipped: changed
        since, or immutable now)."""
        deleted, skipped = Listed(), Listed()
        async for doomed in self._doomed(target, time.time()):
            for d in doomed:
                (deleted if await self._delete(d, actor, client) else skipped).add(d)
        return deleted, skipped

    async def _delete(self, doomed: Doomed, actor: str, client: str | None) -> bool:
        notice = self.manifests.on_delete
        also = await notice(doomed.repo, "", doomed.tag, actor) if notice else ()
        try:
            done = await self.manifests.untag(doomed.repo, doomed.tag, doomed.revision, also)
        except TagImmutable:
            done = False
        if done:
            await self.audit.record(
                AuditEvent(
                    "retention.delete",
                    actor,
                    f"{doomed.repo}:{doomed.tag}",
                    client=client,
                    detail={"digest": doomed.digest, "rule": doomed.rule},
                )
            )
        return done
