"""The rebuild command: make an index hold exactly a manifest's rows, embedded in parallel, committed at once."""

from __future__ import annotations

import click

from taskindex.cli.options import estimator_options, skip_bad_images_option, weights_option
from taskindex.cli.output import Exit, api_errors, json_output, progress


SHOWN = 10  # removed rows, or skipped images of a row, named in the summary; --json names them all


def _show_report(r: dict) -> None:
    if r["dry_run"]:
        now = "a new index" if r["version"] is None else f"now version {r['version']}"
        click.echo(f"dry run: {r['index']} ({now}) would hold {r['rows']} rows; {r['to_embed']} to embed, "
                   f"{r['reused']} reused from an earlier run")
    else:
        click.echo(f"{r['rows']} rows: {r['embedded']} embedded, {r['reused']} reused from an earlier run, "
                   f"{len(r['failed'])} failed ({r['seconds']:.0f} s, "
                   + (f"{r['workers']} workers)" if r["executor"] == "local" else f"{r['executor']})"))
    for f in r["failed"]:
        click.echo(f"  failed: {f['name']} (manifest line {f['line']}): {f['reason']}")
    for s in r["skipped"]:
        more = len(s["skipped_files"]) - SHOWN
        click.echo(f"  skipped {s['skipped_images']} unreadable images of {s['name']} (manifest line {s['line']}): "
                   + ", ".join(f["image"] for f in s["skipped_files"][:SHOWN])
                   + (f" and {more} more (--json lists all)" if more > 0 else ""))
    what = "changes" if r["committed"] else "would change" if r["dry_run"] else "planned, not committed"
    click.echo(f"{what}: {len(r['added'])} added, {len(r['changed'])} changed (embedded again), "
               f"{len(r['removed'])} removed, {len(r['kept'])} kept as committed")
    for key in ("removed", "kept"):
        if r[key]:
            more = len(r[key]) - SHOWN
            click.echo(f"  {key}: {', '.join(r[key][:SHOWN])}" + (f" and {more} more (--json lists all)"
                                                                  if more > 0 else ""))
    if r["refit_model2vec"]:
        click.echo(f"the MODEL2VEC fit of {r['index']} was made on the rows a rebuild replaces: fit it again "
                   f"(taskindex model2vec fit {r['index']})")
    if r["dry_run"]:
        click.echo("nothing written")
    else:
        click.echo(f"committed version {r['version']}" if r["committed"] else
                   "nothing committed: the index is unchanged; fix the rows and pass --resume, or --allow-failures")


@click.command()
@click.argument("index", type=click.Path())
@click.option("--manifest", "manifest_file", required=True, type=click.Path(),
              help="CSV, Parquet or YAML: name, kind, source, options and meta.KEY columns (README, Rebuilds).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes (default: one per two cores).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch threads per worker (default: one per idle core, at most its share; 1 per Ray task).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Run on Ray: a local instance (--ray), or a cluster (--ray auto, --ray ray://HOST:10001).")
@click.option("--resume", is_flag=True, help="Go on from an interrupted rebuild: embed only what is missing.")
@click.option("--allow-failures", is_flag=True, help="Commit the rows that worked and exit 0 when some failed "
              "(also after a run that ended with failed rows).")
@click.option("--dry-run", is_flag=True, help="Print what the rebuild would add, change and remove; write nothing.")
@skip_bad_images_option
@click.option("--probe", default="efficientnet_lite0", show_default=True, help="Only when INDEX is created.")
@weights_option(help="Only when INDEX is created.")
@click.option("--image-size", type=click.IntRange(min=8), default=None, help="Only when INDEX is created.")
@estimator_options
@json_output(_show_report)
@api_errors(interrupted="Interrupted: {index} is unchanged; `--resume` goes on from the rows already embedded.")
def rebuild(index, manifest_file, workers, threads, ray_address, resume, allow_failures, dry_run, on_error, probe,
            weights, image_size, estimator, trim):
    """Make INDEX hold exactly the rows of a manifest, embedded in parallel and committed at once; says which
    rows it added, changed, removed and kept.

    Example:

    \b
        taskindex rebuild my.index --manifest tasks.csv --dry-run
        taskindex rebuild my.index --manifest tasks.csv --workers 4
        taskindex rebuild my.index --manifest tasks.csv --resume --allow-failures
        taskindex rebuild my.index --manifest tasks.yaml --ray auto --json
    """
    from taskindex.rebuilds.run import rebuild as run

    report = run(index, manifest_file, workers=workers, threads=threads, resume=resume, allow_failures=allow_failures,
                 probe=probe, weights=weights, image_size=image_size, estimator=estimator, trim=trim,
                 ray_address=ray_address, dry_run=dry_run, progress=progress(), on_error=on_error).to_dict(cli=True)
    return Exit(report, 1 if report["failed"] and not allow_failures else 0)


COMMANDS = [rebuild]
