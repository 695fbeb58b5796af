"""tools/experiments/neighbors_sweep.py reproduces the baselines computed independently in issue 21 (+42% for
the best expert on average, +10.5% for the same-dataset prior) before it says anything about the neighbours."""

from __future__ import annotations

import numpy as np
import pytest

import taskindex as ti
from tools.experiments import neighbors_sweep as sweep


@pytest.fixture(scope="module")
def data():
    with ti.default_index() as index:
        return sweep.inputs(index)


def test_the_baselines_match_the_issue_and_the_neighbours_beat_d_asym(data):
    optimal = sweep.picks(data, "optimal")
    every = np.arange(len(optimal))
    assert len(optimal) == 43 and len(data["models"]) == 15
    assert sweep.relative(sweep.picks(data, "static"), optimal, every) == pytest.approx(0.424, abs=0.001)
    assert sweep.relative(sweep.picks(data, "dataset"), optimal, every) == pytest.approx(0.105, abs=0.001)
    neighbours = sweep.relative(sweep.picks(data, "neighbors"), optimal, every)
    assert neighbours < 0.5 * sweep.relative(sweep.picks(data, "asym"), optimal, every)


def test_an_expert_trained_on_the_target_is_never_picked(data):
    for method in ("neighbors", "static", "dataset", "asym", "optimal"):
        chosen = sweep.picked_experts(data, method)
        assert data["allowed"][np.arange(len(chosen)), chosen].all(), method
    assert (~data["allowed"]).sum() == 14  # the 14 experts trained on a target, each barred from it


def test_nested_validation_scores_the_choice_on_the_other_half(data):
    optimal = sweep.picks(data, "optimal")
    picked = {(k, 0.02, 0.1): sweep.picks(data, "neighbors", k, 0.02, 0.1) for k in (1, 5)}
    held = sweep.nested(picked, {"static": sweep.picks(data, "static")}, optimal, splits=4)
    assert len(held["static"]) == 4 and len(held["neighbors, chosen on the development half"]) == 4
