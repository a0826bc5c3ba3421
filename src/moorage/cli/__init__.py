"""The `moorage` command line (the only package that imports click)."""

from moorage.cli.main import main

__all__ = ["main"]
