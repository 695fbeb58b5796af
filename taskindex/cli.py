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

from . import __version__


class UserError(click.ClickException):
    exit_code = 2

    def show(self, file=None):
        click.echo(f"Error: {self.format_message()}", err=True)


def _api_errors(fn):
    """Turn the library's user errors into one clean line and exit status 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .errors import TaskIndexError

        try:
            return fn(*args, **kwargs)
        except TaskIndexError as exc:
            raise UserError(str(exc)) from None
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


def load_task(data: str, image_column: str, label_column: str):
    """DATA is a folder (ImageFolder), a .parquet or .csv file, or sample:NAME."""
    from . import samples
    from .errors import TaskError
    from .tasks import Task

    if data.startswith("sample:"):
        return samples.load(data.split(":", 1)[1])
    if os.path.isdir(data):
        return Task.from_folder(data)
    lower = data.lower()
    if lower.endswith(".parquet"):
        return Task.from_parquet(data, image_column=image_column, label_column=label_column)
    if lower.endswith(".csv"):
        return Task.from_csv(data, image_column=image_column, label_column=label_column)
    if not os.path.exists(data):
        raise TaskError(f"{data!r} does not exist: pass an image folder, a .parquet or .csv file, or sample:NAME "
                        "(see `taskindex samples`)")
    raise TaskError(f"cannot read a task from {data!r}: pass an image folder (one sub-folder per class), "
                    "a .parquet or .csv file, or sample:NAME")


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
@click.option("--expectation", type=click.Choice(["sample", "exact"]), default="sample", show_default=True,
              help="montecarlo: draw one label per image, or sum over all labels.")
@click.option("--image-size", type=click.IntRange(min=8), default=None, help="Input resolution (default: the probe's).")
@click.option("--max-samples", type=click.IntRange(min=2), default=1000, show_default=True,
              help="Class-balanced cap on the images used.")
@click.option("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when available).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--image-column", default="image", show_default=True, help="Parquet/CSV column of images.")
@click.option("--label-column", default="label", show_default=True, help="Parquet/CSV column of labels.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_api_errors
def embed(data, output, probe, weights, method, expectation, image_size, max_samples, device, seed,
          image_column, label_column, as_json):
    """Embed the task in DATA (folder, .parquet, .csv or sample:NAME) into a .emb file."""
    from .embedding import embed as embed_task
    from .probes import load_probe

    task = load_task(data, image_column, label_column)
    p = load_probe(probe, weights=None if weights == "random" else weights, image_size=image_size, device=device)
    emb = embed_task(task, p, method=method, expectation=expectation, max_samples=max_samples, seed=seed,
                     progress=False if as_json else None)
    emb.save(output)
    from .distance import complexity

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
    from . import distance as dist
    from .embedding import Embedding

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
    from .probes import list_probes, probe_spec

    rows = [{"name": n, "image_size": probe_spec(n).default_image_size, "imagenet_weights": probe_spec(n).pretrained}
            for n in list_probes()]
    _emit(rows, as_json, lambda r: _table(r, ["name", "image_size", "imagenet_weights"]))


@cli.command()
@click.option("--dataset", type=click.Choice(["fashion-mnist", "mnist", "digits"]), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_api_errors
def samples(dataset, as_json):
    """List the named sample tasks (use them as DATA with sample:NAME)."""
    from . import samples as s

    rows = [s.describe(n) for n in s.names(dataset)]
    for r in rows:
        r["classes"] = ", ".join(r["classes"])
    _emit(rows, as_json, lambda r: _table(r, ["name", "dataset", "group", "classes"]))


def main():
    cli()
