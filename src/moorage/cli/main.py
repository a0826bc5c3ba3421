"""`moorage` commands. Exit codes: 0 success, 1 operation failed, 2 bad usage.

The `main` group gathers the commands of each group module: replica lifecycle
(`cli/replica.py`), cluster membership (`cli/membership.py`), status (`cli/status.py`),
recovery (`cli/recovery.py`), backups (`cli/backup.py`), the CA (`cli/ca.py`) and join
tokens (`cli/join_tokens.py`).
Shared options are in `cli/options.py`; domain errors become CLI failures in one place,
`cli/base.py`."""

from __future__ import annotations

import click

from moorage import __version__
from moorage.cli import access_tokens as token_commands
from moorage.cli import (
    accounts,
    backup,
    ca,
    certs,
    gc,
    join_tokens,
    membership,
    policies,
    recovery,
    replica,
    status,
    token_keys,
)
from moorage.cli import audit as audit_log
from moorage.cli.base import Failed, Group
from moorage.cli.status import STATUS_EXIT_CODES, status_text

__all__ = ["STATUS_EXIT_CODES", "Failed", "main", "status_text"]


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="moorage")
def main() -> None:
    """Moorage: a private container registry that runs as a cluster of replicas."""


for _group in (
    replica,
    membership,
    status,
    recovery,
    backup,
    ca,
    join_tokens,
    certs,
    accounts,
    token_commands,
    token_keys,
    audit_log,
    gc,
    policies,
):
    for _command in _group.COMMANDS:
        main.add_command(_command)
