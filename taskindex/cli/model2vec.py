"""The model2vec commands: learn model embeddings from observed errors (MODEL2VEC) and judge expert selection."""

from __future__ import annotations

import click

from taskindex.cli.output import api_errors, json_output, progress


@click.group(name="model2vec")
def model2vec_group():
    """Learn model embeddings from observed errors (MODEL2VEC) and judge expert selection.

    Example:

    \b
        taskindex model2vec fit my.index errors.csv
        taskindex model2vec eval my.index errors.csv
    """


def _show_fit(r: dict) -> None:
    click.echo(f"fitted {r['models']} models on {r['tasks'] - r['held_out_tasks']} tasks ({r['held_out_tasks']} held "
               f"out): held-out loss {r['initial_val_loss']:.4f} -> {r['val_loss']:.4f}, top-1 "
               f"{r['held_out_top1_before']:.2f} -> {r['held_out_top1_after']:.2f} (step {r['best_step']} of "
               f"{r['steps']}), gamma {r['gamma']:.3g}, version {r['version']}")
    if not r["improved"]:
        click.echo("the fit did not lower the held-out loss (best at step 0): selection ranks these models by "
                   "d_asym and says so (ranked_by asym); more tasks with errors would help")


@model2vec_group.command(name="fit")
@click.argument("index")
@click.argument("errors", type=click.Path(), required=False)
@click.option("--seed", type=int, default=0, show_default=True, help="Which tasks are held out for early stopping.")
@click.option("--holdout", type=float, default=None, help="Share of tasks held out for early stopping (0.2).")
@click.option("--max-steps", type=int, default=None, help="Most Adam steps (300).")
@click.option("--patience", type=int, default=None, help="Steps without a better held-out loss before stopping (30).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch threads (default: one per core that other processes leave idle).")
@json_output(_show_fit)
@api_errors
def model2vec_fit(index, errors, seed, holdout, max_steps, patience, threads):
    """Fit MODEL2VEC on ERRORS (.csv or .parquet: task, model, error; default: INDEX's results), store it in INDEX.

    Example:

    \b
        taskindex model2vec fit my.index errors.csv
        taskindex model2vec fit my.index
        taskindex model2vec fit my.index errors.parquet --holdout 0.25 --max-steps 500 --json
    """
    from taskindex.index import TaskIndex

    options = {k: v for k, v in (("holdout", holdout), ("max_steps", max_steps), ("patience", patience),
                                 ("threads", threads)) if v is not None}
    with TaskIndex.open(index) as idx:
        summary = idx.fit_model2vec(errors, seed=seed, **options)
        return {**summary, "version": idx.version}


def _show_evaluation(report: dict) -> None:
    s = report["summary"]
    click.echo(f"{s['tasks']} tasks, {s['models']} models, optimal mean error {s['optimal_error']:.4f}")
    for method in ("chance", "asym", "model2vec", "static", "neighbors"):
        top1 = f", top-1 {s[method + '_top1']:.2f}" if method != "chance" else ""
        click.echo(f"  {method:9s} error {s[method + '_error']:.4f} "
                   f"({s[method + '_relative_increase']:+.1%} relative){top1}")


@model2vec_group.command(name="eval")
@click.argument("index")
@click.argument("errors", type=click.Path(), required=False)
@click.option("--seed", type=int, default=0, show_default=True)
@json_output(_show_evaluation)
@api_errors
def model2vec_eval(index, errors, seed):
    """Leave-one-out expert selection on ERRORS (default: INDEX's results): d_asym, MODEL2VEC, the best expert on
    average (static) and the neighbours selector, against the best and a random model.

    Example:

    \b
        taskindex model2vec eval my.index errors.csv
        taskindex model2vec eval my.index errors.csv --seed 1 --json
    """
    from taskindex.index import TaskIndex

    with TaskIndex.open(index, readonly=True) as idx:
        return idx.evaluate_selection(errors, seed=seed, progress=progress()).to_dict()


COMMANDS = [model2vec_group]
