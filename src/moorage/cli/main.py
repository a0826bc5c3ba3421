"""`moorage` commands. Exit codes: 0 success, 1 operation failed, 2 bad usage.

The `main` group gathers the commands of each group module: replica lifecycle
(`cli/replica.py`), cluster membership (`cli/membership.py`), status (`cli/status.py`),
recovery (`cli/recovery.py`), backups (`cli/backup.py`), the CA (`cli/ca.py`) and join
tokens (`cli/join_tokens.py`), and the others of `COMMAND_MODULES`.
Shared options are in `cli/options.py`; domain errors become CLI failures in one place,
`cli/base.py`.

A command's module is imported when the command runs (`LazyGroup`): every `moorage`
process pays for the imports of its own command only, not for all of them."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import click

from moorage import __version__
from moorage.cli.base import Failed, Group

if TYPE_CHECKING:
    from moorage.cli.status import STATUS_EXIT_CODES, status_text

__all__ = ["COMMAND_MODULES", "STATUS_EXIT_CODES", "Failed", "main", "status_text"]


def __getattr__(name: str) -> Any:
    """`STATUS_EXIT_CODES` and `status_text` of `cli/status.py`, imported on first use (a
    command other than `status` does not pay for that module)."""
    if name in ("STATUS_EXIT_CODES", "status_text"):
        return getattr(importlib.import_module("moorage.cli.status"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Each top-level command and the module of `moorage.cli` whose COMMANDS list has it.
COMMAND_MODULES = {
    **dict.fromkeys(("run", "install", "start", "stop", "destroy"), "replica"),
    **dict.fromkeys(("join", "remove"), "membership"),
    "status": "status",
    **dict.fromkeys(("repair", "emergency-repair", "restore"), "recovery"),
    "backup": "backup",
    "ca": "ca",
    "join-token": "join_tokens",
    "certs": "certs",
    **dict.fromkeys(("user", "org", "team", "grant", "revoke", "grants", "repo"), "accounts"),
    "token": "access_tokens",
    "token-keys": "token_keys",
    "audit": "audit",
    "gc": "gc",
    "policy": "policies",
    "webhook": "webhooks",
}


def load_command(name: str) -> click.Command:
    module = importlib.import_module(f"moorage.cli.{COMMAND_MODULES[name]}")
    command: click.Command = next(c for c in module.COMMANDS if c.name == name)
    return command


class LazyGroup(Group):
    """`Group` whose commands are imported on first use (`get_command`); `commands`, the
    whole table, imports every module (for --help walks and tests)."""

    @property  # type: ignore[override]
    def commands(self) -> dict[str, click.Command]:
        for name in COMMAND_MODULES:
            if name not in self._loaded:
                self._loaded[name] = load_command(name)
        return self._loaded

    @commands.setter
    def commands(self, value: dict[str, click.Command]) -> None:
        self._loaded = dict(value)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMAND_MODULES:
            return None
        if cmd_name not in self._loaded:
            self._loaded[cmd_name] = load_command(cmd_name)
        return self._loaded[cmd_name]


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="moorage")
def main() -> None:
    """Moorage: a private container registry that runs as a cluster of replicas."""
