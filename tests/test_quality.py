"""End to end with the pretrained probe on real images: a fresh sample of a task finds that task.

The tasks are class subsets that are neither named sample tasks (the development set
on which the default estimator was chosen) nor used by tools/bench_quality.py's
held-out set, and each seed draws other images, heads and label directions.
"""

from __future__ import annotations

import numpy as np
import pytest

import taskindex as ti
from taskindex import Task, samples

TASKS = [("fashion-mnist", (1, 3)), ("fashion-mnist", (2, 4, 6)), ("mnist", (3, 5, 8)), ("digits", (2, 7)),
         ("mnist", (0, 1))]


def halves(dataset: str, classes: tuple, per_class: int, seed: int) -> tuple[Task, Task]:
    """Two samples of the task with disjoint images."""
    images, labels = samples.arrays(dataset)
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(labels == c), 2 * per_class, replace=False) for c in classes]
    y = np.repeat(np.arange(len(classes)), per_class)
    return tuple(Task.from_arrays(images[np.concatenate([p[h::2] for p in picks])], y) for h in (0, 1))


@pytest.fixture(scope="module")
def probe():
    return ti.load_probe("efficientnet_lite0", image_size=48)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_a_fresh_sample_of_each_task_finds_its_own_task_first(probe, seed):
    pairs = [halves(d, c, 40, seed) for d, c in TASKS]
    first = [ti.embed(a, probe, seed=seed, progress=False) for a, _ in pairs]
    second = [ti.embed(b, probe, seed=seed + 100, progress=False) for _, b in pairs]
    d = ti.pairwise(second, first)
    assert list(d.argmin(1)) == list(range(len(TASKS)))
    same, other = np.diag(d), np.where(np.eye(len(TASKS), dtype=bool), np.inf, d).min(1)
    # a margin, not a tie-break: the own task is at most 60% as far as the nearest other one
    assert np.all(same < 0.6 * other), (same, other)
