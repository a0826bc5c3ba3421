"""The typed results of `moorage backup` (`BackupResult`), `backup inspect`
(`BackupInspection`) and `backup verify` (`VerifyReport`), each with its one JSON form
(`to_json()`, what `--json` prints) and its text next to it."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BackupResult:
    """The archive a backup wrote (`recovery.backup.create`)."""

    file: str
    size: int
    cluster_id: str
    epoch: int
    revision: int
    counts: dict[str, int]
    base: str | None
    blobs_in_archive: int
    manifests_in_archive: int
    blobs_from_base: int
    manifests_from_base: int
    encrypted: bool
    source: str  # where the bytes came from: "storage" or "http"
    storage: str | None
    invalid_records: list[str]  # left out of the backup (the CLI warns about each)

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "size": self.size,
            "cluster_id": self.cluster_id,
            "epoch": self.epoch,
            "revision": self.revision,
            "counts": self.counts,
            "base": self.base,
            "blobs_in_archive": self.blobs_in_archive,
            "manifests_in_archive": self.manifests_in_archive,
            "blobs_from_base": self.blobs_from_base,
            "manifests_from_base": self.manifests_from_base,
            "encrypted": self.encrypted,
            "source": self.source,
            "storage": self.storage,
            "invalid_records": self.invalid_records,
        }

    def text(self) -> str:
        c = self.counts
        return (
            f"backup {self.file}: cluster {self.cluster_id} at revision {self.revision}, "
            f"{c['repositories']} repositories, {c['tags']} tags, {c['manifests']} manifests, "
            f"{self.blobs_in_archive} blobs in the archive"
            + (f" ({self.blobs_from_base} in {self.base})" if self.base else "")
            + f", {self.size} bytes; {c.get('users', 0)} users, "
            f"{c.get('access_tokens', 0)} access tokens"
        )


@dataclass(frozen=True)
class BackupInspection:
    """What an archive's header says (`recovery.backup_verify.inspect`)."""

    file: str
    version: int
    cluster_id: str
    epoch: int
    revision: int
    created_at: float
    counts: dict[str, int]
    include_blobs: bool
    blobs_in_archive: int  # layer and config blobs
    manifests_in_archive: int
    base: str | None
    size: int
    encrypted: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "version": self.version,
            "cluster_id": self.cluster_id,
            "epoch": self.epoch,
            "revision": self.revision,
            "created_at": self.created_at,
            "counts": self.counts,
            "include_blobs": self.include_blobs,
            "blobs_in_archive": self.blobs_in_archive,
            "manifests_in_archive": self.manifests_in_archive,
            "base": self.base,
            "size": self.size,
            "encrypted": self.encrypted,
        }

    def text(self) -> str:
        created = datetime.datetime.fromtimestamp(self.created_at, datetime.UTC).isoformat()
        return "\n".join(
            [
                f"file:        {self.file} ({self.size} bytes)",
                f"version:     {self.version}",
                f"cluster id:  {self.cluster_id} (epoch {self.epoch})",
                f"revision:    {self.revision}",
                f"created at:  {created}",
                "counts:      " + ", ".join(f"{k} {v}" for k, v in self.counts.items()),
                f"blobs:       {self.blobs_in_archive} in the archive"
                + (f", the rest in base {self.base}" if self.base else ""),
            ]
        )


@dataclass(frozen=True)
class VerifyReport:
    """The verification of an archive and its chain (`recovery.backup_verify.verify`).
    `corrupt`: the archive or its chain cannot be trusted (a restore refuses it); then
    the checks past the checksums did not run and `archives`, `blobs_checked` and `counts`
    are None (and absent from the JSON form)."""

    file: str
    ok: bool
    corrupt: bool
    problems: list[str]
    missing_blobs: list[str]
    archives: list[str] | None = None
    blobs_checked: bool | None = None
    counts: dict[str, int] | None = None
    notes: list[str] | None = None  # valid but worth knowing (not problems: ok stays true)

    @classmethod
    def of(cls, report: dict[str, Any]) -> VerifyReport:
        """The typed report of `verify_plain`'s (which restore reads, with `held`)."""
        return cls(
            file=report["file"],
            ok=report["ok"],
            corrupt=report["corrupt"],
            problems=report["problems"],
            missing_blobs=report["missing_blobs"],
            archives=report.get("archives"),
            blobs_checked=report.get("blobs_checked"),
            counts=report.get("counts"),
            notes=report.get("notes"),
        )

    def to_json(self) -> dict[str, Any]:
        if self.corrupt:
            return {
                "file": self.file,
                "ok": self.ok,
                "corrupt": self.corrupt,
                "problems": self.problems,
                "missing_blobs": self.missing_blobs,
            }
        return {
            "file": self.file,
            "ok": self.ok,
            "corrupt": self.corrupt,
            "archives": self.archives,
            "problems": self.problems,
            "missing_blobs": self.missing_blobs,
            "blobs_checked": self.blobs_checked,
            "counts": self.counts,
            "notes": self.notes or [],
        }

    def text(self, label: str) -> str:
        """The good news, naming the archive as the operator did (`label`)."""
        return (
            f"{label}: OK (checksums and references"
            + ("" if self.blobs_checked else "; blob bytes not checked: give --storage")
            + ")"
            + "".join(f"\n  note: {n}" for n in (self.notes or [])[:20])
        )

    def failure(self, label: str) -> str:
        """The problems, naming the archive as the operator did (`label`)."""
        return f"{label}: {len(self.problems)} problem(s):\n  " + "\n  ".join(self.problems)
