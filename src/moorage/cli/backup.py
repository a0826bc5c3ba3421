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
    json_option,
    passphrase,
    passphrase_option,
    password_option,
    username_option,
)


@click.group(cls=Group, invoke_without_command=True)
@click.option("--existing", default=None, help="URL of a replica (a comma-separated list).")
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
    bar: Any = None
    progress = None
    if sys.stderr.isatty() and not as_json:
        bar = click.progressbar(length=1, label="backing up", file=sys.stderr)

        def progress(done: int, total: int) -> None:
            bar.length = max(total, 1)
            bar.update(done - bar.pos)

    try:
        doc = create(
            client,
            Path(out),
            include_blobs,
            Path(since) if since else None,
            progress,
            passphrase(passphrase_file),
            Path(storage) if storage else None,
        )
    finally:
        if bar is not None:
            bar.render_finish()
    for line in doc["invalid_records"]:
        click.echo(f"warning: left out of the backup, invalid: {line}", err=True)
    c = doc["counts"]
    emit(
        as_json,
        doc,
        f"backup {doc['file']}: cluster {doc['cluster_id']} at revision {doc['revision']}, "
        f"{c['repositories']} repositories, {c['tags']} tags, {c['manifests']} manifests, "
        f"{doc['blobs_in_archive']} blobs in the archive"
        + (f" ({doc['blobs_from_base']} in {doc['base']})" if doc["base"] else "")
        + f", {doc['size']} bytes",
    )


@backup.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@passphrase_option
@json_option
def backup_inspect(file: str, passphrase_file: str | None, as_json: bool) -> None:
    """Version, cluster id, revision, counts, size and creation time of a backup."""
    import datetime

    from moorage.recovery.backup import inspect

    doc = inspect(Path(file), passphrase(passphrase_file))
    created = datetime.datetime.fromtimestamp(doc["created_at"], datetime.UTC).isoformat()
    lines = [
        f"file:        {doc['file']} ({doc['size']} bytes)",
        f"version:     {doc['version']}",
        f"cluster id:  {doc['cluster_id']} (epoch {doc['epoch']})",
        f"revision:    {doc['revision']}",
        f"created at:  {created}",
        "counts:      " + ", ".join(f"{k} {v}" for k, v in doc["counts"].items()),
        f"blobs:       {doc['blobs_in_archive']} in the archive"
        + (f", the rest in base {doc['base']}" if doc["base"] else ""),
    ]
    emit(as_json, doc, "\n".join(lines))


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

    doc = verify(Path(file), Path(storage) if storage else None, passphrase(passphrase_file))
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    elif doc["ok"]:
        click.echo(
            f"{file}: OK (checksums and references"
            + ("" if doc.get("blobs_checked") else "; blob bytes not checked: give --storage")
            + ")"
        )
    if not doc["ok"]:
        raise Failed(
            f"{file}: {len(doc['problems'])} problem(s):\n  " + "\n  ".join(doc["problems"])
        )


COMMANDS = [backup]
