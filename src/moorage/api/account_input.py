"""Input of the accounts admin API (api/accounts.py): names, targets, subjects, passwords
and page parameters, each checked or refused with `Invalid` (a 400 saying what is wrong)."""

from __future__ import annotations

from starlette.requests import Request

from moorage.api.http import decimal
from moorage.errors import NameInvalid, RecordCorrupt
from moorage.meta.account_records import check_account_name
from moorage.oci.names import validate_name

MIN_PASSWORD = 8
MAX_PASSWORD = 1024
MAX_LIST = 1000


class Invalid(ValueError):
    """Bad input (a 400)."""


def name_of(value: object, what: str) -> str:
    if value is None:
        raise Invalid(f"the {what} name is missing")
    try:
        return check_account_name(value, what)
    except RecordCorrupt:
        raise Invalid(
            f"invalid {what} name {str(value)[:80]!r}: 1-64 of a-z 0-9 . _ -, starting and "
            "ending with a letter or digit"
        ) from None


def target_of(value: object) -> str:
    """NAMESPACE or NAMESPACE/REPO."""
    if not isinstance(value, str):
        raise Invalid("'on' must be NAMESPACE or NAMESPACE/REPO")
    try:
        return validate_name(value)
    except NameInvalid as exc:
        raise Invalid(f"invalid target: {exc}") from None


def subject_of(value: object) -> str:
    if not isinstance(value, str):
        raise Invalid("'to' must be user:NAME or team:ORG/TEAM")
    sort, _, rest = value.partition(":")
    if sort == "user":
        return f"user:{name_of(rest, 'user')}"
    if sort == "team":
        org, sep, team = rest.partition("/")
        if sep:
            return f"team:{name_of(org, 'organization')}/{name_of(team, 'team')}"
    raise Invalid(f"'to' must be user:NAME or team:ORG/TEAM, not {value[:80]!r}")


def password_of(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not MIN_PASSWORD <= len(value) <= MAX_PASSWORD:
        raise Invalid(f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in JSON) has no UTF-8 form
        raise Invalid("a password must be valid unicode text (no lone surrogates)") from None
    return value


def flag_of(value: object, name: str) -> bool:
    """A JSON true or false (absent or null: false); "false" or 0 is refused, never read as
    true."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise Invalid(f"{name} must be true or false")
    return value


def page_of(request: Request) -> tuple[int, str | None]:
    raw = request.query_params.get("n") or str(MAX_LIST)
    n = decimal(raw)  # ASCII digits only: str.isdigit() also takes '²', which int() refuses
    if n is None or not 0 < n <= MAX_LIST:
        raise Invalid(f"n must be 1 to {MAX_LIST}")
    last = request.query_params.get("last") or None
    if last is not None and len(last) > 512:
        raise Invalid("last is too long")
    return n, last
