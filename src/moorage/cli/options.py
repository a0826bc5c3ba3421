"""Options shared by several commands, each declared once."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from moorage.cli.confirm import confirm_options
from moorage.config import (
    DEFAULT_ETCD_CLIENT_PORT,
    DEFAULT_ETCD_HOST,
    DEFAULT_ETCD_PEER_PORT,
    split_addr,
)
from moorage.errors import MoorageError

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "admin_client",
    "admin_options",
    "check_http_addr",
    "confirm_options",
    "data_dir_option",
    "etcd_host_option",
    "json_option",
    "passphrase",
    "passphrase_option",
    "password_option",
    "ports_options",
    "username_option",
]

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def data_dir_option(help: str) -> Callable[[F], F]:
    """`--data-dir DIR` (required, one directory)."""
    return click.option("--data-dir", required=True, type=click.Path(file_okay=False), help=help)


def ports_options(fn: F) -> F:
    fn = click.option(
        "--etcd-peer-port",
        type=click.IntRange(1, 65535),
        default=None,
        help=f"etcd peer port (default {DEFAULT_ETCD_PEER_PORT}).",
    )(fn)
    fn = click.option(
        "--etcd-client-port",
        type=click.IntRange(1, 65535),
        default=None,
        help=f"etcd client port (default {DEFAULT_ETCD_CLIENT_PORT}).",
    )(fn)
    return fn


etcd_host_option = click.option(
    "--etcd-host",
    default=DEFAULT_ETCD_HOST,
    show_default=True,
    help="Address this replica's etcd member listens on and advertises to its peers "
    "(and to other replicas as a client URL); use the host's address on a multi-host "
    "cluster.",
)


def check_http_addr(value: str | None) -> str | None:
    """A HOST:PORT given on the command line, or a usage error."""
    if value is None:
        return None
    try:
        split_addr(value)
    except MoorageError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def username_option(help: str = "Admin user (or MOORAGE_USERNAME).") -> Callable[[F], F]:
    return click.option(
        "--username", envvar="MOORAGE_USERNAME", default="admin", show_default=True, help=help
    )


def password_option(help: str = "Admin password (or MOORAGE_PASSWORD).") -> Callable[[F], F]:
    return click.option("--password", envvar="MOORAGE_PASSWORD", default=None, help=help)


def admin_options(fn: F) -> F:
    """`--existing URLS --username U --password P` of the commands that talk to a cluster."""
    fn = password_option()(fn)
    fn = username_option()(fn)
    fn = click.option(
        "--existing",
        required=True,
        help="URL of a replica of the cluster; a comma-separated list is tried in turn.",
    )(fn)
    return fn


def admin_client(existing: str, username: str, password: str | None) -> Any:
    """The admin API client of `--existing`, or a usage error."""
    from moorage.recovery.client import AdminClient, split_urls

    if password is None:
        raise click.UsageError("give the admin password with --password or MOORAGE_PASSWORD")
    try:
        return AdminClient(split_urls(existing), username, password)
    except MoorageError as exc:
        raise click.UsageError(str(exc)) from None


passphrase_option = click.option(
    "--passphrase-file",
    default=None,
    type=click.Path(dir_okay=False, exists=True),
    help="File holding the backup passphrase (or MOORAGE_BACKUP_PASSPHRASE).",
)


def passphrase(passphrase_file: str | None) -> str | None:
    """The passphrase from the subcommand's --passphrase-file, else from the one given to the
    `backup` group (`backup --passphrase-file F inspect X`), else the environment."""
    if passphrase_file is None:
        ctx = click.get_current_context(silent=True)
        while ctx is not None and passphrase_file is None:
            passphrase_file = ctx.params.get("passphrase_file")
            ctx = ctx.parent
    if passphrase_file:
        text = Path(passphrase_file).read_text().strip()
        if not text:
            raise click.UsageError(f"{passphrase_file} is empty")
        return text
    return os.environ.get("MOORAGE_BACKUP_PASSPHRASE") or None
