"""The results commands: store measured errors of (task, model) pairs in an index, and list them."""

from __future__ import annotations

import click

from taskindex.cli.output import api_errors, json_output, table
from taskindex.shipped import default_index_path


@click.group(name="results")
def results_group():
    """The measured errors of experts on tasks that an index remembers.

    Example:

    \b
        taskindex results add my.index errors.csv
        taskindex results ls my.index --json
    """


@results_group.command(name="add")
@click.argument("index")
@click.argument("file", type=click.Path())
@click.option("--replace", is_flag=True, help="Replace results the index already holds for the same pairs.")
@json_output(lambda r: click.echo(f"{r['results']} results, version {r['version']}"))
@api_errors
def results_add(index, file, replace):
    """Store the errors in FILE (.csv or .parquet: task, model, error, any other columns) in INDEX.

    Example:

    \b
        taskindex results add my.index errors.csv
        taskindex results add my.index seed1.parquet --replace --json
    """
    from taskindex.index import TaskIndex

    with TaskIndex.open(index) as idx:
        return {"results": idx.add_results(file, replace=replace), "version": idx.version}


@results_group.command(name="ls")
@click.argument("index", required=False)
@json_output(lambda rows: table(rows, list(rows[0]) if rows else ["task", "model", "error"]))
@api_errors
def results_ls(index):
    """List the results INDEX holds (default: the shipped index).

    Example:

    \b
        taskindex results ls my.index
        taskindex results ls --json
    """
    import json

    from taskindex.index import TaskIndex

    with TaskIndex.open(index or default_index_path(), readonly=True) as idx:
        return json.loads(idx.results().to_json(orient="records"))


COMMANDS = [results_group]
