"""Repository names and tags, as the distribution spec defines them.

Always `fullmatch`: `$` also matches before a trailing newline, so `re.match(r"^...$")`
would accept `"tag\n"`.
"""

from __future__ import annotations

import re

from moorage.errors import NameInvalid

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
MAX_NAME_LENGTH = 255


def validate_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH:
        raise NameInvalid(f"repository name is longer than {MAX_NAME_LENGTH} characters")
    if not _NAME.fullmatch(name):
        raise NameInvalid(
            f"invalid repository name {name[:100]!r}: use lowercase letters, digits and "
            "separators (. _ __ -) in components joined by /"
        )
    return name


def namespace_of(name: str) -> str:
    """The namespace of a repository name (or of a policy or grant target): its first
    component, e.g. `acme` of `acme/app`."""
    return name.split("/", 1)[0]


def is_valid_tag(tag: str) -> bool:
    return bool(_TAG.fullmatch(tag))
