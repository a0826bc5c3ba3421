"""What every command shares: the failure exception, the one place domain errors become CLI
failures, and how a result is printed (text, or `--json`).

Besides domain errors, a group turns one narrow kind of OSError into a failure: a file or
directory the user named that cannot be made, read or written (it has a file name and an
errno of that kind), a line saying which and why rather than a traceback. Any other
exception still ends in a traceback: it is a bug to fix, not a message to read."""

from __future__ import annotations

import errno
import json
import urllib.parse
from typing import Any

import click

from moorage.errors import MoorageError

#: The errnos of a path the user gave that cannot be used: their problem to fix, not a bug.
PATH_ERRNOS = frozenset(
    {
        errno.ENOENT,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EEXIST,
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.ENAMETOOLONG,
        errno.ELOOP,
    }
)


class Failed(click.ClickException):
    """An operation failed: message on stderr, exit code 1."""

    exit_code = 1


class Command(click.Command):
    """A command whose domain errors (MoorageError) end it as `Failed` with their message."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MoorageError as exc:
            raise Failed(str(exc)) from None


def path_failure(exc: OSError) -> Failed | None:
    """The failure of a path that cannot be used (`PATH_ERRNOS`, with its file name), or None
    for any other OSError (left to end in a traceback)."""
    if exc.filename is None or exc.errno not in PATH_ERRNOS:
        return None
    where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
    return Failed(
        f"cannot use {where}: {exc.strerror or exc}; check that it exists (for a file to "
        "create, its directory) and that this user may use it, or choose another path"
    )


class Group(click.Group):
    """A group whose own callback's domain errors become `Failed`; its commands are `Command`s
    and its subgroups `Group`s. The top group (`moorage`) is one: every command's path
    errors (`path_failure`) end as one line too."""

    command_class = Command
    group_class = type

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MoorageError as exc:
            raise Failed(str(exc)) from None
        except OSError as exc:
            failure = path_failure(exc)
            if failure is None:
                raise
            raise failure from None


def path_segment(value: str) -> str:
    """`value` (a name or id the user typed) as one segment of a request path: every
    character but letters, digits and `_.-~` percent-encoded, and `.`/`..` too, so that it
    can neither leave its segment (`/`, `?`, `#`) nor climb out of it (`..`)."""
    quoted = urllib.parse.quote(value, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


def emit(as_json: bool, doc: Any, text: str) -> None:
    """Print a command's result: its JSON form with --json, else its text."""
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(text)


def setup_logging(log_format: str = "text", replica: str | None = None) -> None:
    """Log lines on stderr, as text or JSON (`moorage.logs`); MOORAGE_LOG_LEVEL sets the level."""
    from moorage import logs

    logs.configure(log_format, replica)
