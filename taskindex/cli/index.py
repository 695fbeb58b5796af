"""The index commands: create an index, add, list and remove its rows, and read, check, warm and compact it."""

from __future__ import annotations

import click

from taskindex.cli.options import data_options, estimator_options, skip_bad_images_option, weights_option
from taskindex.cli.output import Exit, api_errors, json_output, progress, row_table, template
from taskindex.cli.search import show_skipped, skipped
from taskindex.cli.versions import wait_option
from taskindex.shipped import default_index_path


def _parse_meta(pairs: tuple[str, ...]) -> dict:
    """--meta key=value pairs -> the API's metadata dict (values read as numbers and booleans where they are)."""
    from taskindex.errors import TaskIndexError
    from taskindex.index.filters import parse_value

    meta = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise TaskIndexError(f"cannot parse --meta {pair!r}: use key=value, e.g. --meta dataset=cifar10")
        meta[key.strip()] = parse_value(value.strip())
    return meta


@click.command()
@click.argument("index", type=click.Path())
@click.option("--probe", default="efficientnet_lite0", show_default=True)
@weights_option()
@click.option("--image-size", type=click.IntRange(min=8), default=None)
@click.option("--method", type=click.Choice(["montecarlo", "variational"]), default="montecarlo", show_default=True)
@estimator_options
@click.option("--vectors", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True,
              help="How raw vectors are stored: bfloat16 halves the disk (README, Scale).")
@json_output(template("created {path}: {probe} @ {image_size} px, {method}, {estimator}, {dim} filters, "
                      "{vectors} vectors"))
@api_errors
def create(index, probe, weights, image_size, method, estimator, trim, vectors):
    """Create an empty index at INDEX for one probe, method and estimator.

    Example:

    \b
        taskindex create my.index
        taskindex create my.index --probe resnet18 --weights random --image-size 32 --vectors bfloat16
    """
    from taskindex.index import TaskIndex

    with TaskIndex.create(index, probe=probe, weights=weights, image_size=image_size, method=method,
                          estimator=estimator, trim=trim, vectors=vectors) as idx:
        return idx.info()


def _check_add_flags(index, name, data, embedding_file, source_task, kind) -> None:
    """What add takes its row from: one of DATA, --embedding, --source (a model), or none of them (a black box)."""
    from taskindex.errors import TaskIndexError
    from taskindex.index.storage import Store

    if data is not None and Store(data).exists() and not Store(index).exists():
        raise TaskIndexError(f"{data} is the index and {index} the data: INDEX comes first, "
                             f"`taskindex add {data} {name} {index}`")
    if source_task is not None and kind != "model":
        raise TaskIndexError("--source names a model's training task: add it with --kind model")
    given = sum(x is not None for x in (data, embedding_file, source_task))
    if given > 1 or (given == 0 and kind != "model"):
        raise TaskIndexError("pass exactly one of DATA (folder, .parquet, .csv, sample:NAME) or --embedding FILE"
                             + (" or --source TASK" if kind == "model" else ""))


@click.command()
@click.argument("index", type=click.Path())
@click.argument("name")
@click.argument("data", required=False)
@click.option("--embedding", "embedding_file", type=click.Path(), help="Add a saved .emb file instead of DATA.")
@click.option("--kind", type=click.Choice(["task", "model"]), default="task", show_default=True,
              help="A task row (a dataset) or a model row (an expert, see --source).")
@click.option("--source", "source_task", default=None,
              help="With --kind model: the task row the model was trained on (none of DATA, --embedding and "
                   "--source: a black-box model).")
@click.option("--meta", multiple=True, help="key=value metadata (repeatable).")
@click.option("--replace", is_flag=True, help="Replace a row of the same name (upsert).")
@data_options
@skip_bad_images_option
@wait_option
@json_output(lambda r: (template("added {name} ({kind}): {rows} rows, version {version}")(r), show_skipped(r)))
@api_errors
def add(index, name, data, embedding_file, kind, source_task, meta, replace, max_samples, image_column, label_column,
        on_error, wait):
    """Add NAME to INDEX: embed DATA with the index's probe, take --embedding FILE, or (a model) --source TASK.

    Example:

    \b
        taskindex add my.index footwear sample:fashion-footwear --meta dataset=fashion-mnist
        taskindex add my.index footwear --embedding footwear.emb --replace
        taskindex add my.index footwear-expert --kind model --source footwear
        taskindex add my.index pets pets.parquet --image-column img --label-column y
        taskindex add my.index pets pets.parquet --wait 600
    """
    from taskindex.embedding.vector import Embedding
    from taskindex.errors import IndexUsageError
    from taskindex.index import TaskIndex

    _check_add_flags(index, name, data, embedding_file, source_task, kind)
    metadata = _parse_meta(meta)
    emb = Embedding.load(embedding_file) if embedding_file else None  # None: --source TASK, or a black box
    if data is not None:
        with TaskIndex.open(index, readonly=True) as reader:  # embedding takes minutes: the writer lock waits
            if name in reader and not replace:  # add refuses it too, but only after the embedding
                raise IndexUsageError(f"a row named {name!r} already exists in {index}: pass --replace to replace "
                                      "it or choose another name")
            emb = reader.embed(data, max_samples, image_column=image_column, label_column=label_column,
                               progress=progress(), on_error=on_error)
    with TaskIndex.open(index, lock_timeout=wait) as idx:
        if kind == "model":
            idx.add_model(name, source_task if emb is None else emb, metadata=metadata, replace=replace)
        else:
            (idx.upsert if replace else idx.add)(name, emb, kind=kind, metadata=metadata)
        return {"name": name, "kind": kind, "rows": len(idx), "version": idx.version,
                **(skipped(emb) if data is not None else {})}


@click.command(name="ls")
@click.argument("index", required=False)
@click.option("--kind", type=click.Choice(["task", "model"]), default=None,
              help="Only task rows or only model rows (default: both).")
@click.option("--where", multiple=True, help="Filter rows like query --where.")
@json_output(lambda rows: row_table(rows, ["name", "kind", "complexity"]))
@api_errors
def ls_cmd(index, kind, where):
    """List the rows of INDEX (default: the shipped index).

    Example:

    \b
        taskindex ls --kind model
        taskindex ls --where dataset=mnist --where "group in subset,semantic"
        taskindex ls my.index --json
    """
    import json

    from taskindex.index import TaskIndex
    from taskindex.index.filters import parse_where

    with TaskIndex.open(index or default_index_path(), readonly=True) as idx:
        frame = idx.to_pandas(where=parse_where(where), kind=kind)
    return json.loads(frame.to_json(orient="records"))


def _show_info(info: dict) -> None:
    for key, value in info.items():
        click.echo(f"{key:14s} {value}")


@click.command()
@click.argument("index", required=False)
@json_output(_show_info)
@api_errors
def info(index):
    """Probe, method, size and storage of INDEX (default: the shipped index).

    Example:

    \b
        taskindex info
        taskindex info my.index --json
    """
    from taskindex.index import TaskIndex

    with TaskIndex.open(index or default_index_path(), readonly=True) as idx:
        return idx.info()


@click.command()
@click.argument("index")
@click.argument("names", nargs=-1, required=True)
@wait_option
@json_output(lambda r: click.echo(f"removed {len(r['removed'])}: {r['rows']} rows, version {r['version']}"))
@api_errors
def rm(index, names, wait):
    """Remove rows NAMES from INDEX, in one commit (an unknown name removes none of them).

    Example:

    \b
        taskindex rm my.index footwear
        taskindex rm my.index footwear footwear-expert pets
    """
    from taskindex.index import TaskIndex

    with TaskIndex.open(index, lock_timeout=wait) as idx:
        idx.remove(*names)
        return {"removed": list(names), "rows": len(idx), "version": idx.version}


@click.command()
@click.argument("index", required=False)
@json_output(lambda r: click.echo("ok" if r["ok"] else "\n".join(r["problems"])))
@api_errors
def verify(index):
    """Check every file of INDEX against its manifest (sizes and sha256). Exit 1 if damaged.

    Example:

    \b
        taskindex verify
        taskindex verify my.index --json
    """
    from taskindex.index import verify as verify_index

    path = index or default_index_path()
    problems = verify_index(path)
    return Exit({"index": path, "ok": not problems, "problems": problems}, 1 if problems else 0)


@click.command()
@click.argument("index", required=False)
@json_output(lambda r: click.echo(f"warmed {r['bytes'] / 2**20:,.1f} MiB in {r['seconds']:.1f} s"))
@api_errors
def warm(index):
    """Read INDEX's vectors into the OS page cache, so the first queries of any process do not wait on the disk.

    Example:

    \b
        taskindex warm
        taskindex warm my.index --json
    """
    import time

    from taskindex.index import TaskIndex

    path = index or default_index_path()
    start = time.perf_counter()
    with TaskIndex.open(path, readonly=True) as idx:
        nbytes = idx.warm()
    return {"index": path, "bytes": nbytes, "seconds": round(time.perf_counter() - start, 3)}


def _spans(numbers: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _versions(numbers: list[int]) -> str:
    """[7] -> 'version 7', [1, 2, 5] -> 'versions 1-2, 5'."""
    return f"version{'' if len(numbers) == 1 else 's'} {_spans(numbers)}"


@click.command()
@click.argument("index")
@click.option("--vectors", type=click.Choice(["float32", "bfloat16"]), default=None,
              help="Also convert the stored vectors (the upgrade path to bfloat16; default: keep them).")
@click.option("--keep", type=click.IntRange(min=1), default=None,
              help="Versions to keep, the compacted one included (default 5; 1 frees the most disk).")
@wait_option
@json_output(lambda r: click.echo(
    f"compacted: {r['rows']} rows ({r['vectors']}), version {r['version']}; kept {_versions(r['kept'])}; removed "
    + (_versions(r["versions_removed"]) if r["versions_removed"] else "no version")
    + f" and {r['files_removed']} file{'' if r['files_removed'] == 1 else 's'} no kept version uses"))
@api_errors
def compact(index, vectors, keep, wait):
    """Fold INDEX's segments into one, keep the last few versions, and delete files no kept version needs.

    A version that an open reader holds is kept too, until the reader moves on.

    Example:

    \b
        taskindex compact my.index
        taskindex compact my.index --keep 1 --vectors bfloat16
    """
    from taskindex.index import TaskIndex
    from taskindex.index.history import KEEP_VERSIONS

    with TaskIndex.open(index, lock_timeout=wait) as idx:
        before = [v["version"] for v in idx.versions()]
        removed = idx.compact(vectors=vectors, keep=KEEP_VERSIONS if keep is None else keep)
        kept = [v["version"] for v in idx.versions()]
        return {"rows": len(idx), "version": idx.version, "files_removed": removed, "vectors": idx.vector_type,
                "kept": kept, "versions_removed": [v for v in before if v not in kept]}


@click.command(name="alpha")
@click.argument("index")
@click.argument("value", type=click.FloatRange(min=0), required=False)
@wait_option
@json_output(template("alpha {alpha:g} (version {version}; MODEL2VEC: {model2vec})"))
@api_errors
def alpha_cmd(index, value, wait):
    """Show INDEX's alpha (the complexity weight of d_asym), or store VALUE.

    Example:

    \b
        taskindex alpha my.index
        taskindex alpha my.index 0.2
    """
    from taskindex.index import TaskIndex

    with TaskIndex.open(index, readonly=value is None, lock_timeout=None if value is None else wait) as idx:
        if value is not None:
            idx.set_alpha(value)
        return {"alpha": idx.alpha, "version": idx.version, "model2vec": idx.info()["model2vec"]}


COMMANDS = [create, add, ls_cmd, info, rm, verify, warm, compact, alpha_cmd]
