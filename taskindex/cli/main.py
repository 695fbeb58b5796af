"""The `taskindex` command: a thin click shell over the Python API.

Every command is one API call plus printing. User mistakes (TaskIndexError)
become one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import functools
import json
import os
import sys

import click

from taskindex import __version__
from taskindex.shipped import default_index_path


class UserError(click.ClickException):
    exit_code = 2

    def show(self, file=None):
        click.echo(f"Error: {self.format_message()}", err=True)


def _api_errors(fn):
    """Turn the library's user errors into one clean line and exit status 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from taskindex.errors import TaskIndexError

        try:
            return fn(*args, **kwargs)
        except TaskIndexError as exc:
            raise UserError(exc.cli) from None
        except KeyboardInterrupt:
            click.echo("Interrupted: nothing was written.", err=True)
            sys.exit(130)

    return wrapper


def _emit(data, as_json: bool, human) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        human(data)


def _table(rows: list[dict], columns: list[str]) -> None:
    """Aligned plain-text table: numbers right-aligned, text left-aligned."""
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r.get(c), (int, float)) for r in rows) for c in columns]
    line = lambda vals: "  ".join(v.rjust(w) if num else v.ljust(w)  # noqa: E731
                                  for v, w, num in zip(vals, widths, numeric)).rstrip()
    click.echo(line(columns))
    click.echo(line(["-" * w for w in widths]))
    for row in cells:
        click.echo(line(row))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)


def _label_passes(value: str | None) -> dict:
    """embed's label_passes keyword from --label-passes: none (Python's default), None for 'all', or a count."""
    if value is None:
        return {}
    if value.strip().lower() == "all":
        return {"label_passes": None}
    if value.strip().isdigit() and int(value) >= 1:
        return {"label_passes": int(value)}
    raise UserError(f"--label-passes {value!r} is not a count of label directions: give a whole number >= 1, "
                    "or 'all'")


def _estimator_options(f):
    """--estimator and --trim, shared by embed and create (an index holds one estimator)."""
    f = click.option("--trim", type=click.FloatRange(0, 0.5, min_open=True, max_open=True), default=None,
                     help="Share of images cut at each end per filter (default 0.1).")(f)
    return click.option("--estimator", type=click.Choice(["trimmed", "winsorized", "mean"]), default="trimmed",
                        show_default=True,
                        help="Per-filter aggregate over images; 'mean' is the paper's plain mean.")(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="taskindex")
def cli():
    """taskindex: embed image-classification tasks with TASK2VEC and compare them."""


@cli.command()
@click.argument("data")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the .emb file.")
@click.option("--probe", default="efficientnet_lite0", show_default=True, help="Probe network (see `taskindex probes`).")
@click.option("--weights", default="imagenet", show_default=True,
              help="'imagenet', 'random', or a state_dict file for the probe.")
@click.option("--method", type=click.Choice(["montecarlo", "variational"]), default="montecarlo", show_default=True)
@click.option("--expectation", type=click.Choice(["exact", "sample"]), default="exact", show_default=True,
              help="Sum over labels (C-1 backward passes), or draw one label per image.")
@click.option("--label-passes", default=None, metavar="N|all",
              help="With --expectation exact: keep the N most informative label directions, or all C-1 "
                   "(default: 2, as in Python).")
@_estimator_options
@click.option("--image-size", type=click.IntRange(min=8), default=None, help="Input resolution (default: the probe's).")
@click.option("--max-samples", type=click.IntRange(min=2), default=1000, show_default=True,
              help="Class-balanced cap on the images used.")
@click.option("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when available).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--image-column", default="image", show_default=True, help="Parquet/CSV column of images.")
@click.option("--label-column", default="label", show_default=True, help="Parquet/CSV column of labels.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_api_errors
def embed(data, output, probe, weights, method, expectation, label_passes, estimator, trim, image_size, max_samples,
          device, seed, image_column, label_column, as_json):
    """Embed the task in DATA (folder, .parquet, .csv or sample:NAME) into a .emb file."""
    from taskindex.embedding.probes import load_probe
    from taskindex.data.sources import load_task
    from taskindex.embedding.pipeline import embed as embed_task

    passes = _label_passes(label_passes)  # before any work
    task = load_task(data, image_column, label_column)
    p = load_probe(probe, weights=None if weights == "random" else weights, image_size=image_size, device=device)
    emb = embed_task(task, p, method=method, expectation=expectation, estimator=estimator, trim=trim,
                     max_samples=max_samples, seed=seed, progress=False if as_json else None, **passes)
    emb.save(output)
    from taskindex.distance import complexity

    result = {"output": output, "dim": emb.dim, "complexity": complexity(emb), **emb.meta}
    _emit(result, as_json, lambda r: click.echo(
        f"{r['task']}: {r['n_samples']} images, {r['n_classes']} classes -> {output} "
        f"({r['dim']} filters, complexity {r['complexity']:.4f}, {r['seconds']:.1f} s)"))


@cli.command()
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@click.option("--metric", type=click.Choice(["sym", "asym"]), default="sym", show_default=True,
              help="sym: d_sym(A, B); asym: d_asym(A -> B) = d_sym - alpha * complexity(A).")
@click.option("--alpha", type=float, default=0.15, show_default=True, help="Complexity weight of --metric asym.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_api_errors
def distance(a, b, metric, alpha, as_json):
    """Distance between two embedding files A and B."""
    from taskindex import distance as dist
    from taskindex.embedding.vector import Embedding

    ea, eb = Embedding.load(a), Embedding.load(b)
    value = dist.d_sym(ea, eb) if metric == "sym" else dist.d_asym(ea, eb, alpha=alpha)
    result = {"a": a, "b": b, "metric": metric, "distance": value,
              "complexity_a": dist.complexity(ea), "complexity_b": dist.complexity(eb)}
    if metric == "asym":
        result["alpha"] = alpha
    _emit(result, as_json, lambda r: click.echo(f"{r['distance']:.6f}"))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_api_errors
def probes(as_json):
    """List the registered probe networks."""
    from taskindex.embedding.probes import list_probes, probe_spec

    rows = [{"name": n, "image_size": probe_spec(n).default_image_size, "imagenet_weights": probe_spec(n).pretrained}
            for n in list_probes()]
    _emit(rows, as_json, lambda r: _table(r, ["name", "image_size", "imagenet_weights"]))


@cli.command()
@click.option("--dataset", type=click.Choice(["fashion-mnist", "mnist", "digits"]), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_api_errors
def samples(dataset, as_json):
    """List the named sample tasks (use them as DATA with sample:NAME)."""
    from taskindex.data import samples as s

    rows = [s.describe(n) for n in s.names(dataset)]
    for r in rows:
        r["classes"] = ", ".join(r["classes"])
    _emit(rows, as_json, lambda r: _table(r, ["name", "dataset", "group", "classes"]))


# --- the index ---------------------------------------------------------------------------------


def _parse_meta(pairs: tuple[str, ...]) -> dict:
    from taskindex.errors import TaskIndexError
    from taskindex.index.filters import parse_value

    meta = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise TaskIndexError(f"cannot parse --meta {pair!r}: use key=value, e.g. --meta dataset=cifar10")
        meta[key.strip()] = parse_value(value.strip())
    return meta


def _parse_where(clauses: tuple[str, ...]) -> dict | None:
    from taskindex.index.filters import parse_where

    return parse_where(clauses)


def _row_table(rows: list[dict], first: list[str]) -> None:
    """Rows as a table: `first`, then classes and samples, then `dataset` (metadata, when any row has it)
    and `source` (where the task's images came from): each column one meaning."""
    columns = first + ["classes", "samples"] + (["dataset"] if any(r.get("dataset") is not None for r in rows) else [])
    _table([{**r, "classes": r.get("n_classes"), "samples": r.get("n_samples")} for r in rows],
           columns + ["source"])


def _embed_for_index(idx, data: str, max_samples: int, image_column: str, label_column: str, quiet: bool):
    """DATA embedded with the index's probe and options, so it lands in the index's space."""
    from taskindex.data.sources import load_task
    from taskindex.embedding.pipeline import embed as embed_task

    return embed_task(load_task(data, image_column, label_column), idx.probe(), max_samples=max_samples,
                      progress=False if quiet else None, **idx.embed_options())


@cli.command()
@click.argument("index", type=click.Path())
@click.option("--probe", default="efficientnet_lite0", show_default=True)
@click.option("--weights", default="imagenet", show_default=True, help="'imagenet', 'random' or a state_dict file.")
@click.option("--image-size", type=click.IntRange(min=8), default=None)
@click.option("--method", type=click.Choice(["montecarlo", "variational"]), default="montecarlo", show_default=True)
@_estimator_options
@click.option("--vectors", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True,
              help="How raw vectors are stored: bfloat16 halves the disk (README, Scale).")
@click.option("--json", "as_json", is_flag=True)
@_api_errors
def create(index, probe, weights, image_size, method, estimator, trim, vectors, as_json):
    """Create an empty index at INDEX for one probe, method and estimator."""
    from taskindex.index.task_index import TaskIndex

    with TaskIndex.create(index, probe=probe, weights=None if weights == "random" else weights,
                          image_size=image_size, method=method, estimator=estimator, trim=trim,
                          vectors=vectors) as idx:
        info = idx.info()
    _emit(info, as_json, lambda r: click.echo(f"created {r['path']}: {r['probe']} @ {r['image_size']} px, "
                                              f"{r['method']}, {r['estimator']}, {r['dim']} filters, "
                                              f"{r['vectors']} vectors"))


@cli.command()
@click.argument("index", type=click.Path())
@click.argument("name")
@click.argument("data", required=False)
@click.option("--embedding", "embedding_file", type=click.Path(), help="Add a saved .emb file instead of DATA.")
@click.option("--kind", type=click.Choice(["task", "model"]), default="task", show_default=True)
@click.option("--source", "source_task", default=None,
              help="With --kind model: the task row the model was trained on (none of DATA, --embedding and "
                   "--source: a black-box model).")
@click.option("--meta", multiple=True, help="key=value metadata (repeatable).")
@click.option("--replace", is_flag=True, help="Replace a row of the same name (upsert).")
@click.option("--max-samples", type=click.IntRange(min=2), default=1000, show_default=True,
              help="Class-balanced cap on the images of DATA used.")
@click.option("--image-column", default="image", show_default=True, help="Parquet/CSV column of images.")
@click.option("--label-column", default="label", show_default=True, help="Parquet/CSV column of labels.")
@click.option("--json", "as_json", is_flag=True)
@_api_errors
def add(index, name, data, embedding_file, kind, source_task, meta, replace, max_samples, image_column, label_column,
        as_json):
    """Add NAME to INDEX: embed DATA with the index's probe, take --embedding FILE, or (a model) --source TASK."""
    from taskindex.embedding.vector import Embedding
    from taskindex.errors import IndexUsageError, TaskIndexError
    from taskindex.index.task_index import TaskIndex

    given = sum(x is not None for x in (data, embedding_file, source_task))
    if source_task is not None and kind != "model":
        raise TaskIndexError("--source names a model's training task: add it with --kind model")
    if given > 1 or (given == 0 and kind != "model"):
        raise TaskIndexError("pass exactly one of DATA (folder, .parquet, .csv, sample:NAME) or --embedding FILE"
                             + (" or --source TASK" if kind == "model" else ""))
    metadata = _parse_meta(meta)
    with TaskIndex.open(index) as idx:
        if name in idx and not replace:  # before embedding, which can take minutes
            raise IndexUsageError(f"a row named {name!r} already exists in {index}: pass --replace to replace it "
                                  "or choose another name")
        emb = None
        if embedding_file:
            emb = Embedding.load(embedding_file)
        elif data is not None:
            emb = _embed_for_index(idx, data, max_samples, image_column, label_column, as_json)
        if kind == "model":
            idx.add_model(name, source_task if emb is None else emb, metadata=metadata, replace=replace)
        else:
            (idx.upsert if replace else idx.add)(name, emb, kind=kind, metadata=metadata)
        result = {"name": name, "kind": kind, "rows": len(idx), "version": idx.version}
    _emit(result, as_json, lambda r: click.echo(f"added {r['name']} ({r['kind']}): {r['rows']} rows, "
                                                f"version {r['version']}"))


def _index_and_target(args: tuple[str, ...], embedding_file, row_name, command: str) -> tuple[str, tuple]:
    """[INDEX] (DATA | --embedding FILE | --name NAME): the index path (default: shipped) and DATA if given."""
    from taskindex.errors import TaskIndexError

    given = sum(x is not None for x in (embedding_file, row_name))
    if len(args) > 2 or (len(args) == 2 and given) or (not args and not given):
        raise TaskIndexError(f"usage: taskindex {command} [INDEX] (DATA | --embedding FILE | --name NAME)")
    if given > 1:
        raise TaskIndexError("pass only one of DATA, --embedding or --name")
    if len(args) == 2 or (len(args) == 1 and given):
        return args[0], args[1:]
    return default_index_path(), args


def _target(idx, rest, embedding_file, row_name, max_samples, image_column, label_column):
    """What a query or select asks about: a row name, a saved embedding, or DATA embedded in the index's space."""
    from taskindex.embedding.vector import Embedding

    if row_name:
        return row_name
    if embedding_file:
        return Embedding.load(embedding_file)
    return _embed_for_index(idx, rest[0], max_samples, image_column, label_column, quiet=True)


_TARGET_OPTIONS = (
    click.option("--embedding", "embedding_file", type=click.Path(), help="Ask with a saved .emb file."),
    click.option("--name", "row_name", help="Ask with a task row already in the index."),
    click.option("--max-samples", type=click.IntRange(min=2), default=1000, show_default=True,
                 help="Class-balanced cap on the images of DATA used."),
    click.option("--image-column", default="image", show_default=True, help="Parquet/CSV column of images."),
    click.option("--label-column", default="label", show_default=True, help="Parquet/CSV column of labels."),
)


def _target_options(f):
    """The options that say what a query or select asks about, shared by both commands."""
    for option in reversed(_TARGET_OPTIONS):
        f = option(f)
    return f


@cli.command()
@click.argument("args", nargs=-1)
@_target_options
@click.option("-k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--metric", type=click.Choice(["sym", "asym"]), default="sym", show_default=True)
@click.option("--kind", type=click.Choice(["task", "model"]), default=None)
@click.option("--where", multiple=True, help="Filter: key=value, key!=value, key>=3, 'key in a,b' (repeatable).")
@click.option("--exact", is_flag=True, help="Brute-force exact distances over every row.")
@click.option("--refine", type=click.IntRange(min=1), default=None,
              help="Candidates re-ranked exactly per result: more is slower, with higher recall "
                   "(default: the index's for its size, see `info`).")
@click.option("--alpha", type=click.FloatRange(min=0), default=None,
              help="Complexity weight of --metric asym (default: the index's, see `taskindex alpha`).")
@click.option("--json", "as_json", is_flag=True)
@_api_errors
def query(args, embedding_file, row_name, max_samples, image_column, label_column, k, metric, kind, where, exact,
          refine, alpha, as_json):
    """Nearest rows: query [INDEX] (DATA | --embedding FILE | --name NAME).

    Without INDEX the shipped default index is used.
    """
    import time

    from taskindex.index.task_index import TaskIndex

    index, rest = _index_and_target(args, embedding_file, row_name, "query")
    where_dict = _parse_where(where)
    with TaskIndex.open(index, readonly=True) as idx:
        start = time.perf_counter()
        q = _target(idx, rest, embedding_file, row_name, max_samples, image_column, label_column)
        hits = idx.query(q, k=k, metric=metric, kind=kind, where=where_dict, exact=exact, alpha=alpha,
                         refine=refine)
        seconds = time.perf_counter() - start
    if as_json:
        click.echo(json.dumps({"index": index, "metric": metric, "seconds": seconds,
                               "hits": [h.to_dict() for h in hits]}, indent=2, default=str))
    else:
        _row_table([{**h.metadata, "distance": h.distance} for h in hits], ["name", "kind", "distance", "complexity"])
        click.echo(f"({len(hits)} rows, {metric}, {seconds * 1000:.1f} ms)")


@cli.command()
@click.argument("args", nargs=-1)
@_target_options
@click.option("-k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--where", multiple=True, help="Filter the models: key=value, key!=value, 'key in a,b' (repeatable).")
@click.option("--alpha", type=click.FloatRange(min=0), default=None,
              help="Complexity weight of d_asym (default: the index's, see `info`).")
@click.option("--json", "as_json", is_flag=True)
@_api_errors
def select(args, embedding_file, row_name, max_samples, image_column, label_column, k, where, alpha, as_json):
    """Best experts for a task: select [INDEX] (DATA | --embedding FILE | --name NAME).

    Ranks the model rows by d_asym(model -> task), with MODEL2VEC where the index holds a fit.
    """
    import time

    from taskindex.index.task_index import TaskIndex

    index, rest = _index_and_target(args, embedding_file, row_name, "select")
    where_dict = _parse_where(where)
    with TaskIndex.open(index, readonly=True) as idx:
        start = time.perf_counter()
        q = _target(idx, rest, embedding_file, row_name, max_samples, image_column, label_column)
        hits = idx.select_model(q, k=k, where=where_dict, alpha=alpha)
        seconds = time.perf_counter() - start
    if as_json:
        click.echo(json.dumps({"index": index, "seconds": seconds, "hits": [h.to_dict() for h in hits]},
                              indent=2, default=str))
    else:
        _table([{**h.metadata, "score": h.distance, "ranked_by": h.ranked_by} for h in hits],
               ["name", "score", "ranked_by", "complexity", "source_task"])
        click.echo(f"({len(hits)} models, {seconds * 1000:.1f} ms)")


@cli.command(name="alpha")
@click.argument("index")
@click.argument("value", type=click.FloatRange(min=0), required=False)
@click.option("--json", "as_json", is_flag=True)
@_api_errors
def alpha_cmd(index, value, as_json):
    """Show INDEX's alpha (the complexity weight of d_asym), or store VALUE."""
    from taskindex.index.task_index import TaskIndex

    with TaskIndex.open(index, readonly=value is None) as idx:
        if value is not None:
            idx.set_alpha(value)
        result = {"alpha": idx.alpha, "version": idx.version, "model2vec": idx.info()["model2vec"]}
    _emit(result, as_json, lambda r: click.echo(f"alpha {r['alpha']:g} (version {r['version']}; "
                                                f"MODEL2VEC: {r['model2vec']})"))


@cli.group(name="model2vec")
def model2vec_group():
    """Learn model embeddings from observed errors (MODEL2VEC) and judge expert selection."""


@model2vec_group.command(name="fit")
@click.argument("index")
@click.argument("errors", type=click.Path())
@click.option("--seed", type=int, default=0, show_default=True, help="Which tasks are held out for early stopping.")
@click.option("--holdout", type=float, default=None, help="Share of tasks held out for early stopping (0.2).")
@click.option("--max-steps", type=int, default=None, help="Most Adam steps (300).")
@click.option("--patience", type=int, default=None, help="Steps without a better held-out loss before stopping (30).")
@click.option("--json", "as_json", is_flag=True)
@_api_errors
def model2vec_fit(index, errors, seed, holdout, max_steps, patience, as_json):
    """Fit MODEL2VEC on ERRORS (.csv or .parquet: task, model, error) and store it in INDEX."""
    from taskindex.index.task_index import TaskIndex

    options = {k: v for k, v in (("holdout", holdout), ("max_steps", max_steps), ("patience", patience))
               if v is not None}
    with TaskIndex.open(index) as idx:
        summary = idx.fit_model2vec(errors, seed=seed, **options)
        summary["version"] = idx.version
    _emit(summary, as_json, lambda r: click.echo(
        f"fitted {r['models']} models on {r['tasks'] - r['held_out_tasks']} tasks ({r['held_out_tasks']} held out): "
        f"held-out loss {r['initial_val_loss']:.4f} -> {r['val_loss']:.4f}, top-1 "
        f"{r['held_out_top1_before']:.2f} -> {r['held_out_top1_after']:.2f} (step {r['best_step']} of {r['steps']}), "
        f"gamma {r['gamma']:.3g}, version {r['version']}"))


@model2vec_group.command(name="eval")
@click.argument("index")
@click.argument("errors", type=click.Path())
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_api_errors
def model2vec_eval(index, errors, seed, as_json):
    """Leave-one-out expert selection on ERRORS: d_asym and MODEL2VEC against the best and a random model."""
    from taskindex.index.task_index import TaskIndex

    with TaskIndex.open(index, readonly=True) as idx:
        report = idx.evaluate_selection(errors, seed=seed, progress=False if as_json else None)

    def human(r):
        s = r["summary"]
        click.echo(f"{s['tasks']} tasks, {s['models']} models, optimal mean error {s['optimal_error']:.4f}")
        for method in ("chance", "asym", "model2vec"):
            top1 = f", top-1 {s[method + '_top1']:.2f}" if method != "chance" else ""
            click.echo(f"  {method:9s} error {s[method + '_error']:.4f} "
                       f"({s[method + '_relative_increase']:+.1%} relative){top1}")

    _emit(report.to_dict(), as_json, human)


@cli.command()
@click.argument("index", required=False)
@click.option("--kind", "plot_kind", type=click.Choice(["matrix", "map", "complexity"]), default="matrix",
              show_default=True, help="matrix: clustered d_sym; map: 2-D t-SNE/UMAP; complexity: against a column.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="A .png, .svg or .pdf file.")
@click.option("--color-by", default=None, help="Metadata column to colour rows by (e.g. dataset, group).")
@click.option("--against", default="n_samples", show_default=True, help="With --kind complexity: the x column.")
@click.option("--rows", "row_kind", type=click.Choice(["task", "model", "all"]), default=None,
              help="Which rows (default: tasks for matrix and complexity, all for map).")
@click.option("--where", multiple=True, help="Filter rows like query --where.")
@click.option("--method", default=None, help="map: tsne (default) or umap; matrix: linkage (average).")
@click.option("--json", "as_json", is_flag=True)
@_api_errors
def plot(index, plot_kind, output, color_by, against, row_kind, where, method, as_json):
    """Draw INDEX (default: the shipped index) as a figure: the paper's Fig. 1 and 2 for your rows."""
    from taskindex import plots
    from taskindex.index.task_index import TaskIndex

    where_dict = _parse_where(where)
    kind = {"all": None, None: None if plot_kind == "map" else "task"}.get(row_kind, row_kind)
    with TaskIndex.open(index or default_index_path(), readonly=True) as idx:
        if plot_kind == "matrix":
            fig = plots.plot_matrix(idx, color_by=color_by, where=where_dict, kind=kind, method=method or "average")
        elif plot_kind == "map":
            fig = plots.plot_map(idx, color_by=color_by, where=where_dict, kind=kind, method=method or "tsne")
        else:
            fig = plots.plot_complexity(idx, against=against, color_by=color_by, where=where_dict, kind=kind)
    path = plots.save(fig, output)
    _emit({"output": path, "kind": plot_kind}, as_json, lambda r: click.echo(f"wrote {r['output']}"))


@cli.command(name="ls")
@click.argument("index", required=False)
@click.option("--kind", type=click.Choice(["task", "model"]), default=None)
@click.option("--where", multiple=True, help="Filter rows like query --where.")
@click.option("--json", "as_json", is_flag=True)
@_api_errors
def ls_cmd(index, kind, where, as_json):
    """List the rows of INDEX (default: the shipped index)."""
    from taskindex.index.filters import mask
    from taskindex.index.task_index import TaskIndex

    with TaskIndex.open(index or default_index_path(), readonly=True) as idx:
        frame = idx.to_pandas()
    keep = mask(frame, _parse_where(where))
    if kind:
        keep &= (frame["kind"] == kind).to_numpy()
    frame = frame[keep]
    records = json.loads(frame.to_json(orient="records"))
    _emit(records, as_json, lambda r: _row_table(r, ["name", "kind", "complexity"]))


@cli.command()
@click.argument("index", required=False)
@click.option("--json", "as_json", is_flag=True)
@_api_errors
def info(index, as_json):
    """Probe, method, size and storage of INDEX (default: the shipped index)."""
    from taskindex.index.task_index import TaskIndex

    with TaskIndex.open(index or default_index_path(), readonly=True) as idx:
        data = idx.info()
    _emit(data, as_json, lambda r: [click.echo(f"{k:14s} {v}") for k, v in r.items()])


@cli.command()
@click.argument("index")
@click.argument("names", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True)
@_api_errors
def rm(index, names, as_json):
    """Remove rows NAMES from INDEX."""
    from taskindex.index.task_index import TaskIndex

    with TaskIndex.open(index) as idx:
        for name in names:
            idx.remove(name)
        result = {"removed": list(names), "rows": len(idx), "version": idx.version}
    _emit(result, as_json, lambda r: click.echo(f"removed {len(r['removed'])}: {r['rows']} rows, "
                                                f"version {r['version']}"))


@cli.command()
@click.argument("index", required=False)
@click.option("--json", "as_json", is_flag=True)
@_api_errors
def verify(index, as_json):
    """Check every file of INDEX against its manifest (sizes and sha256). Exit 1 if damaged."""
    from taskindex.index.task_index import verify as verify_index

    path = index or default_index_path()
    problems = verify_index(path)
    _emit({"index": path, "ok": not problems, "problems": problems}, as_json,
          lambda r: click.echo("ok" if r["ok"] else "\n".join(r["problems"])))
    if problems:
        sys.exit(1)


@cli.command()
@click.argument("index", required=False)
@click.option("--json", "as_json", is_flag=True)
@_api_errors
def warm(index, as_json):
    """Read INDEX's vectors into the OS page cache, so the first queries of any process do not wait on the disk."""
    import time

    from taskindex.index.task_index import TaskIndex

    path = index or default_index_path()
    start = time.perf_counter()
    with TaskIndex.open(path, readonly=True) as idx:
        nbytes = idx.warm()
    result = {"index": path, "bytes": nbytes, "seconds": round(time.perf_counter() - start, 3)}
    _emit(result, as_json, lambda r: click.echo(f"warmed {r['bytes'] / 2**20:,.1f} MiB in {r['seconds']:.1f} s"))


@cli.command()
@click.argument("index")
@click.option("--vectors", type=click.Choice(["float32", "bfloat16"]), default=None,
              help="Also convert the stored vectors (the upgrade path to bfloat16; default: keep them).")
@click.option("--json", "as_json", is_flag=True)
@_api_errors
def compact(index, vectors, as_json):
    """Fold INDEX's history into one segment and delete files no version needs."""
    from taskindex.index.task_index import TaskIndex

    with TaskIndex.open(index) as idx:
        removed = idx.compact(vectors=vectors)
        result = {"rows": len(idx), "version": idx.version, "files_removed": removed, "vectors": idx.vector_type}
    _emit(result, as_json, lambda r: click.echo(f"compacted: {r['rows']} rows ({r['vectors']}), version "
                                                f"{r['version']}, {r['files_removed']} old files removed"))


@cli.command()
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
@click.option("--weights", default="imagenet", show_default=True, help="Only when INDEX is created.")
@click.option("--image-size", type=click.IntRange(min=8), default=None, help="Only when INDEX is created.")
@_estimator_options
@click.option("--json", "as_json", is_flag=True)
@_api_errors
def rebuild(index, manifest_file, workers, threads, ray_address, resume, allow_failures, probe, weights, image_size,
            estimator, trim, as_json):
    """Make INDEX hold exactly the rows of a manifest, embedded in parallel and committed at once."""
    from taskindex.rebuilds.run import rebuild as run

    try:
        report = run(index, manifest_file, workers=workers, threads=threads, resume=resume,
                     allow_failures=allow_failures, probe=probe, weights=None if weights == "random" else weights,
                     image_size=image_size, estimator=estimator, trim=trim, ray_address=ray_address,
                     progress=False if as_json else None).to_dict()
    except KeyboardInterrupt:
        click.echo(f"Interrupted: {index} is unchanged; `--resume` goes on from the rows already embedded.", err=True)
        sys.exit(130)

    def human(r):
        click.echo(f"{r['rows']} rows: {r['embedded']} embedded, {r['reused']} reused from an earlier run, "
                   f"{len(r['failed'])} failed ({r['seconds']:.0f} s, "
                   + (f"{r['workers']} workers)" if r["executor"] == "local" else f"{r['executor']})"))
        for f in r["failed"]:
            click.echo(f"  failed: {f['name']} (manifest line {f['line']}): {f['reason']}")
        click.echo(f"committed version {r['version']}" if r["committed"] else
                   "nothing committed: the index is unchanged; fix the rows and pass --resume, "
                   "or --allow-failures")

    _emit(report, as_json, human)
    if report["failed"] and not allow_failures:
        sys.exit(1)


def main():
    cli()
