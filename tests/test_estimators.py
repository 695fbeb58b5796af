"""The per-filter estimators over images, against independent references (scipy, numpy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import taskindex as ti
from taskindex.errors import IncompatibleEmbeddingsError, TaskIndexError
from taskindex.embedding.estimators import FilterEstimator, estimator_id, parse_estimator


def stream(values: np.ndarray, identity: str, batch: int, chunk: int = 4096) -> np.ndarray:
    est = FilterEstimator(identity, len(values), values.shape[1], chunk=chunk)
    for i in range(0, len(values), batch):
        est.update(torch.from_numpy(values[i:i + batch]))
    return est.result().numpy()


def heavy_tailed(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image contributions scale_k * Pareto(1.1) noise: a mean dominated by a few images."""
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.normal(0, 2, dim))
    return (scale * (rng.pareto(1.1, (n, dim)) + 1)).astype(np.float32), scale


@pytest.mark.parametrize("trim", [0.02, 0.1, 0.25])
@pytest.mark.parametrize("batch", [1, 7, 64, 1000])
def test_streaming_trimmed_mean_equals_scipy_in_memory(trim, batch):
    values, _ = heavy_tailed(300, 50, seed=1)
    ours = stream(values, estimator_id("trimmed", trim), batch)
    ref = stats.trim_mean(values.astype(np.float64), trim, axis=0)
    np.testing.assert_allclose(ours, ref, rtol=1e-5)


@pytest.mark.parametrize("trim", [0.05, 0.2])
def test_streaming_winsorized_mean_equals_scipy(trim):
    values, _ = heavy_tailed(200, 30, seed=2)
    ours = stream(values, estimator_id("winsorized", trim), 16)
    k = int(np.floor(trim * len(values)))
    ref = np.asarray(stats.mstats.winsorize(values.astype(np.float64), limits=(k / len(values),) * 2,
                                            axis=0).mean(0))
    np.testing.assert_allclose(ours, ref, rtol=1e-5)


def test_mean_is_the_plain_mean_and_tiny_trims_cut_nothing():
    values, _ = heavy_tailed(30, 10, seed=3)
    np.testing.assert_allclose(stream(values, "mean", 8), values.astype(np.float64).mean(0), rtol=1e-6)
    # 0.02 x 30 images < 1 image: nothing is cut, so it is the mean
    np.testing.assert_allclose(stream(values, "trimmed:0.02", 8), values.astype(np.float64).mean(0), rtol=1e-6)


def test_chunks_bound_memory_and_average_the_chunk_estimates():
    values, _ = heavy_tailed(250, 20, seed=4)
    est = FilterEstimator("trimmed:0.1", len(values), values.shape[1], chunk=100)
    for i in range(0, len(values), 33):
        est.update(torch.from_numpy(values[i:i + 33]))
        assert est._top.shape[0] <= 11  # k + 1 values per filter, never the images seen
    parts = [values[:100], values[100:200], values[200:]]
    ref = sum(stats.trim_mean(p.astype(np.float64), 0.1, axis=0) * len(p) for p in parts) / len(values)
    np.testing.assert_allclose(est.result().numpy(), ref, rtol=1e-5)


def test_trimmed_mean_recovers_the_typical_scale_where_the_mean_does_not():
    """Contaminated data with a known answer: 94% of images give scale_k exactly, 6% give 1000x scale_k."""
    rng = np.random.default_rng(5)
    n, dim = 500, 40
    scale = np.exp(rng.normal(0, 1, dim))
    values = np.tile(scale, (n, 1))
    outliers = rng.random((n, dim)) < 0.06
    values[outliers] *= 1000
    trimmed = stream(values.astype(np.float32), "trimmed:0.1", 64)
    mean = stream(values.astype(np.float32), "mean", 64)
    np.testing.assert_allclose(trimmed, scale, rtol=1e-5)
    assert np.all(mean > 10 * scale)


def test_two_samples_agree_better_with_the_trimmed_mean():
    """Two draws of the same heavy-tailed task: their log-ratios spread less with trimming."""
    a, scale = heavy_tailed(400, 500, seed=6)
    rng = np.random.default_rng(7)
    b = (scale * (rng.pareto(1.1, a.shape) + 1)).astype(np.float32)
    spread = {e: np.std(np.log(stream(a, e, 50)) - np.log(stream(b, e, 50))) for e in ("mean", "trimmed:0.1")}
    assert spread["trimmed:0.1"] < 0.5 * spread["mean"]


def test_estimator_identities_and_bad_values():
    assert estimator_id("mean") == "mean"
    assert estimator_id("trimmed") == "trimmed:0.1"
    assert parse_estimator("winsorized:0.05") == ("winsorized", 0.05)
    for bad in ("median", "Trimmed"):
        with pytest.raises(TaskIndexError, match="unknown estimator"):
            estimator_id(bad)
    for trim in (0, 0.5, -0.1, True, "0.1"):
        with pytest.raises(TaskIndexError, match="trim must be a fraction"):
            estimator_id("trimmed", trim)
    est = FilterEstimator("trimmed:0.1", 4, 3)
    with pytest.raises(RuntimeError, match="told 4 images"):
        est.update(torch.ones(5, 3))


def test_embedding_is_invariant_to_the_batch_size(tiny_probe, digits_round):
    a = ti.embed(digits_round, tiny_probe, batch_size=64)
    b = ti.embed(digits_round, tiny_probe, batch_size=13)
    np.testing.assert_allclose(a.vector, b.vector, rtol=2e-5)
    assert a.meta["estimator"] == "trimmed:0.1" and a.meta["expectation"] == "exact"


def test_mixing_estimators_is_refused(tmp_path, tiny_probe, digits_round):
    robust = ti.embed(digits_round, tiny_probe)
    plain = ti.embed(digits_round, tiny_probe, estimator="mean")
    with pytest.raises(IncompatibleEmbeddingsError, match="estimator: 'trimmed:0.1' vs 'mean'"):
        ti.d_sym(robust, plain)
    with ti.TaskIndex.create(tmp_path / "idx", probe=tiny_probe) as index:
        index.add("robust", robust)
        with pytest.raises(TaskIndexError, match="estimator"):
            index.add("plain", plain)
    with ti.TaskIndex.create(tmp_path / "plain", probe=tiny_probe, estimator="mean") as index:
        index.add("plain", plain)
        assert index.embed_options()["estimator"] == "mean"
