"""What a garbage collection was asked to do (`GcOptions`) and what it did (`GcResult`): the
counts and bytes, complete, and the repositories and digests, listed up to a bound (the
result is kept in one etcd value and served whole)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class GcOptions:
    dry_run: bool = False
    grace: float = 24 * 3600.0
    untagged: bool = False


#: Digests a result lists (all repositories together at most this many; the counts and
#: bytes are always complete).
MAX_LISTED = 2_000
#: Repositories a result lists: those that free the most bytes (the store keeps the result
#: in one etcd value; 50,000 repositories would not fit).
MAX_REPOSITORIES = 1_000


@dataclass
class RepoUsage:
    blobs: int = 0
    bytes: int = 0
    manifests: int = 0
    digests: list[str] = field(default_factory=list)  # blobs, then manifests (up to a cap)


@dataclass
class GcResult:
    run: str
    dry_run: bool
    grace: float
    untagged: bool
    started_at: float
    finished_at: float = 0.0
    revision: int = 0
    blobs: int = 0  # deleted (a dry run: would be)
    bytes: int = 0  # freed: bytes of files actually deleted (a dry run: would be)
    manifests: int = 0
    rescued: int = 0  # candidates found in use after their tombstone
    repositories: dict[str, RepoUsage] = field(default_factory=dict)
    listed: int = 0

    def add(self, repo: str, digest: str, size: int, manifest: bool = False) -> None:
        usage = self.repositories.setdefault(repo, RepoUsage())
        if manifest:
            usage.manifests += 1
        else:
            usage.blobs += 1
            usage.bytes += size
        if self.listed < MAX_LISTED:
            usage.digests.append(digest)
            self.listed += 1

    @property
    def duration(self) -> float:
        return max(0.0, self.finished_at - self.started_at)

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "dry_run": self.dry_run,
            "grace": self.grace,
            "untagged": self.untagged,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration": round(self.duration, 3),
            "revision": self.revision,
            "blobs": self.blobs,
            "bytes": self.bytes,
            "manifests": self.manifests,
            "rescued": self.rescued,
            "repositories": {repo: asdict(self.repositories[repo]) for repo in self._listed()},
            "repository_count": len(self.repositories),
            "repositories_truncated": len(self.repositories) > MAX_REPOSITORIES,
            "digests_truncated": self.listed >= MAX_LISTED,
        }

    def _listed(self) -> list[str]:
        """The repositories listed, by name: those freeing the most (bytes, then items)."""

        def most(repo: str) -> tuple[int, int, str]:
            u = self.repositories[repo]
            return (-u.bytes, -(u.blobs + u.manifests), repo)

        return sorted(sorted(self.repositories, key=most)[:MAX_REPOSITORIES])
