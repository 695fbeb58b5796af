"""taskindex.select.noise: when two measured errors are a tie, checked against numbers worked by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from taskindex.errors import TaskIndexError
from taskindex.select.noise import difference_se, indistinct_targets, standard_error, within_noise


def test_standard_error_is_the_binomial_one():
    assert standard_error(0.1, 100) == pytest.approx(0.03)  # sqrt(0.1 * 0.9 / 100)
    assert standard_error(0.5, 400) == pytest.approx(0.025)
    assert standard_error(0.0, 100) == 0.0
    assert difference_se(0.1, 0.1, 100) == pytest.approx(0.03 * math.sqrt(2))


def test_within_noise_draws_the_line_at_one_standard_error():
    se = 0.03 * math.sqrt(2)  # two errors of about 0.1 on 100 images
    assert within_noise(0.10, 0.10 + 0.9 * se, 100)
    assert not within_noise(0.10, 0.16, 100)  # 0.06 apart; the SE of the difference is about 0.045
    assert within_noise(0.10, 0.16, 10)  # the same gap on ten images is noise
    assert not within_noise(0.0, 0.02, 10_000)


def test_indistinct_targets_reports_best_and_second_per_task():
    table = pd.DataFrame({
        "task": ["a"] * 3 + ["b"] * 2 + ["c"],
        "model": ["m1", "m2", "m3", "m1", "m2", "m1"],
        "error": [0.20, 0.05, 0.06, 0.01, 0.30, 0.1],
        "n_test": [100] * 5 + [50],
    })
    out = indistinct_targets(table).set_index("task")
    assert list(out.index) == ["a", "b"]  # c has one expert: nothing to tell apart
    assert (out.loc["a", "best"], out.loc["a", "second"]) == ("m2", "m3") and out.loc["a", "within_noise"]
    assert out.loc["b", "best"] == "m1" and not out.loc["b", "within_noise"]


def test_noise_needs_the_test_image_count():
    with pytest.raises(TaskIndexError, match="n_test"):
        indistinct_targets(pd.DataFrame({"task": ["a"], "model": ["m"], "error": [0.1]}))
    with pytest.raises(TaskIndexError, match="n_test >= 1"):
        standard_error(0.1, 0)
