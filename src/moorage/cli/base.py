"""What every command shares: the failure exception, the one place domain errors become CLI
failures, and how a result is printed (text, or `--json`)."""

from __future__ import annotations

import json
from typing import Any

import click

from moorage.errors import MoorageError


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


class Group(click.Group):
    """A group whose own callback's domain errors become `Failed`; its commands are `Command`s
    and its subgroups `Group`s."""

    command_class = Command
    group_class = type

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MoorageError as exc:
            raise Failed(str(exc)) from None


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
