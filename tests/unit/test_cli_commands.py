"""`moorage`'s command table (cli/main.py COMMAND_MODULES) names every command of every
`moorage.cli` module's COMMANDS, and only those: a command missing from the table would
vanish from the CLI, since modules are imported only for the commands the table lists."""

from __future__ import annotations

import importlib
import pkgutil

import moorage.cli
from moorage.cli.main import COMMAND_MODULES, main


def test_the_table_lists_every_command_of_every_cli_module() -> None:
    declared: dict[str, str] = {}
    for info in pkgutil.iter_modules(moorage.cli.__path__):
        module = importlib.import_module(f"moorage.cli.{info.name}")
        for command in getattr(module, "COMMANDS", []):
            assert command.name not in declared, (command.name, info.name)
            declared[command.name] = info.name
    assert declared == COMMAND_MODULES


def test_each_command_loads_from_its_module() -> None:
    import click

    ctx = click.Context(main)
    assert main.list_commands(ctx) == sorted(COMMAND_MODULES)
    for name in COMMAND_MODULES:
        command = main.get_command(ctx, name)
        assert command is not None
        assert command.name == name
        assert main.commands[name] is command
    assert main.get_command(ctx, "no-such-command") is None
