"""The `taskindex` click group and its entry point: each command module's commands registered on it.

Every command is one API call plus printing (taskindex.cli.output); user mistakes (TaskIndexError) become one
line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import click

from taskindex import __version__
from taskindex.cli import embedding, index, model2vec, plot, rebuild, results, search, versions

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="taskindex")
def cli():
    """taskindex: embed image-classification tasks with TASK2VEC and compare them.

    Example:

    \b
        taskindex query --name fashion-footwear -k 5
        taskindex select sample:mnist-round -k 3
        taskindex ls --kind model
    """


for module in (embedding, index, versions, search, model2vec, results, plot, rebuild):
    for command in module.COMMANDS:
        cli.add_command(command)


def main():
    cli()
