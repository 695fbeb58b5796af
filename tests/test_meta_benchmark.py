"""python -m tools.experiments.meta_benchmark --quick end to end: real experts fine-tuned from the pretrained
probe, real images."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest


@pytest.mark.slow
def test_quick_meta_benchmark_runs_and_its_figures_are_consistent(tmp_path, capsys):
    from tools.experiments import meta_benchmark

    out = tmp_path / "results.json"
    assert meta_benchmark.main(["--quick", "--cache-dir", str(tmp_path / "cache"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for label in meta_benchmark.LABELS.values():
        assert label in printed
    assert "floor" not in json.loads(out.read_text())["trimmed:0.1"][0]  # one seed: no other seed to pick by
    assert "targets whose best expert is within one standard error of the second:" in printed
    (run,) = json.loads(out.read_text())["trimmed:0.1"]
    assert run["tasks"] == 4 and run["models"] == 3
    # the optimal expert is the minimum over the allowed ones: no method can beat it, chance is its mean
    for method in set(meta_benchmark.METHODS) - {"floor"}:
        assert run[method]["relative_increase"] >= -1e-12, method
    errors = [run[m]["error"] for m in ("task2vec", "asym", "model2vec", "logme")]
    assert all(run["optimal"] - 1e-12 <= e for e in errors)
    timing = json.loads(out.read_text())["timing"]
    assert timing["targets"] == 2 and timing["experts"] == 3
    assert timing["embed_seconds"] > timing["select_neighbors_seconds"] > 0 and timing["logme_seconds"] > 0
    assert timing["logme_per_expert_seconds"] * 3 == pytest.approx(timing["logme_seconds"], rel=0.9)
    for row in timing["per_target"]:
        assert row["embed"] > row["select_neighbors"] > 0 and row["logme"] > 0 and row["verify_shortlist"] > 0
    # a second run reuses the cached experts, errors and embeddings and gives the same table
    assert meta_benchmark.main(["--quick", "--cache-dir", str(tmp_path / "cache"), "--json", str(out),
                                "--timing", "0"]) == 0
    (again,) = json.loads(out.read_text())["trimmed:0.1"]
    for method in set(meta_benchmark.METHODS) - {"floor"}:
        assert again[method]["error"] == pytest.approx(run[method]["error"])


def test_the_logme_shortlist_reorders_only_the_first_three():
    from tools.experiments.meta_benchmark import _shortlisted

    score = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    logme = np.array([1.0, 3.0, 2.0, 10.0, 0.0])  # expert 3 has the best LogME but is not shortlisted
    assert _shortlisted(score, logme).tolist() == [2, 0, 1, 3, 4]


def test_the_noise_floor_picks_by_the_next_seeds_errors():
    from tools.experiments.meta_benchmark import _other_seed_errors

    table = pd.DataFrame({"task": ["a"] * 4, "model": ["m1", "m2"] * 2, "seed": [0, 0, 1, 1],
                          "error": [0.1, 0.2, 0.3, 0.05]})
    got = _other_seed_errors(table, 0, ["a@0"], ["m1", "m2"], {"a@0": "a"})
    assert got.tolist() == [[0.3, 0.05]]
    assert _other_seed_errors(table, 1, ["a@1"], ["m1", "m2"], {"a@1": "a"}).tolist() == [[0.1, 0.2]]
    assert _other_seed_errors(table[table["seed"] == 0], 0, ["a@0"], ["m1", "m2"], {"a@0": "a"}) is None


class _Index:
    """What _priors reads of an index: dataset labels, vectors, the prior and alpha."""

    def __init__(self, tasks, datasets, models):
        rng = np.random.default_rng(0)
        self._meta = dict(zip(tasks, datasets))
        self._vec = {n: rng.uniform(0.5, 1.5, 8) for n in [*tasks, *models]}
        self.prior, self.alpha = np.ones(8), 0.15

    def get(self, name):
        return None, {"dataset": self._meta[name]}

    def vectors(self, names):
        return np.stack([self._vec[n] for n in names])


def test_the_priors_never_read_the_targets_own_errors():
    from tools.experiments.meta_benchmark import _priors

    # on its own rows (every seed) target a favours m1; every other target of its dataset favours m2
    rows = [(t, m, s, e) for s in (0, 1) for t, (e1, e2) in
            {"a": (0.0, 0.9), "b": (0.5, 0.1), "c": (0.6, 0.2), "d": (0.1, 0.9)}.items()
            for m, e in (("m1", e1), ("m2", e2))]
    table = pd.DataFrame(rows, columns=["task", "model", "seed", "error"])
    tasks = ["a@0", "b@0", "c@0", "d@0"]
    idx = _Index(tasks, ["x", "x", "x", "y"], ["m1", "m2"])
    got = _priors(table, 0, tasks, ["m1", "m2"], {t: t[0] for t in tasks}, idx)
    assert np.argmin(got["same_dataset"][0]) == 1  # b and c (dataset x), never a itself nor d (dataset y)
    assert np.argmin(got["same_dataset"][3]) == 1  # d has no dataset mates: the other targets, two favouring m2
    assert np.isfinite(got["neighbors_mean"]).all()


def test_mean_errors_carry_the_standard_error_of_their_test_images():
    from tools.experiments.meta_benchmark import mean_errors

    table = pd.DataFrame({"task": ["a", "a"], "model": ["m", "m"], "seed": [0, 1], "error": [0.05, 0.15],
                          "n_test": [100, 100]})
    (row,) = mean_errors(table).to_dict(orient="records")
    assert row["error"] == pytest.approx(0.1) and row["se"] == pytest.approx(0.03)  # sqrt(0.1 * 0.9 / 100)
