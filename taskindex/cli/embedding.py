"""The embedding commands: embed a task into a .emb file, the distance of two, and the probes and samples to use."""

from __future__ import annotations

import click

from taskindex.cli.options import data_options, estimator_options, skip_bad_images_option, weights_option
from taskindex.cli.output import UserError, api_errors, json_output, progress, table, template, writable_output


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


def _show_embedding(r: dict) -> None:
    click.echo("{task}: {n_samples} images, {n_classes} classes -> {output} ({dim} filters, complexity "
               "{complexity:.4f}, {seconds:.1f} s)".format(**r))
    if r.get("skipped_images"):
        click.echo(f"skipped {r['skipped_images']} unreadable images:")
        for s in r["skipped_files"]:
            click.echo(f"  {s['image']}: {s['error']}")


@click.command()
@click.argument("data")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the .emb file.")
@click.option("--probe", default="efficientnet_lite0", show_default=True,
              help="Probe network (see `taskindex probes`).")
@weights_option()
@click.option("--method", type=click.Choice(["montecarlo", "variational"]), default="montecarlo", show_default=True,
              help="montecarlo: the Fisher of the sampled images; variational: the paper's robust estimate.")
@click.option("--expectation", type=click.Choice(["exact", "sample"]), default="exact", show_default=True,
              help="Sum over labels (C-1 backward passes), or draw one label per image.")
@click.option("--label-passes", default=None, metavar="N|all",
              help="With --expectation exact: keep the N most informative label directions, or all C-1 "
                   "(default: 2, as in Python).")
@estimator_options
@click.option("--image-size", type=click.IntRange(min=8), default=None, help="Input resolution (default: the probe's).")
@click.option("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when available).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sample and of drawn labels.")
@skip_bad_images_option
@data_options
@json_output(_show_embedding)
@api_errors
def embed(data, output, probe, weights, method, expectation, label_passes, estimator, trim, image_size, device, seed,
          on_error, max_samples, image_column, label_column):
    """Embed the task in DATA (folder, .parquet, .csv or sample:NAME) into a .emb file.

    Example:

    \b
        taskindex embed sample:fashion-footwear -o footwear.emb
        taskindex embed ./pets -o pets.emb --probe resnet34 --max-samples 500
        taskindex embed tasks.parquet -o t.emb --image-column img --label-column y --json
    """
    from taskindex.data.sources import load_task
    from taskindex.distance import complexity
    from taskindex.embedding.pipeline import embed as embed_task
    from taskindex.embedding.probes import load_probe

    passes = _label_passes(label_passes)  # before any work
    writable_output(output)
    task = load_task(data, image_column, label_column)
    p = load_probe(probe, weights=weights, image_size=image_size, device=device)
    emb = embed_task(task, p, method=method, expectation=expectation, estimator=estimator, trim=trim,
                     max_samples=max_samples, seed=seed, progress=progress(),
                     on_error=on_error, **passes)
    emb.save(output)
    return {"output": output, "dim": emb.dim, "complexity": complexity(emb), **emb.meta}


@click.command()
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@click.option("--metric", type=click.Choice(["sym", "asym"]), default="sym", show_default=True,
              help="sym: d_sym(A, B); asym: d_asym(A -> B) = d_sym - alpha * complexity(A).")
@click.option("--alpha", type=float, default=0.15, show_default=True, help="Complexity weight of --metric asym.")
@json_output(template("{distance:.6f}"))
@api_errors
def distance(a, b, metric, alpha):
    """Distance between two embedding files A and B.

    Example:

    \b
        taskindex distance footwear.emb pets.emb
        taskindex distance footwear.emb pets.emb --metric asym --alpha 0.2 --json
    """
    from taskindex import distance as dist
    from taskindex.embedding.vector import Embedding

    ea, eb = Embedding.load(a), Embedding.load(b)
    value = dist.d_sym(ea, eb) if metric == "sym" else dist.d_asym(ea, eb, alpha=alpha)
    result = {"a": a, "b": b, "metric": metric, "distance": value,
              "complexity_a": dist.complexity(ea), "complexity_b": dist.complexity(eb)}
    return {**result, "alpha": alpha} if metric == "asym" else result


@click.command()
@json_output(lambda rows: table(rows, ["name", "image_size", "imagenet_weights"]))
@api_errors
def probes():
    """List the registered probe networks.

    Example:

    \b
        taskindex probes
        taskindex probes --json
    """
    from taskindex.embedding.registry import list_probes, probe_spec

    return [{"name": n, "image_size": probe_spec(n).default_image_size, "imagenet_weights": probe_spec(n).pretrained}
            for n in list_probes()]


@click.command()
@click.option("--dataset", type=click.Choice(["fashion-mnist", "mnist", "digits"]), default=None,
              help="Only the tasks cut from this dataset.")
@json_output(lambda rows: table(rows, ["name", "dataset", "group", "classes"]))
@api_errors
def samples(dataset):
    """List the named sample tasks (use them as DATA with sample:NAME).

    Example:

    \b
        taskindex samples --dataset mnist
        taskindex embed sample:mnist-round -o round.emb
    """
    from taskindex.data import samples as s

    rows = [s.describe(n) for n in s.names(dataset)]
    return [{**r, "classes": ", ".join(r["classes"])} for r in rows]


COMMANDS = [embed, distance, probes, samples]
