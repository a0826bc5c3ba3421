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
from dataclasses import dataclass
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

    async def plan(self, target: str | None = None, now: float | None = None) -> list[Doomed]:
        """What applying retention would delete now (a dry run), oldest first per repository."""
        now = time.time() if now is None else now
        out: list[Doomed] = []
        for repo in await self._scope(target):
            applicable = await self.policies.applicable(repo)
            rule = applicable.retention
            if rule is None:
                continue
            tags = await self.policies.tags(repo)
            immutable = {name for name, _, _ in tags if applicable.immutable_rule(name)}
            out += doomed_tags(repo, tags, rule, immutable, now)
        return out

    async def apply(
        self, target: str | None = None, actor: str = "moorage", client: str | None = None
    ) -> tuple[list[Doomed], list[Doomed]]:
        """Delete what `plan` finds: (deleted, skipped: changed since, or immutable now)."""
        deleted: list[Doomed] = []
        skipped: list[Doomed] = []
        for doomed in await self.plan(target):
            notice = self.manifests.on_delete
            also = await notice(doomed.repo, "", doomed.tag, actor) if notice else ()
            try:
                done = await self.manifests.untag(doomed.repo, doomed.tag, doomed.revision, also)
            except TagImmutable:
                done = False
            if not done:
                skipped.append(doomed)
                continue
            deleted.append(doomed)
            await self.audit.record(
                AuditEvent(
                    "retention.delete",
                    actor,
                    f"{doomed.repo}:{doomed.tag}",
                    client=client,
                    detail={"digest": doomed.digest, "rule": doomed.rule},
                )
            )
        return deleted, skipped
