"""One message shape for bad arguments, and booleans refused wherever a number is meant."""

from __future__ import annotations

import numpy as np
import pytest

from taskindex import TaskIndex, TaskIndexError, validation
from taskindex._testing.index_harness import Synth, wide_probe
from taskindex.errors import ProbeError


def test_integer_accepts_ints_and_numpy_ints_and_refuses_bools_floats_and_small_values():
    assert validation.integer(3, "k") == 3 and validation.integer(np.int64(4), "k") == 4
    for bad in (True, False, np.bool_(True), 2.0, "3", 0):
        with pytest.raises(TaskIndexError, match=f"k must be a positive integer; got {bad!r}"):
            validation.integer(bad, "k")
    with pytest.raises(TaskIndexError, match=r"seed must be an integer >= 0; got -1"):
        validation.integer(-1, "seed", 0)
    assert validation.integer(None, "threads", none="the idle cores") is None
    with pytest.raises(TaskIndexError, match=r"threads must be a positive integer or None \(the idle cores\)"):
        validation.integer(0, "threads", none="the idle cores")
    with pytest.raises(ProbeError, match="image_size must be an integer >= 8; got 4 "):
        validation.integer(4, "image_size", 8, error=ProbeError, fix="the probe's input side")


def test_number_refuses_bools_nan_and_out_of_range_values():
    assert validation.number(0.15, "alpha", low=0) == 0.15
    for bad in (True, float("nan"), float("inf"), -1, "0.1"):
        with pytest.raises(TaskIndexError, match="alpha must be a finite number >= 0; got"):
            validation.number(bad, "alpha", low=0)


def test_choice_lists_the_choices():
    assert validation.choice("sym", "metric", ("sym", "asym")) == "sym"
    with pytest.raises(TaskIndexError, match=r"unknown kind 'tasks': use 'task', 'model' or None"):
        validation.choice("tasks", "kind", ("task", "model", None))


@pytest.mark.parametrize("call", [
    lambda idx: idx.query("r0", k=True),
    lambda idx: idx.query_many(["r0"], k=True),
    lambda idx: idx.query("r0", refine=True),
    lambda idx: idx.select_model("r0", k=True),
    lambda idx: idx.query("r0", alpha=True),
    lambda idx: idx.set_alpha(False),
])
def test_the_index_refuses_a_boolean_wherever_it_takes_a_number(tmp_path, call):
    with TaskIndex.create(tmp_path / "ix", probe=wide_probe()) as idx:
        synth = Synth(idx)
        idx.add_many([(f"r{i}", synth.make(i)) for i in range(3)])
        idx.add_model("m", "r1")
        with pytest.raises(TaskIndexError, match=r"must be a (positive integer|finite number >= 0).*; got (True|False)"):
            call(idx)


def test_embed_refuses_booleans_as_counts(tiny_probe):
    import taskindex as ti

    task = ti.Task.from_arrays(np.zeros((4, 16, 16, 3), np.uint8), [0, 1, 0, 1])
    for key in ("max_samples", "batch_size", "seed", "label_passes", "threads"):
        with pytest.raises(TaskIndexError, match=f"{key} must be .*; got True"):
            ti.embed(task, tiny_probe, **{key: True})
