"""Figures of an index, as in the paper: the clustered distance matrix (Fig. 2 left), a 2-D map of the
tasks (Fig. 1) and complexity against a column such as the error (Fig. 2 right).

Each function returns a matplotlib Figure built without pyplot, so it works headless and in notebooks
alike; `save` writes it as PNG, SVG or PDF. Rows are chosen like a query's (`where`, `kind`).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from taskindex import distance
from taskindex.index import filters
from taskindex.errors import TaskIndexError

KINDS = ("matrix", "map", "complexity")
FORMATS = (".png", ".svg", ".pdf")


def _rows(index, where, kind) -> tuple[pd.DataFrame, np.ndarray]:
    """The selected rows' metadata and vectors; at least two rows."""
    if kind not in (None, "task", "model"):
        raise TaskIndexError(f"unknown row kind {kind!r}: use 'task', 'model' or None (both)")
    frame = index.to_pandas()
    keep = filters.mask(frame, where) if where else np.ones(len(frame), dtype=bool)
    if kind is not None:
        keep &= (frame["kind"] == kind).to_numpy()
    frame = frame[keep].reset_index(drop=True)
    if len(frame) < 2:
        what = "no rows" if len(frame) == 0 else f"one row ({frame['name'].iloc[0]!r})"
        what = f"{what} to plot{' after the filter' if where or kind else ''}: a figure compares at least 2 rows"
        raise TaskIndexError(f"{what}; add rows or widen where= / kind= (kind=None plots tasks and models)",
                             cli=f"{what}; add rows or widen --where / --rows (--rows all plots tasks and models)")
    return frame, index.vectors(frame["name"].tolist())


def distance_matrix(vectors: np.ndarray) -> np.ndarray:
    """d_sym between every pair, exactly symmetric with a zero diagonal (what clustering and t-SNE expect)."""
    d = distance.pairwise(vectors)
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0.0)
    return d


def _column(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame.columns:
        usable = sorted(c for c in frame.columns if c not in ("id", "created"))
        raise TaskIndexError(f"unknown column {column!r}: use one of {', '.join(usable)}")
    return frame[column]


def _numeric(values: pd.Series) -> np.ndarray | None:
    """The values as floats when every present one is a number (not a boolean), else None."""
    present = [v for v in values.tolist() if not pd.isna(v)]
    if not present or not all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in present):
        return None
    return pd.to_numeric(values, errors="coerce").to_numpy(np.float64)


def _colours(values: pd.Series):
    """(one RGBA per row, legend entries [(label, colour)] or None, a ScalarMappable or None)."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    numbers = _numeric(values)
    if numbers is not None:
        finite = numbers[np.isfinite(numbers)]
        mappable = ScalarMappable(Normalize(finite.min(), finite.max()), colormaps["viridis"])
        return [mappable.to_rgba(v) if np.isfinite(v) else (0.8, 0.8, 0.8, 1) for v in numbers], None, mappable
    labels = ["(none)" if pd.isna(v) else str(v) for v in values.tolist()]
    levels = sorted(set(labels))
    cmap = colormaps["tab10" if len(levels) <= 10 else "tab20"]
    table = {lev: cmap(i % cmap.N) for i, lev in enumerate(levels)}
    return [table[lab] for lab in labels], [(lev, table[lev]) for lev in levels], None


def _legend(ax, entries, mappable, fig, title: str, corner: bool = False) -> None:
    """Categories as a legend right of `ax` (or in the figure's top-right corner); numbers as a colour bar."""
    if entries is not None:
        from matplotlib.patches import Patch

        handles = [Patch(color=c, label=lab) for lab, c in entries]
        where = {"loc": "upper right", "bbox_to_anchor": (0.98, 0.98)} if corner else {
            "loc": "upper left", "bbox_to_anchor": (1.02, 1.0)}
        (fig if corner else ax).legend(handles=handles, title=title, fontsize=8, title_fontsize=8, frameon=False,
                                       **where)
    elif mappable is not None:
        fig.colorbar(mappable, ax=ax, label=title, fraction=0.04)


def plot_matrix(index, color_by: str | None = None, where: dict | None = None, kind: str | None = "task",
           method: str = "average"):
    """d_sym between every pair of rows, ordered by hierarchical clustering, with its dendrogram."""
    from matplotlib.figure import Figure
    from scipy.cluster.hierarchy import dendrogram, linkage
    from scipy.spatial.distance import squareform

    frame, vectors = _rows(index, where, kind)
    colour_values = _column(frame, color_by) if color_by else None
    d = distance_matrix(vectors)
    tree = linkage(squareform(d, checks=False), method=method)
    n = len(frame)
    size = min(14.0, 4.0 + 0.18 * n)
    fig = Figure(figsize=(size + 2.5, size))
    grid = fig.add_gridspec(2, 3, height_ratios=(1, 5), width_ratios=(5, 0.25 if color_by else 0.01, 0.25),
                            hspace=0.02, wspace=0.03)
    top = fig.add_subplot(grid[0, 0])
    order = dendrogram(tree, ax=top, no_labels=True, color_threshold=0, above_threshold_color="0.3")["leaves"]
    top.set_axis_off()
    ax = fig.add_subplot(grid[1, 0])
    image = ax.imshow(d[np.ix_(order, order)], cmap="viridis_r", vmin=0, aspect="auto", interpolation="nearest")
    names = frame["name"].to_numpy()[order]
    font = max(4, min(9, int(400 / max(n, 1))))
    ax.set_yticks(range(n), names, fontsize=font)
    ax.set_xticks(range(n), names, fontsize=font, rotation=90)
    top.set_title(f"d_sym between {n} rows, ordered by {method}-linkage clustering", fontsize=10)
    if color_by:
        strip = fig.add_subplot(grid[1, 1])
        colours, entries, mappable = _colours(colour_values)
        strip.imshow(np.array(colours)[order][:, None, :], aspect="auto", interpolation="nearest")
        strip.set_xticks([0], [color_by], rotation=90, fontsize=8)
        strip.set_yticks([])
        _legend(strip, entries, mappable, fig, color_by, corner=True)
    fig.colorbar(image, cax=fig.add_subplot(grid[1, 2]), label="d_sym")
    return fig


def _embed_2d(d: np.ndarray, method: str, seed: int) -> np.ndarray:
    """t-SNE or UMAP of a distance matrix, on the idle cores only (taskindex.cores): their OpenMP threads
    spin-wait, so a thread on a core that another process holds slows a small map many times over."""
    from threadpoolctl import threadpool_limits

    from taskindex.cores import idle_cores

    n = len(d)
    if method == "tsne":
        from sklearn.manifold import TSNE

        reducer = TSNE(2, metric="precomputed", init="random", perplexity=min(30.0, (n - 1) / 3), random_state=seed)
    else:
        try:
            import umap
        except ImportError:
            raise TaskIndexError("UMAP needs umap-learn: pip install umap-learn, or use method 'tsne'") from None
        reducer = umap.UMAP(metric="precomputed", n_neighbors=min(15, n - 1), random_state=seed)
    with threadpool_limits(idle_cores()):
        return reducer.fit_transform(d)


def plot_map(index, color_by: str | None = None, where: dict | None = None, kind: str | None = None,
        method: str = "tsne", seed: int = 0):
    """A 2-D map whose nearness follows d_sym: t-SNE (scikit-learn) or UMAP (umap-learn) on the distances."""
    from matplotlib.figure import Figure

    if method not in ("tsne", "umap"):
        raise TaskIndexError(f"unknown map method {method!r}: use 'tsne' or 'umap'")
    frame, vectors = _rows(index, where, kind)
    colour_values = _column(frame, color_by) if color_by else None
    d = distance_matrix(vectors)
    n = len(frame)
    if n < 4:
        xy = _classical_mds(d)  # t-SNE and UMAP need a handful of points; 2-3 rows are placed exactly
    else:
        xy = _embed_2d(d, method, seed)
    fig = Figure(figsize=(8.5, 6.5))
    ax = fig.add_subplot()
    colours, entries, mappable = _colours(colour_values) if color_by else ([(0.2, 0.4, 0.7, 1)] * n, None, None)
    markers = {"task": "o", "model": "^"}
    for k, marker in markers.items():
        sel = (frame["kind"] == k).to_numpy()
        if sel.any():
            ax.scatter(xy[sel, 0], xy[sel, 1], c=np.array(colours)[sel], marker=marker, s=40,
                       edgecolors="0.2", linewidths=0.4, label=f"{k} rows")
    if n <= 80:
        for (x, y), name in zip(xy, frame["name"]):
            ax.annotate(name, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    label = "t-SNE" if method == "tsne" or n < 4 else "UMAP"
    ax.set_xlabel(f"{label} 1")
    ax.set_ylabel(f"{label} 2")
    ax.set_title(f"{n} rows, placed by d_sym ({label})" + (f", coloured by {color_by}" if color_by else ""),
                 fontsize=10)
    if color_by:
        _legend(ax, entries, mappable, fig, color_by)
    fig.tight_layout()
    return fig


def _classical_mds(d: np.ndarray) -> np.ndarray:
    n = len(d)
    j = np.eye(n) - 1.0 / n
    vals, vecs = np.linalg.eigh(-0.5 * j @ (d ** 2) @ j)
    top = np.argsort(vals)[::-1][:2]
    xy = vecs[:, top] * np.sqrt(np.maximum(vals[top], 0))
    return np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))


def plot_complexity(index, against: str = "n_samples", color_by: str | None = None, where: dict | None = None,
               kind: str | None = "task"):
    """Complexity c(t) = d_sym(t, t0) of each row against a numeric column, with their Spearman correlation."""
    from matplotlib.figure import Figure
    from scipy.stats import spearmanr

    frame, _ = _rows(index, where, kind)
    x = _numeric(_column(frame, against))
    if x is None:
        raise TaskIndexError(f"column {against!r} is not numeric: plot complexity against a column of numbers "
                             "(n_samples, n_classes or your own, e.g. a measured error)")
    y = frame["complexity"].to_numpy(np.float64)
    ok = np.isfinite(x)
    if ok.sum() < 2:
        raise TaskIndexError(f"fewer than 2 rows have a value in {against!r}: nothing to plot")
    fig = Figure(figsize=(7.5, 5.5))
    ax = fig.add_subplot()
    colours, entries, mappable = (_colours(_column(frame, color_by)[ok].reset_index(drop=True)) if color_by
                                  else ([(0.2, 0.4, 0.7, 1)] * int(ok.sum()), None, None))
    ax.scatter(x[ok], y[ok], c=np.array(colours), s=36, edgecolors="0.2", linewidths=0.4)
    rho = spearmanr(x[ok], y[ok])[0] if np.ptp(x[ok]) > 0 and np.ptp(y[ok]) > 0 else float("nan")
    ax.set_xlabel(against)
    ax.set_ylabel("complexity  d_sym(t, t0)")
    ax.set_title(f"complexity against {against}: Spearman {rho:.2f} over {int(ok.sum())} rows", fontsize=10)
    if color_by:
        _legend(ax, entries, mappable, fig, color_by)
    fig.tight_layout()
    return fig


def save(fig, path: str | os.PathLike) -> str:
    """Write the figure; the format follows the suffix. The folder must exist and be writable."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in FORMATS:
        raise TaskIndexError(f"cannot tell the format of {path!r}: end the name with {', '.join(FORMATS)}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise TaskIndexError(f"folder {folder!r} does not exist: create it or write the figure elsewhere")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise TaskIndexError(f"cannot write {path!r}: permission denied; choose another path")
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path
