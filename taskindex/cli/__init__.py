"""The `taskindex` command: one click group, one module per command group, each command one API call."""

from taskindex.cli.main import cli, main

__all__ = ["cli", "main"]
