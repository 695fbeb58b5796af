"""The plot command: an index drawn as the paper's figures (distance matrix, task map, complexity)."""

from __future__ import annotations

import click

from taskindex.cli.output import UserError, api_errors, json_output, template, writable_output
from taskindex.shipped import default_index_path


@click.command()
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
@json_output(template("wrote {output}"))
@api_errors
def plot(index, plot_kind, output, color_by, against, row_kind, where, method):
    """Draw INDEX (default: the shipped index) as a figure: the paper's Fig. 1 and 2 for your rows.

    Example:

    \b
        taskindex plot -o tasks.png
        taskindex plot --kind map --color-by dataset -o map.svg
        taskindex plot --kind complexity --against n_samples --where dataset=mnist -o complexity.pdf
    """
    from taskindex import plots
    from taskindex.index import TaskIndex
    from taskindex.index.filters import parse_where

    if not output.lower().endswith(plots.FORMATS):  # before any work, like the folder
        raise UserError(f"-o {output}: cannot tell the figure's format; end the name with {', '.join(plots.FORMATS)}")
    writable_output(output)
    where = parse_where(where)
    kind = {"all": None, None: None if plot_kind == "map" else "task"}.get(row_kind, row_kind)
    with TaskIndex.open(index or default_index_path(), readonly=True) as idx:
        if plot_kind == "matrix":
            fig = plots.plot_matrix(idx, color_by=color_by, where=where, kind=kind, method=method or "average")
        elif plot_kind == "map":
            fig = plots.plot_map(idx, color_by=color_by, where=where, kind=kind, method=method or "tsne")
        else:
            fig = plots.plot_complexity(idx, against=against, color_by=color_by, where=where, kind=kind)
    return {"output": plots.save(fig, output), "kind": plot_kind}


COMMANDS = [plot]
