"""The shipped index (taskindex/package_data/default.index) and `make demo`: what a new user sees first."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from taskindex import TaskIndex
from taskindex.shipped import default_index_path
from taskindex.index.task_index import verify

from taskindex.shipped import EXPERT_ERRORS as ERRORS


def test_shipped_index_holds_the_benchmark_experts_and_their_fit():
    assert verify(default_index_path()) == []
    with TaskIndex.open(default_index_path(), readonly=True) as index:
        frame = index.to_pandas()
        models = frame[frame["kind"] == "model"]
        tasks = set(frame.loc[frame["kind"] == "task", "name"])
        errors = pd.read_csv(ERRORS)
        assert set(models["name"]) == set(errors["model"]) and len(models) >= 13
        # every expert names what it was trained on: a task of the index, or ImageNet (the black box)
        assert set(models["source_task"]) - tasks == {"imagenet"}
        assert set(errors["task"]) <= tasks
        fit = index.model2vec
        assert fit is not None and sorted(fit["models"]) == sorted(models["name"])
        assert fit["summary"]["val_loss"] < fit["summary"]["initial_val_loss"]
        held = index.results()  # the benchmark's errors, remembered: selection ranks by them
        assert len(held) == len(errors) and set(held["task"]) == set(errors["task"])
        hits = index.select_model("fashion-footwear", k=3, by="model2vec")  # the fit improved: it is used
        assert [h.ranked_by for h in hits] == ["model2vec"] * 3 and all(h.kind == "model" for h in hits)
        near = index.select_model("fashion-footwear", k=3)  # auto: results are held, and measured best
        assert [h.ranked_by for h in near] == ["neighbors"] * 3 and all(h.evidence for h in near)
        assert all(e["task"] != "fashion-footwear" for h in near for e in h.evidence)  # a row: treated as new


@pytest.mark.slow
def test_demo_finds_the_fresh_task_and_picks_an_expert(capsys):
    from taskindex.cli import demo

    demo.main()
    out = capsys.readouterr().out
    assert "the new sample found its own task first" in out
    assert "best experts for the new sample" in out and "ranked by neighbors" in out
    assert "its errors on the nearest known tasks" in out and "its error there" in out  # the evidence
    assert "experts on fashion-sandal-vs-rest by the test error" in out
    assert "within noise of the best" in out or "more than one standard error" in out  # the verdict
