"""LogME against a brute-force maximisation of the Gaussian marginal likelihood (scipy), plus its behaviour."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.stats import multivariate_normal

from taskindex.select import logme as logme_module
from taskindex.errors import TaskIndexError
from taskindex.select.logme import logme

GRID = [(a, b) for a in (-4.0, 0.0, 4.0, 8.0, 16.0, 32.0) for b in (-2.0, 1.0, 4.0)]  # (log alpha, log beta)


def problem(n: int, d: int, seed: int, signal: float) -> tuple[np.ndarray, np.ndarray]:
    """Three classes, all present; signal scales class means added to unit Gaussian noise."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 3)
    return rng.normal(size=(n, d)) + signal * rng.normal(size=(3, d))[labels], labels


def evidence(features: np.ndarray, t: np.ndarray, alpha: float, beta: float) -> float:
    """log p(t | F, alpha, beta) with m integrated out: t ~ N(0, F F^T / alpha + I / beta)."""
    n = len(features)
    return float(multivariate_normal.logpdf(t, np.zeros(n), features @ features.T / alpha + np.eye(n) / beta))


def brute_max(features: np.ndarray, t: np.ndarray) -> float:
    """max over (log alpha, log beta) of the evidence: Nelder-Mead from the two best points of a coarse grid."""
    def cost(p):
        return -evidence(features, t, *np.exp(p))
    starts = sorted(GRID, key=cost)[:2]
    runs = [minimize(cost, x0, method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 2000})
            for x0 in starts]
    return -min(r.fun for r in runs)


@pytest.mark.parametrize("n, d, seed, signal", [(40, 5, 0, 0.0), (40, 5, 1, 1.0), (12, 20, 2, 0.0), (12, 20, 3, 1.0)])
def test_logme_equals_brute_force_maximum_of_the_evidence(n, d, seed, signal):
    features, labels = problem(n, d, seed, signal)
    columns = [(labels == k).astype(float) for k in range(3)]
    best = np.array([brute_max(features, t) for t in columns]) / n
    assert logme(features, labels) == pytest.approx(best.mean(), rel=1e-4)

    per_class, alpha, beta = logme_module._fit(features.astype(np.float64), labels)
    at_fit = np.array([evidence(features, t, a, b) for t, a, b in zip(columns, alpha, beta)]) / n
    np.testing.assert_allclose(per_class, at_fit, rtol=1e-9)  # the closed form is the Gaussian log-density
    assert np.all(at_fit >= best - 1e-4 * np.abs(best))


def test_separable_features_with_fewer_samples_than_dims_reach_the_noise_free_limit():
    """Class means plus tiny noise, N < D: the evidence grows as beta -> inf, towards t ~ N(0, F F^T / alpha)."""
    rng = np.random.default_rng(4)
    labels = np.arange(12) % 3
    features = 5.0 * rng.normal(size=(3, 20))[labels] + 1e-3 * rng.normal(size=(12, 20))
    per_class, _, _ = logme_module._fit(features, labels)
    for k, ours in enumerate(per_class):
        t = (labels == k).astype(float)
        limit = -minimize(lambda p: -evidence(features, t, np.exp(p[0]), np.inf), [5.0], method="Nelder-Mead").fun
        assert np.isfinite(ours) and ours >= limit / 12 - 1e-4 * abs(limit / 12)


def test_features_that_carry_the_labels_score_higher_than_noise():
    informative, labels = problem(300, 16, seed=5, signal=1.5)
    noise = np.random.default_rng(6).normal(size=informative.shape)
    assert logme(informative, labels) > logme(noise, labels) + 0.3


def test_invariant_to_sample_order_and_class_names():
    features, labels = problem(60, 8, seed=7, signal=1.0)
    score = logme(features, labels)
    order = np.random.default_rng(8).permutation(len(labels))
    assert logme(features[order], labels[order]) == pytest.approx(score, rel=1e-9)
    renamed = np.array([42, -3, 7])[labels]
    assert logme(features, renamed) == pytest.approx(score, rel=1e-9)
    assert logme(features.astype(np.float32).tolist(), labels.astype(float)) == pytest.approx(score, rel=1e-6)


@pytest.mark.parametrize("features, labels, match", [
    (np.ones(10), np.arange(10) % 2, r"2-D array .*got shape \(10,\)"),
    (np.ones((10, 2, 2)), np.arange(10) % 2, r"2-D array .*got shape \(10, 2, 2\)"),
    (np.where(np.eye(10, 3) == 1, np.nan, 1.0), np.arange(10) % 2, "NaN or infinite"),
    (np.full((10, 3), np.inf), np.arange(10) % 2, "NaN or infinite"),
    (np.ones((10, 3)), np.arange(9) % 2, r"one label per sample; got shape \(9,\) for 10 samples"),
    (np.ones((10, 3)), np.arange(10) % 2 + 0.5, "integer class ids; got dtype float64"),
    (np.ones((10, 3)), np.array(list("ababababab")), "integer class ids; got dtype <U1"),
    (np.ones((10, 3)), np.zeros(10, dtype=int), "at least 2 classes; got 1"),
    (np.zeros((10, 3)), np.arange(10) % 2, "features are all zero"),
])
def test_bad_input_is_a_one_line_error_naming_the_problem(features, labels, match):
    with pytest.raises(TaskIndexError, match=match):
        logme(features, labels)
