"""The paper's claims measured on the shipped index (tools/paper_figures.py): real images, the real probe."""

from __future__ import annotations

import sys
from pathlib import Path

from taskindex import TaskIndex
from taskindex.cli import default_index_path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import paper_figures  # noqa: E402

sys.path.pop(0)


def test_clustering_d_sym_recovers_the_datasets_and_families_and_neighbours_are_close():
    with TaskIndex.open(default_index_path(), readonly=True) as index:
        r = paper_figures.semantic_structure(index, permutations=200)
    assert r["tasks"] == 43  # the named tasks, without their NAME@N copies
    # measured: ARI 0.79 (datasets) and 0.42 (families) against a 95th random percentile of 0.07 and 0.05
    assert r["dataset"]["ari"] > 0.5 > r["dataset"]["random_p95"]
    assert r["family"]["ari"] > 0.25 > r["family"]["random_p95"]
    nb = r["neighbours"]
    assert all(near < nb["random"] for near in nb["nearest"])
    assert nb["nearest"][0] < 0.6 * nb["random"] and nb["nearest"][-1] > nb["nearest"][0]  # grows with k


def test_complexity_and_norm_grow_with_the_error_of_a_linear_classifier_on_the_probe():
    with TaskIndex.open(default_index_path(), readonly=True) as index:
        r = paper_figures.difficulty(index)
    assert r["tasks"] == 43
    # measured: Spearman 0.75 (complexity) and 0.69 (norm), p < 1e-6 with 43 tasks
    assert r["spearman_complexity"] > 0.5 and r["spearman_norm"] > 0.4
