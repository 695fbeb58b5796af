"""Figures of an index (taskindex.plots and `taskindex plot`): what they draw, and their clear errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from taskindex import Embedding, TaskIndex, TaskIndexError, plots
from taskindex.cli import cli

from clikit import assert_user_error


@pytest.fixture
def index(tmp_path, tiny_probe):
    """Eight tasks in two groups (one scale pattern each) and one model row."""
    idx = TaskIndex.create(tmp_path / "i", probe=tiny_probe)
    rng = np.random.default_rng(0)
    centres = [rng.gamma(1.0, 1e-3, idx.dim) for _ in range(2)]
    items = []
    for i in range(8):
        g = i % 2
        fisher = centres[g] * np.exp(rng.normal(0, 0.1, idx.dim))
        emb = Embedding(fisher.astype(np.float32) + idx.prior, idx.prior, idx.layout, {**idx.space, "task": f"t{i}",
                                                                                       "n_samples": 10 * (i + 1)})
        items.append((f"t{i}", emb, "task", {"family": "ab"[g], "error": 0.05 * i}))
    idx.add_many(items)
    idx.add_model("expert", "t0")
    yield idx
    idx.close()


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_matrix_is_ordered_by_clustering_with_a_colour_strip(index, tmp_path):
    fig = plots.plot_matrix(index, color_by="family")
    heat = next(ax for ax in fig.axes if ax.images and len(ax.get_yticklabels()) == 8)
    rows = [t.get_text() for t in heat.get_yticklabels()]
    assert sorted(rows) == [f"t{i}" for i in range(8)]  # the model row is left out by default
    # the two families are the two clusters: each is contiguous in the clustered order
    families = ["ab"[int(r[1:]) % 2] for r in rows]
    assert families in (["a"] * 4 + ["b"] * 4, ["b"] * 4 + ["a"] * 4)
    assert any("d_sym" in ax.get_ylabel() for ax in fig.axes)  # the colour bar
    assert any(t.get_text() == "family" for ax in fig.axes for t in ax.get_xticklabels())
    out = plots.save(fig, tmp_path / "m.png")
    assert os.path.getsize(out) > 10_000 and min(png_size(out)) > 300


def test_map_places_each_family_together(index, tmp_path, one_blas_thread):
    fig = plots.plot_map(index, color_by="family", kind="task")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "t-SNE 1" and ax.get_ylabel() == "t-SNE 2"
    xy = ax.collections[0].get_offsets()
    assert len(xy) == 8
    family = np.arange(8) % 2
    centre = np.array([xy[family == g].mean(0) for g in (0, 1)])
    within = np.mean([np.linalg.norm(p - centre[g]) for p, g in zip(xy, family)])
    assert np.linalg.norm(centre[0] - centre[1]) > 2 * within
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"a", "b"}
    plots.save(fig, tmp_path / "map.svg")
    assert (tmp_path / "map.svg").read_text().lstrip().startswith("<?xml")


def test_the_map_runs_its_threads_on_the_idle_cores_only(index, monkeypatch):
    """t-SNE's OpenMP threads spin-wait: on a machine where others hold cores the map takes one thread per
    idle core (taskindex.cores), never the default of one per core."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_info

    from taskindex import cores

    monkeypatch.setattr(cores, "idle_cores", lambda own_threads=1: 1)  # one idle core of this machine's 2
    seen, fit = [], TSNE.fit_transform
    monkeypatch.setattr(TSNE, "fit_transform", lambda self, *a, **kw: seen.append(
        {p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"}) or fit(self, *a, **kw))
    plots.plot_map(index, kind="task")
    assert seen == [{1}]


def test_complexity_against_a_column_reports_its_spearman(index):
    fig = plots.plot_complexity(index, against="error")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "error" and "complexity" in ax.get_ylabel()
    x, y = ax.collections[0].get_offsets().T
    assert np.allclose(sorted(x), [0.05 * i for i in range(8)])
    frame = index.to_pandas().set_index("name")
    assert np.allclose(sorted(y), sorted(frame.loc[[f"t{i}" for i in range(8)], "complexity"]))
    from scipy.stats import spearmanr

    assert f"Spearman {spearmanr(x, y)[0]:.2f}" in ax.get_title()


def _deny_writes(monkeypatch, *paths) -> None:
    """os.access says `paths` are not writable, for any user: what a non-root user meets in a chmod 500 folder
    and anyone on a read-only mount (root passes the real permission bits, and CI runs as root)."""
    real, denied = os.access, {os.path.abspath(p) for p in paths}
    monkeypatch.setattr(os, "access", lambda path, mode, *args, **kwargs: (
        False if mode & os.W_OK and os.path.abspath(path) in denied else real(path, mode, *args, **kwargs)))


def test_bad_inputs_are_clear_errors(index, tmp_path, tiny_probe, monkeypatch):
    with pytest.raises(TaskIndexError, match="unknown column 'colour': use one of .*family"):
        plots.plot_matrix(index, color_by="colour")
    with pytest.raises(TaskIndexError, match="one row \\('expert'\\) to plot"):
        plots.plot_matrix(index, kind="model")
    with pytest.raises(TaskIndexError, match="no rows to plot after the filter"):
        plots.plot_map(index, where={"family": "z"})
    with pytest.raises(TaskIndexError, match="column 'family' is not numeric"):
        plots.plot_complexity(index, against="family")
    with TaskIndex.create(tmp_path / "empty", probe=tiny_probe) as empty:
        with pytest.raises(TaskIndexError, match="no rows to plot"):
            plots.plot_matrix(empty)
    fig = plots.plot_complexity(index)
    with pytest.raises(TaskIndexError, match="does not exist"):
        plots.save(fig, tmp_path / "missing" / "c.png")
    with pytest.raises(TaskIndexError, match="end the name with .png"):
        plots.save(fig, tmp_path / "c.jpeg")
    locked, taken = tmp_path / "locked", tmp_path / "taken.png"
    locked.mkdir()
    taken.write_bytes(b"someone else's figure")
    _deny_writes(monkeypatch, locked, taken)
    with pytest.raises(TaskIndexError, match=r"cannot write '.*locked/c\.png': permission denied; choose another"):
        plots.save(fig, locked / "c.png")
    with pytest.raises(TaskIndexError, match=r"cannot write '.*taken\.png': permission denied"):
        plots.save(fig, taken)  # an existing file that may not be overwritten, in a writable folder
    assert os.listdir(locked) == [] and taken.read_bytes() == b"someone else's figure"
    monkeypatch.undo()
    assert os.path.getsize(plots.save(fig, locked / "c.png")) > 0  # the same folder, writable: the figure lands


def test_cli_plot_writes_each_kind_and_refuses_bad_input(index, tmp_path, one_blas_thread):
    path = str(tmp_path / "i")
    index.close()
    runner = CliRunner()
    for kind in plots.KINDS:
        out = tmp_path / f"{kind}.png"
        result = runner.invoke(cli, ["plot", path, "--kind", kind, "--color-by", "family", "--against", "error",
                                     "-o", str(out)])
        assert result.exit_code == 0, result.output
        assert png_size(out)[0] > 300
    assert_user_error(runner.invoke(cli, ["plot", path, "--color-by", "nope", "-o", str(tmp_path / "x.png")]),
                      "unknown column 'nope'")
    assert_user_error(runner.invoke(cli, ["plot", path, "-o", str(tmp_path / "no" / "x.png")]), "does not exist")
    assert_user_error(runner.invoke(cli, ["plot", path, "--rows", "model", "-o", str(tmp_path / "x.png")]),
                      "one row")


def test_cli_plot_into_a_folder_it_may_not_write_is_one_line(index, tmp_path, monkeypatch):
    path = str(tmp_path / "i")
    index.close()
    locked = tmp_path / "locked"
    locked.mkdir()
    _deny_writes(monkeypatch, locked)
    line = assert_user_error(CliRunner().invoke(cli, ["plot", path, "--kind", "complexity", "-o",
                                                      str(locked / "x.png")]), "permission denied")
    assert str(locked / "x.png") in line and os.listdir(locked) == []
