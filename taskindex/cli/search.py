"""Searching an index for a task: its nearest rows (query) and the best experts for it (select)."""

from __future__ import annotations

from pathlib import Path

import click

from taskindex.cli.options import data_options, skip_bad_images_option
from taskindex.cli.output import api_errors, json_output, row_table, table
from taskindex.shipped import default_index_path


WHAT = "DATA (an image folder, .parquet, .csv or sample:NAME), --embedding FILE or --name NAME"


def _is_index(path: str) -> bool:
    """Whether `path` is a folder of an index's files; only to tell what a lone or misplaced argument meant."""
    folder = Path(path)
    return folder.is_dir() and ((folder / "CURRENT").is_file() or any(folder.glob("manifest-*.json")))


def _index_and_target(args: tuple[str, ...], embedding_file, row_name, command: str) -> tuple[str, tuple]:
    """[INDEX] (DATA | --embedding FILE | --name NAME): the index path (default: shipped) and DATA if given."""
    from taskindex.errors import TaskIndexError

    given = sum(x is not None for x in (embedding_file, row_name))
    if len(args) == 1 and not given and _is_index(args[0]):
        raise TaskIndexError(f"nothing to {command} in {args[0]}: pass {WHAT}, e.g. "
                             f"`taskindex {command} {args[0]} --name ROW`")
    if len(args) == 2 and not _is_index(args[0]) and _is_index(args[1]):
        raise TaskIndexError(f"{args[1]} is the index and {args[0]} the task: INDEX comes first, "
                             f"`taskindex {command} {args[1]} {args[0]}`")
    if len(args) > 2 or (len(args) == 2 and given) or (not args and not given):
        raise TaskIndexError(f"usage: taskindex {command} [INDEX] (DATA | --embedding FILE | --name NAME)")
    if given > 1:
        raise TaskIndexError("pass only one of DATA, --embedding or --name")
    if len(args) == 2 or (len(args) == 1 and given):
        return args[0], args[1:]
    return default_index_path(), args


def _search(command: str, args, embedding_file, row_name, read: dict, search) -> dict:
    """Open the index of ARGS read-only and time `search(index, target, task)`: the target a row name, a saved
    embedding, or DATA embedded in the index's space (TaskIndex.embed with the `read` options); task: DATA's
    Task (None without DATA)."""
    import time

    from taskindex.embedding.vector import Embedding
    from taskindex.index import TaskIndex

    index, rest = _index_and_target(args, embedding_file, row_name, command)
    with TaskIndex.open(index, readonly=True) as idx:
        start = time.perf_counter()
        task = _task(rest[0], read) if rest else None  # reading images loads torch: only for DATA
        target = (row_name or (Embedding.load(embedding_file) if embedding_file else
                               idx.embed(task, read["max_samples"], progress=False, on_error=read["on_error"])))
        hits = search(idx, target, task)
        seconds = time.perf_counter() - start
    return {"index": index, "seconds": seconds, "hits": [h.to_dict() for h in hits],
            **(skipped(target) if task is not None else {})}


def skipped(emb) -> dict:
    """What --skip-bad-images left out of DATA's embedding (nothing without the flag or without DATA)."""
    meta = getattr(emb, "meta", {})
    return {k: meta[k] for k in ("skipped_images", "skipped_files") if k in meta}


def show_skipped(r: dict) -> None:
    if r.get("skipped_images"):
        click.echo(f"skipped {r['skipped_images']} unreadable images of DATA:")
        for s in r["skipped_files"]:
            click.echo(f"  {s['image']}: {s['error']}")


def _task(data: str, read: dict):
    from taskindex.data.sources import as_task

    return as_task(data, read["image_column"], read["label_column"])


def target_options(f):
    """What a query or select asks about: DATA, --embedding FILE or --name NAME, and how DATA is read."""
    f = skip_bad_images_option(data_options(f))
    f = click.option("--name", "row_name", help="Ask with a task row already in the index.")(f)
    return click.option("--embedding", "embedding_file", type=click.Path(), help="Ask with a saved .emb file.")(f)


def _show_rows(r: dict) -> None:
    row_table([{**h["metadata"], "distance": h["distance"]} for h in r["hits"]],
              ["name", "kind", "distance", "complexity"])
    click.echo(f"({len(r['hits'])} rows, {r['metric']}, {r['seconds'] * 1000:.1f} ms)")
    show_skipped(r)


@click.command()
@click.argument("args", nargs=-1)
@target_options
@click.option("-k", type=click.IntRange(min=1), default=10, show_default=True, help="How many nearest rows to return.")
@click.option("--metric", type=click.Choice(["sym", "asym"]), default="sym", show_default=True,
              help="sym: d_sym(row, task); asym: d_asym(row -> task) = d_sym - alpha * complexity(row).")
@click.option("--kind", type=click.Choice(["task", "model"]), default=None,
              help="Only task rows or only model rows (default: both).")
@click.option("--where", multiple=True, help="Filter: key=value, key!=value, key>=3, 'key in a,b' (repeatable).")
@click.option("--exact", is_flag=True, help="Brute-force exact distances over every row.")
@click.option("--refine", type=click.IntRange(min=1), default=None,
              help="Candidates re-ranked exactly per result: more is slower, with higher recall "
                   "(default: the index's for its size, see `info`).")
@click.option("--alpha", type=click.FloatRange(min=0), default=None,
              help="Complexity weight of --metric asym (default: the index's, see `taskindex alpha`).")
@json_output(_show_rows)
@api_errors
def query(args, embedding_file, row_name, on_error, max_samples, image_column, label_column, k, metric, kind, where,
          exact, refine, alpha):
    """Nearest rows: query [INDEX] (DATA | --embedding FILE | --name NAME).

    Without INDEX the shipped default index is used.

    Example:

    \b
        taskindex query --name fashion-footwear -k 5
        taskindex query sample:mnist-round --kind task --where dataset=mnist
        taskindex query my.index --embedding footwear.emb --metric asym --exact --json
    """
    from taskindex.index.filters import parse_where

    where = parse_where(where)
    result = _search("query", args, embedding_file, row_name, dict(max_samples=max_samples, image_column=image_column,
                                                                  label_column=label_column, on_error=on_error),
                     lambda idx, q, _: idx.query(q, k=k, metric=metric, kind=kind, where=where, exact=exact,
                                                 alpha=alpha, refine=refine))
    return {**result, "metric": metric}


def _show_models(r: dict) -> None:
    table([{**h["metadata"], "score": h["distance"], "ranked_by": h["ranked_by"]} for h in r["hits"]],
          ["name", "score", "ranked_by", "complexity", "source_task"])
    for h in r["hits"]:
        if h.get("evidence"):
            click.echo(f"{h['name']}: " + "; ".join(f"{e['task']} (d_sym {e['d_sym']:.3f}, weight {e['weight']:.2f}) "
                                                    f"error {e['error']:.3f}" for e in h["evidence"]))
    click.echo(f"({len(r['hits'])} models, {r['seconds'] * 1000:.1f} ms)")
    show_skipped(r)


@click.command()
@click.argument("args", nargs=-1)
@target_options
@click.option("-k", type=click.IntRange(min=1), default=5, show_default=True, help="How many experts to return.")
@click.option("--where", multiple=True, help="Filter the models: key=value, key!=value, 'key in a,b' (repeatable).")
@click.option("--alpha", type=click.FloatRange(min=0), default=None,
              help="Complexity weight of d_asym (default: the index's, see `info`).")
@click.option("--by", type=click.Choice(["auto", "neighbors", "model2vec", "asym"]), default="auto",
              show_default=True, help="neighbors: the experts' results on the nearest known tasks (auto where the "
              "index holds results); model2vec: d_asym with MODEL2VEC where fitted; asym: d_asym only.")
@click.option("--verify", type=click.Choice(["logme"]), default=None,
              help="Re-rank the shortlist by LogME on DATA's images, for experts whose metadata names an "
              "architecture and a weights_file.")
@click.option("--shortlist", type=click.IntRange(min=1), default=3, show_default=True,
              help="How many of the first experts --verify checks.")
@json_output(_show_models)
@api_errors
def select(args, embedding_file, row_name, on_error, max_samples, image_column, label_column, k, where, alpha, by,
           verify, shortlist):
    """Best experts for a task: select [INDEX] (DATA | --embedding FILE | --name NAME).

    Ranks the model rows by their results on the known tasks nearest to the task where the index holds
    results (each pick lists them), else by d_asym(model -> task) with MODEL2VEC where the index holds a fit.

    Example:

    \b
        taskindex select --name fashion-footwear -k 3
        taskindex select sample:mnist-round --where dataset=mnist
        taskindex select my.index --embedding footwear.emb --alpha 0.2 --json
        taskindex select --name fashion-footwear --by asym
        taskindex select sample:fashion-sandal-vs-rest --verify logme --shortlist 3
    """
    from taskindex.index.filters import parse_where

    where = parse_where(where)
    return _search("select", args, embedding_file, row_name, dict(max_samples=max_samples, image_column=image_column,
                                                                 label_column=label_column, on_error=on_error),
                   lambda idx, q, task: idx.select_model(q, k=k, where=where, alpha=alpha, by=by, verify=verify,
                                                         shortlist=shortlist, task=task))


COMMANDS = [query, select]
