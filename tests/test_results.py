"""Results the index remembers: measured errors stored with the index, versioned, checked, and used by fits."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from taskindex import TaskIndex, TaskIndexError
from taskindex._testing.index_harness import Synth, wide_probe
from taskindex.cli import cli
from taskindex.errors import IndexUsageError

TASKS = [f"t{i}" for i in range(6)]
MODELS = ["m0", "m1", "m2"]


@pytest.fixture
def path(tmp_path):
    with TaskIndex.create(tmp_path / "ix", probe=wide_probe()) as idx:
        synth = Synth(idx)
        idx.add_many([(t, synth.make(i)) for i, t in enumerate(TASKS)])
        for m, t in zip(MODELS, TASKS):
            idx.add_model(m, t)
    return tmp_path / "ix"


def _table(draw: int = 0, **extra) -> pd.DataFrame:
    rng = np.random.default_rng(draw)
    rows = [{"task": t, "model": m, "error": float(rng.uniform(0.05, 0.5)), **extra} for t in TASKS for m in MODELS]
    return pd.DataFrame(rows)


def test_results_are_one_commit_kept_on_reopen_compact_and_a_rebuild_of_the_same_rows(path):
    table = _table(notes="first run")
    with TaskIndex.open(path) as idx:
        version = idx.version
        assert idx.add_results(table) == 18 and idx.version == version + 1
        idx.remove("t5")  # a removed task's results stay: they are history
        idx.compact()
        same = [(n, idx.get(n)[0], idx.metadata(idx._v.row(n))["kind"]) for n in idx.names()]
        idx.add_many([(n, e, k) for n, e, k in same], only=True)
    with TaskIndex.open(path, readonly=True) as idx:
        held = idx.results()
        assert len(held) == 18 and set(held.columns) == {"task", "model", "error", "notes"}
        pd.testing.assert_frame_equal(held.sort_values(["task", "model"]).reset_index(drop=True),
                                      table.sort_values(["task", "model"]).reset_index(drop=True), check_dtype=False)
        assert idx.verify() == []
        import duckdb

        results = idx.to_arrow("results")
        assert duckdb.sql("select count(*) from results where error > 0").fetchall() == [(18,)]


@pytest.mark.parametrize("change, message", [
    (lambda t: t.assign(task=t["task"].where(t.index != 3, "nope")), "names 1 task"),
    (lambda t: t.assign(model=t["model"].where(t.index != 0, "t1")), "names 1 model"),
    (lambda t: t.assign(error=t["error"].where(t.index != 2, np.nan)), "errors must be finite numbers >= 0"),
    (lambda t: pd.concat([t, t.head(1)]), r"\('t0', 'm0'\) appears 2 times"),
    (lambda t: t.drop(columns="error"), "lacks column"),
])
def test_bad_results_are_refused_with_one_line_and_nothing_is_written(path, change, message):
    with TaskIndex.open(path) as idx:
        version = idx.version
        with pytest.raises(TaskIndexError, match=message):
            idx.add_results(change(_table()))
        assert idx.version == version and len(idx.results()) == 0


def test_a_pair_already_held_is_refused_unless_replaced_and_seeds_tell_repeats_apart(path):
    with TaskIndex.open(path) as idx:
        idx.add_results(_table(0, seed=0))
        idx.add_results(_table(1, seed=1))  # other seeds: new results, not duplicates
        assert len(idx.results()) == 36
        with pytest.raises(IndexUsageError, match=r"already holds a result for \('t0', 'm0', 0\).*replace=True"):
            idx.add_results(_table(2, seed=0))
        idx.add_results(_table(2, seed=0), replace=True)
        held = idx.results()
        assert len(held) == 36
        new = _table(2, seed=0).set_index(["task", "model"])["error"]
        mine = held[held["seed"] == 0].set_index(["task", "model"])["error"]
        pd.testing.assert_series_equal(mine.sort_index(), new.sort_index())


def test_fit_without_a_table_uses_the_mean_of_the_results_held(path):
    with TaskIndex.open(path) as idx:
        with pytest.raises(IndexUsageError, match="holds no results"):
            idx.fit_model2vec()
        a, b = _table(0, seed=0), _table(1, seed=1)
        idx.add_results(pd.concat([a, b]))
        mean = a.assign(error=(a["error"].to_numpy() + b["error"].to_numpy()) / 2)
        stored = idx.fit_model2vec(seed=3, max_steps=20)
        explicit = idx.fit_model2vec(mean, seed=3, max_steps=20)
        assert {k: v for k, v in stored.items() if k != "seconds"} == {k: v for k, v in explicit.items()
                                                                        if k != "seconds"}


def test_the_cli_mirrors_the_api(path, tmp_path):
    runner = CliRunner()
    csv = tmp_path / "errors.csv"
    _table().to_csv(csv, index=False)
    added = runner.invoke(cli, ["results", "add", str(path), str(csv), "--json"])
    assert added.exit_code == 0, added.output
    assert json.loads(added.output)["results"] == 18
    again = runner.invoke(cli, ["results", "add", str(path), str(csv)])
    assert again.exit_code == 2 and "pass --replace" in again.output and "replace=True" not in again.output
    listed = runner.invoke(cli, ["results", "ls", str(path), "--json"])
    with TaskIndex.open(path, readonly=True) as idx:
        assert json.loads(listed.output) == json.loads(idx.results().to_json(orient="records"))
    fit = runner.invoke(cli, ["model2vec", "fit", str(path), "--max-steps", "5", "--json"])
    assert fit.exit_code == 0, fit.output
    assert json.loads(fit.output)["tasks"] == 6


def test_a_fit_that_does_not_improve_says_so_and_selection_reports_asym(path):
    """A table where d_asym already ranks perfectly leaves nothing to learn: the summary and the CLI say the fit
    did not improve, and selection names the score it really uses."""
    with TaskIndex.open(path) as idx:
        held = TASKS[int(np.random.default_rng(0).permutation(len(TASKS))[0])]  # what fit(seed=0) holds out
        # the training tasks all prefer m0, the held-out task least of all: every step it learns hurts that task
        flat = pd.DataFrame([{"task": t, "model": m, "error": (0.5 if m == "m0" else 0.1) if t == held else
                              (0.1 if m == "m0" else 0.5)} for t in TASKS for m in MODELS])
        summary = idx.fit_model2vec(flat, max_steps=30, holdout=1 / 6)
        assert summary["improved"] is False and summary["best_step"] == 0
        hits = idx.select_model("t4", k=3, by="model2vec")
        assert {h.ranked_by for h in hits} == {"asym"}
        assert [h.name for h in hits] == [h.name for h in idx.select_model("t4", k=3, by="asym")]
    csv = path.parent / "flat.csv"
    flat.to_csv(csv, index=False)
    r = CliRunner().invoke(cli, ["model2vec", "fit", str(path), str(csv), "--max-steps", "30", "--holdout",
                                 str(1 / 6)])
    assert r.exit_code == 0 and "did not lower the held-out loss" in r.output
