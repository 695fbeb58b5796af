"""The rebuild command: make an index hold exactly a manifest's rows, embedded in parallel, committed at once."""

from __future__ import annotations

import click

from taskindex.cli.options import estimator_options, weights_option
from taskindex.cli.output import Exit, api_errors, json_output, progress


def _show_report(r: dict) -> None:
    click.echo(f"{r['rows']} rows: {r['embedded']} embedded, {r['reused']} reused from an earlier run, "
               f"{len(r['failed'])} failed ({r['seconds']:.0f} s, "
               + (f"{r['workers']} workers)" if r["executor"] == "local" else f"{r['executor']})"))
    for f in r["failed"]:
        click.echo(f"  failed: {f['name']} (manifest line {f['line']}): {f['reason']}")
    click.echo(f"committed version {r['version']}" if r["committed"] else
               "nothing committed: the index is unchanged; fix the rows and pass --resume, or --allow-failures")


@click.command()
@click.argument("index", type=click.Path())
@click.option("--manifest", "manifest_file", required=True, type=click.Path(),
              help="CSV, Parquet or YAML: name, kind, source, options and meta.KEY columns (README, Rebuilds).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes (default: one per two cores).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch threads per worker (default: its share of the cores; 1 per Ray task).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Run on Ray: a local instance (--ray), or a cluster (--ray auto, --ray ray://HOST:10001).")
@click.option("--resume", is_flag=True, help="Go on from an interrupted rebuild: embed only what is missing.")
@click.option("--allow-failures", is_flag=True, help="Commit the rows that worked and exit 0 when some failed.")
@click.option("--probe", default="efficientnet_lite0", show_default=True, help="Only when INDEX is created.")
@weights_option(help="Only when INDEX is created.")
@click.option("--image-size", type=click.IntRange(min=8), default=None, help="Only when INDEX is created.")
@estimator_options
@json_output(_show_report)
@api_errors(interrupted="Interrupted: {index} is unchanged; `--resume` goes on from the rows already embedded.")
def rebuild(index, manifest_file, workers, threads, ray_address, resume, allow_failures, probe, weights, image_size,
            estimator, trim):
    """Make INDEX hold exactly the rows of a manifest, embedded in parallel and committed at once.

    Example:

    \b
        taskindex rebuild my.index --manifest tasks.csv --workers 4
        taskindex rebuild my.index --manifest tasks.csv --resume --allow-failures
        taskindex rebuild my.index --manifest tasks.yaml --ray auto --json
    """
    from taskindex.rebuilds.run import rebuild as run

    report = run(index, manifest_file, workers=workers, threads=threads, resume=resume, allow_failures=allow_failures,
                 probe=probe, weights=weights, image_size=image_size, estimator=estimator, trim=trim,
                 ray_address=ray_address, progress=progress()).to_dict()
    return Exit(report, 1 if report["failed"] and not allow_failures else 0)


COMMANDS = [rebuild]
