"""Repository policy records (issue #10 items 2-5): one `PolicyRecord` per namespace or
repository, validated on the way in and out, and `Applicable`, the two that apply to one
repository. Their reads and writes are in meta/policies.py."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from fnmatch import fnmatchcase
from typing import Any

from moorage.errors import MoorageError, RecordCorrupt
from moorage.meta.records import _build, _fields, dumps
from moorage.oci.names import namespace_of as namespace_of
from moorage.oci.names import validate_name

#: Patterns per list, and the longest pattern: a record stays a small etcd value.
MAX_PATTERNS = 32
MAX_PATTERN = 128
#: A tag pattern: tag characters and the glob's `* ? [ ] !`.
_PATTERN = re.compile(r"[A-Za-z0-9_.\-*?\[\]!]{1,128}")
#: Largest keep-last count and keep-days, and the largest quota (1 EiB).
MAX_KEEP = 1_000_000
MAX_QUOTA = 1 << 60
#: The settings `moorage policy unset` may name.
SETTINGS = ("immutable_tags", "retention", "quota", "allow_sparse")


def check_target(value: object) -> str:
    """NAMESPACE or NAMESPACE/REPO (the repository name grammar); RecordCorrupt otherwise."""
    if not isinstance(value, str):
        raise RecordCorrupt("a policy target must be NAMESPACE or NAMESPACE/REPO")
    try:
        return validate_name(value)
    except MoorageError as exc:
        raise RecordCorrupt(f"invalid policy target: {exc.message}") from None


def check_patterns(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or len(value) > MAX_PATTERNS:
        raise RecordCorrupt(f"{what}: a list of at most {MAX_PATTERNS} tag patterns")
    for pattern in value:
        if not isinstance(pattern, str) or not _PATTERN.fullmatch(pattern):
            raise RecordCorrupt(
                f"{what}: invalid pattern {str(pattern)[:80]!r} (1-{MAX_PATTERN} of tag "
                "characters A-Za-z0-9_.- and the glob characters * ? [ ] !)"
            )
    return tuple(dict.fromkeys(value))


def _count(value: object, what: str, highest: int) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= highest:
        raise RecordCorrupt(f"{what} must be a whole number from 0 to {highest}")
    return value


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    target: str
    immutable_tags: tuple[str, ...] = ()
    keep_last: int | None = None
    keep_days: int | None = None
    keep_tags: tuple[str, ...] = ()
    quota: int | None = None
    allow_sparse: bool | None = None
    updated_at: float = 0.0
    updated_by: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", check_target(self.target))
        object.__setattr__(
            self, "immutable_tags", check_patterns(self.immutable_tags, "immutable tags")
        )
        object.__setattr__(self, "keep_tags", check_patterns(self.keep_tags, "keep tags"))
        _count(self.keep_last, "keep-last", MAX_KEEP)
        _count(self.keep_days, "keep-days", MAX_KEEP)
        _count(self.quota, "quota", MAX_QUOTA)
        if self.quota is not None and "/" in self.target:
            raise RecordCorrupt(
                f"a quota is kept per namespace: set it on {namespace_of(self.target)}, "
                f"not on the repository {self.target}"
            )
        if self.allow_sparse is not None and not isinstance(self.allow_sparse, bool):
            raise RecordCorrupt("allow-sparse must be true or false")
        if not isinstance(self.updated_at, int | float) or isinstance(self.updated_at, bool):
            raise RecordCorrupt("a policy record has an invalid updated_at")
        if not isinstance(self.updated_by, str) or len(self.updated_by) > 256:
            raise RecordCorrupt("a policy record has an invalid updated_by")

    @property
    def has_retention(self) -> bool:
        return self.keep_last is not None or self.keep_days is not None or bool(self.keep_tags)

    @property
    def empty(self) -> bool:
        return not (
            self.immutable_tags
            or self.has_retention
            or self.quota is not None
            or self.allow_sparse is not None
        )

    def doc(self) -> dict[str, Any]:
        out = asdict(self)
        out["immutable_tags"] = list(self.immutable_tags)
        out["keep_tags"] = list(self.keep_tags)
        return out

    def encode(self) -> bytes:
        return dumps(self.doc())

    @classmethod
    def decode(cls, raw: bytes | str) -> PolicyRecord:
        doc = _fields(raw, "policy")
        record: PolicyRecord = _build(cls, doc, "policy")
        return record

    def without(self, names: tuple[str, ...]) -> PolicyRecord:
        """This record with the named settings (of `SETTINGS`) removed."""
        unknown = [n for n in names if n not in SETTINGS]
        if unknown:
            raise RecordCorrupt(f"unknown policy settings {unknown}: use {', '.join(SETTINGS)}")
        changes: dict[str, Any] = {}
        if "immutable_tags" in names:
            changes["immutable_tags"] = ()
        if "retention" in names:
            changes.update(keep_last=None, keep_days=None, keep_tags=())
        if "quota" in names:
            changes["quota"] = None
        if "allow_sparse" in names:
            changes["allow_sparse"] = None
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class Applicable:
    """The policies that apply to one repository, each with the revision it was read at
    (0: absent), so a write can be guarded by them not having changed."""

    namespace: PolicyRecord | None
    repository: PolicyRecord | None
    guards: tuple[tuple[bytes, int], ...]

    def immutable_rule(self, tag: str) -> tuple[str, str] | None:
        """(the target whose rule matches `tag`, the pattern), or None."""
        for record in (self.repository, self.namespace):
            if record is None:
                continue
            for pattern in record.immutable_tags:
                if fnmatchcase(tag, pattern):
                    return record.target, pattern
        return None

    @property
    def allow_sparse(self) -> bool:
        for record in (self.repository, self.namespace):
            if record is not None and record.allow_sparse is not None:
                return record.allow_sparse
        return False

    @property
    def retention(self) -> PolicyRecord | None:
        """The record whose retention applies: the repository's own, else its namespace's."""
        for record in (self.repository, self.namespace):
            if record is not None and record.has_retention:
                return record
        return None


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_size(value: object) -> int:
    """Bytes from `10GiB`, `500MB`, `1.5T` or a whole number of bytes; RecordCorrupt with
    what to write otherwise."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_QUOTA:
        return value
    match = _SIZE.fullmatch(value) if isinstance(value, str) else None
    unit = _UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None or float(match.group(1)) * unit > MAX_QUOTA:
        raise RecordCorrupt(
            f"invalid size {str(value)[:40]!r}: a number of bytes or of KB, MB, GB, TB "
            "(powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. 10GiB"
        )
    return int(float(match.group(1)) * unit)


def show_size(value: int) -> str:
    """`1.5 GiB`-style text of a byte count."""
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{value} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"
