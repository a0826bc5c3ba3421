"""Backups: `backup` (create), `backup inspect`, `backup verify`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from moorage.cli.base import Failed, Group, emit
from moorage.cli.options import (
    admin_client,
    ca_file_option,
    ca_fingerprint_option,
    check_writable,
    json_option,
    passphrase,
    passphrase_option,
    password_option,
    storage_arg,
    username_option,
)


@click.group(cls=Group, invoke_without_command=True)
@click.option("--existing", default=None, help="URL of a replica (a comma-separated list).")
@ca_file_option
@ca_fingerprint_option
@username_option()
@password_option()
@click.option("--out", "out", default=None, type=click.Path(dir_okay=False), help="Archive.")
@click.option("--include-blobs", is_flag=True, help="Also store layer and config blobs.")
@click.option(
    "--since",
    default=None,
    type=click.Path(dir_okay=False, exists=True),
    help="Previous backup: store only blobs it (and its bases) lack.",
)
@click.option(
    "--storage",
    "storage",
    default=None,
    type=click.Path(file_okay=False),
    help="Local path of the cluster's blob storage, if it differs from the cluster's own "
    "(bytes are read from there; without it, through the API).",
)
@passphrase_option
@json_option
@click.pass_context
def backup(
    ctx: click.Context,
    existing: str | None,
    username: str,
    password: str | None,
    out: str | None,
    include_blobs: bool,
    since: str | None,
    storage: str | None,
    passphrase_file: str | None,
    as_json: bool,
) -> None:
    """Consistent online backup (`backup inspect FILE`, `backup verify FILE` check one)."""
    if ctx.invoked_subcommand is not None:
        return
    from moorage.recovery.backup import create

    if not existing or not out:
        raise click.UsageError("moorage backup needs --existing URL and --out FILE")
    client = admin_client(existing, username, password)
    check_writable(out, "--out")  # before reading the whole metadata, not after
    bar: Any = None
    progress = None
    if sys.stderr.isatty() and not as_json:
        bar = click.progressbar(length=1, label="backing up", file=sys.stderr)

        def progress(done: int, total: int) -> None:
            bar.length = max(total, 1)
            bar.update(done - bar.pos)

    try:
        result = create(
            client,
            Path(out),
            include_blobs,
            Path(since) if since else None,
            progress,
            passphrase(passphrase_file),
            storage_arg(storage) if storage else None,
        )
    finally:
        if bar is not None:
            bar.render_finish()
    for line in result.invalid_records:
        click.echo(f"warning: left out of the backup, invalid: {line}", err=True)
    emit(as_json, result.to_json(), result.text())


@backup.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@passphrase_option
@json_option
def backup_inspect(file: str, passphrase_file: str | None, as_json: bool) -> None:
    """Version, cluster id, revision, counts, size and creation time of a backup."""
    from moorage.recovery.backup import inspect

    info = inspect(Path(file), passphrase(passphrase_file))
    emit(as_json, info.to_json(), info.text())


@backup.command("verify")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.option("--storage", default=None, help="Blob storage to check referenced blobs in.")
@passphrase_option
@json_option
def backup_verify(
    file: str, storage: str | None, passphrase_file: str | None, as_json: bool
) -> None:
    """Check every checksum and every reference (tag -> manifest -> blobs)."""
    from moorage.recovery.backup import verify

    report = verify(
        Path(file), storage_arg(storage) if storage else None, passphrase(passphrase_file)
    )
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    elif report.ok:
        click.echo(report.text(file))
    if not report.ok:
        raise Failed(report.failure(file))


COMMANDS = [backup]
