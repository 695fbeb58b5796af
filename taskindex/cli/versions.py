"""The version commands: list an index's versions, restore one as a new commit, repair a lost or damaged CURRENT."""

from __future__ import annotations

import click

from taskindex.cli.output import api_errors, json_output, table, template


def wait_option(f):
    """--wait SECONDS: how long a writing command waits for another writer to finish (default: not at all)."""
    return click.option("--wait", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
                        help="Wait up to SECONDS for another process writing the index (default: fail at once).")(f)


@click.command()
@click.argument("index")
@json_output(lambda rows: table([{**r, "current": "*" if r["current"] else ""} for r in rows],
                                ["version", "time", "rows", "operation", "current"]))
@api_errors
def versions(index):
    """List the versions INDEX holds, oldest first: when each was committed, its rows and what the commit did.

    Example:

    \b
        taskindex versions my.index
        taskindex versions my.index --json
    """
    from taskindex.index.history import versions as listed
    from taskindex.index.storage import Store

    return listed(Store(index))  # works where CURRENT is lost, to choose what to restore or repair


@click.command()
@click.argument("index")
@click.argument("version", type=int)
@wait_option
@json_output(template("restored version {restored}: {rows} rows, now version {version}"))
@api_errors
def restore(index, version, wait):
    """Make VERSION of INDEX the newest version again, as a new commit (the versions since stay listed).

    Example:

    \b
        taskindex restore my.index 3
    """
    from taskindex.index import TaskIndex

    with TaskIndex.open(index, lock_timeout=wait) as idx:
        idx.restore(version)
        return {"restored": version, "rows": len(idx), "version": idx.version}


def _show_repair(r: dict) -> None:
    for s in r["skipped"]:
        click.echo(f"version {s['version']} skipped: {s['problem']}")
    if r["repaired"]:
        click.echo(f"repaired: {r['problem']}; CURRENT now names version {r['version']}, a copy of version "
                   f"{r['from_version']}, the newest intact one")
    else:
        click.echo(f"nothing to repair: version {r['version']} is current and intact")


@click.command()
@click.argument("index")
@wait_option
@json_output(_show_repair)
@api_errors
def repair(index, wait):
    """Point a lost or damaged CURRENT of INDEX at the newest intact version (a new commit that says so).

    An intact index is left as it is; every version skipped is named with what is wrong with it.

    Example:

    \b
        taskindex repair my.index
    """
    from taskindex.index import TaskIndex

    return TaskIndex.repair(index, lock_timeout=wait)


COMMANDS = [versions, restore, repair]
