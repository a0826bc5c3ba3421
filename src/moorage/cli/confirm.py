"""The one confirmation step of every command that deletes or replaces state.

`destroy`, `remove`, `repair`, `restore` and `emergency-repair` compute their plan first (what
they will stop, delete or replace, what is kept, what could be lost), then call `confirm`:

- `--dry-run`: the plan is printed (`--json`: as JSON) and the command exits 0, changing nothing;
- `--yes`: the plan is printed and the command proceeds;
- otherwise, on a terminal, `Proceed? [y/N]` is asked (anything but y/yes changes nothing,
  exit 1); without a terminal the command refuses (exit 1) and says to add `--yes` or
  `--dry-run`.

With `--json` the plan text goes to stderr so that stdout holds the result's JSON alone.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click


def confirm_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add `--dry-run` and `--yes` (the command takes `dry_run` and `yes`)."""
    fn = click.option(
        "--yes",
        is_flag=True,
        help="Do not ask 'Proceed? [y/N]': carry out the printed plan at once (required "
        "without a terminal).",
    )(fn)
    fn = click.option(
        "--dry-run",
        is_flag=True,
        help="Only print the plan (with --json: as JSON) and change nothing.",
    )(fn)
    return fn


def confirm(
    command: str, text: str, plan: dict[str, Any], *, yes: bool, dry_run: bool, as_json: bool
) -> None:
    """Print `text` (the plan); return when the command may proceed, else exit."""
    if dry_run:
        if as_json:
            click.echo(json.dumps({**plan, "dry_run": True}, indent=2))
        else:
            click.echo(text)
            click.echo("dry run: nothing was changed")
        raise click.exceptions.Exit(0)
    click.echo(text, err=as_json)
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.ClickException(
            f"not confirmed: '{command}' deletes or replaces state and asks before it acts, but "
            "stdin is not a terminal. Nothing was changed. Add --yes to carry out the plan "
            "above, or --dry-run to only print it."
        )
    if not click.confirm("Proceed?", default=False, err=as_json):
        click.echo("not confirmed: nothing was changed", err=True)
        raise click.exceptions.Exit(1)
