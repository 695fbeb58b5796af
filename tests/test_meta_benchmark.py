"""python -m tools.experiments.meta_benchmark --quick end to end: real experts fine-tuned from the pretrained
probe, real images."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_quick_meta_benchmark_runs_and_its_figures_are_consistent(tmp_path, capsys):
    from tools.experiments import meta_benchmark

    out = tmp_path / "results.json"
    assert meta_benchmark.main(["--quick", "--cache-dir", str(tmp_path / "cache"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for label in meta_benchmark.LABELS.values():
        assert label in printed
    assert "targets whose best expert is within one standard error of the second:" in printed
    (run,) = json.loads(out.read_text())["trimmed:0.1"]
    assert run["tasks"] == 4 and run["models"] == 3
    # the optimal expert is the minimum over the allowed ones: no method can beat it, chance is its mean
    for method in meta_benchmark.METHODS:
        assert run[method]["relative_increase"] >= -1e-12, method
    errors = [run[m]["error"] for m in ("task2vec", "asym", "model2vec", "logme")]
    assert all(run["optimal"] - 1e-12 <= e for e in errors)
    timing = json.loads(out.read_text())["timing"]
    assert timing["targets"] == 2 and timing["experts"] == 3
    assert timing["task2vec_seconds"] > timing["select_seconds"] > 0 and timing["logme_seconds"] > 0
    for row in timing["per_target"]:
        assert row["task2vec"] > row["select"] > 0 and row["logme"] > 0
    # a second run reuses the cached experts, errors and embeddings and gives the same table
    assert meta_benchmark.main(["--quick", "--cache-dir", str(tmp_path / "cache"), "--json", str(out),
                                "--timing", "0"]) == 0
    (again,) = json.loads(out.read_text())["trimmed:0.1"]
    for method in meta_benchmark.METHODS:
        assert again[method]["error"] == pytest.approx(run[method]["error"])
