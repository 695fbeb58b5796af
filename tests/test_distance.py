"""Distances against a direct transcription of the paper's formulas (sec. 3.3)."""

from __future__ import annotations

import numpy as np
import pytest

import taskindex as ti
from taskindex import Embedding, distance
from taskindex.errors import IncompatibleEmbeddingsError, TaskIndexError


def paper_d_sym(a, b):
    """d_cos(a / (a + b), b / (a + b)), written out once with explicit loops over nothing clever."""
    u, v = a / (a + b), b / (a + b)
    return 1.0 - float(u @ v) / (np.linalg.norm(u) * np.linalg.norm(v))


def emb(vec, prior=None, **meta):
    vec = np.asarray(vec, dtype=np.float32)
    prior = np.full_like(vec, 1e-3) if prior is None else prior
    base = {"probe": "p", "fingerprint": "f", "image_size": 32, "method": "montecarlo", "prior_scale": 1e-8}
    base.update(meta)
    return Embedding(vec, prior, [("conv", vec.size)], base)


RNG = np.random.default_rng(0)
A = RNG.gamma(0.5, 1.0, (7, 50)) + 1e-3


def test_d_sym_matches_the_formula_and_is_symmetric():
    for i in range(7):
        for j in range(7):
            assert distance.d_sym(A[i], A[j]) == pytest.approx(paper_d_sym(A[i], A[j]), abs=1e-12)
    assert np.allclose(distance.pairwise(A), distance.pairwise(A).T)
    assert np.allclose(np.diag(distance.pairwise(A)), 0.0, atol=1e-12)


def test_d_sym_depends_only_on_the_log_ratio():
    assert distance.d_sym(A[0], A[1]) == pytest.approx(distance.d_sym(7 * A[0], 7 * A[1]), abs=1e-12)
    assert distance.d_sym(A[0], A[1]) != pytest.approx(distance.d_sym(7 * A[0], A[1]), abs=1e-3)


def test_vectorised_forms_agree_with_the_scalar_form():
    p = distance.pairwise(A[:3], A)
    for i in range(3):
        assert np.allclose(p[i], [paper_d_sym(A[i], b) for b in A], atol=1e-12)
        assert np.allclose(distance.one_to_many(A[i], A), p[i], atol=1e-12)


def test_finite_for_zero_filters_and_the_trivial_embedding():
    a = A[0].copy()
    b = A[1].copy()
    a[:10] = 0.0
    b[:10] = 0.0  # both zero: those filters count as equally uninformed
    d = distance.d_sym(a, b)
    assert np.isfinite(d)
    assert d == pytest.approx(paper_d_sym(np.r_[np.ones(10), a[10:]], np.r_[np.ones(10), b[10:]]), abs=1e-12)
    zero = np.zeros(50)
    assert distance.d_sym(zero, zero) == pytest.approx(0.0, abs=1e-12)
    assert distance.d_sym(A[0], zero) == pytest.approx(1.0)
    e = emb(A[0])
    t0 = emb(e.prior)
    assert distance.complexity(t0) == pytest.approx(0.0, abs=1e-12)
    assert 0 < distance.complexity(e) <= 1


def test_complexity_and_asymmetric_distance():
    prior = np.full(50, 1e-3, dtype=np.float32)
    ea, eb = emb(A[0], prior), emb(A[1], prior)
    ca = paper_d_sym(A[0].astype(np.float32).astype(np.float64), prior.astype(np.float64))
    assert distance.complexity(ea) == pytest.approx(ca, abs=1e-7)
    assert distance.d_asym(ea, eb) == pytest.approx(distance.d_sym(ea, eb) - 0.15 * ca, abs=1e-7)
    assert distance.d_asym(ea, eb, alpha=0.5) == pytest.approx(distance.d_sym(ea, eb) - 0.5 * ca, abs=1e-7)
    many = [emb(x, prior) for x in A]
    got = distance.asym_to_target(many, eb)
    assert np.allclose(got, [distance.d_asym(m, eb) for m in many], atol=1e-9)
    assert np.allclose(distance.complexity(many), [distance.complexity(m) for m in many])


def test_mixing_spaces_is_an_error():
    with pytest.raises(IncompatibleEmbeddingsError, match="image_size: 32 vs 64"):
        ti.d_sym(emb(A[0]), emb(A[1], image_size=64))
    with pytest.raises(IncompatibleEmbeddingsError, match="method"):
        distance.pairwise([emb(A[0]), emb(A[1], method="variational")])
    with pytest.raises(IncompatibleEmbeddingsError, match="dimensions"):
        distance.d_sym(A[0], A[1][:20])


def test_bad_vectors_are_refused():
    with pytest.raises(TaskIndexError, match="non-negative"):
        distance.d_sym(-A[0], A[1])
    with pytest.raises(TaskIndexError, match="finite"):
        distance.d_sym(np.full(50, np.nan), A[1])
    with pytest.raises(TaskIndexError, match="prior"):
        distance.complexity(A[0])


def test_the_float32_rerank_chooses_as_the_float64_distance_does():
    """The index's candidate re-rank accumulates in float32 (numpy, and torch for query_many on a device):
    against a float64 per-pair reference on vectors spanning 30 orders of magnitude it stays within 1e-5,
    so it orders rows as d_sym does."""
    rng = np.random.default_rng(3)
    q = np.exp(rng.uniform(-35, 35, 21008)).astype(np.float32)
    rows = (q * np.exp(rng.normal(0, rng.uniform(0.05, 2.0, (300, 1)), (300, 21008)))).astype(np.float32)
    ref = np.array([1 - np.dot(a := q / (q + r.astype(np.float64)), 1 - a) / np.linalg.norm(a) / np.linalg.norm(1 - a)
                    for r in rows.astype(np.float64)])
    torch = pytest.importorskip("torch")
    for fast in (distance.rerank(q, rows),
                 distance.rerank_torch(torch.as_tensor(q).expand(len(rows), -1), torch.as_tensor(rows))):
        assert np.abs(fast - ref).max() < 1e-5
        assert np.array_equal(np.argsort(fast)[:10], np.argsort(ref)[:10])


@pytest.mark.parametrize("scale", [1e-4, 1e-3, 0.1, 10.0, 1e3, 1e4])
def test_every_scorer_keeps_its_precision_for_rows_far_apart_in_scale(scale):
    """With the query `scale` times the rows, r = q/(q+row) sits near 1 (or 0) and n - 2 sum(r) + sum(r^2)
    cancels: the float32 scorers once lost the whole distance there (0.23 for 0.0 at 1000x). Each scorer, per
    query, per pair, on torch and the float64 pairwise matrix, against the paper's formula in float64."""
    rng = np.random.default_rng(6)
    rows = np.exp(rng.normal(0, 1, (30, 21008))).astype(np.float32)
    q = (rows[0] * scale * np.exp(rng.normal(0, 0.05, 21008))).astype(np.float32)
    ref = np.array([paper_d_sym(q.astype(np.float64), r) for r in rows.astype(np.float64)])
    torch = pytest.importorskip("torch")
    scorers = {"rerank": distance.rerank(q, rows),
               "pairs": distance.rerank_pairs(q[None, :], np.zeros(30, np.int64), rows, np.arange(30)),
               "torch": distance.rerank_torch(torch.as_tensor(q).expand(30, -1), torch.as_tensor(rows))}
    for name, fast in scorers.items():
        assert np.abs(fast - ref).max() < 2e-6, name
    for exact in (distance.rerank(q, rows, np.float64), distance.pairwise(q[None, :].astype(np.float64), rows)[0]):
        assert np.abs(exact - ref).max() < 1e-10


def test_the_float64_rerank_is_the_per_pair_distance():
    """The index gives its k answers their distance with `rerank(..., float64)`: on the same vectors it must
    agree with the per-pair float64 reference to rounding, not to the float32 pass's 1e-5."""
    rng = np.random.default_rng(4)
    q = np.exp(rng.uniform(-35, 35, 21008)).astype(np.float32)
    rows = (q * np.exp(rng.normal(0, rng.uniform(0.05, 2.0, (40, 1)), (40, 21008)))).astype(np.float32)
    ref = np.array([paper_d_sym(q.astype(np.float64), r) for r in rows.astype(np.float64)])
    assert np.abs(distance.rerank(q, rows, np.float64) - ref).max() < 1e-12


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rerank_pairs_scores_each_pair_as_rerank_does_over_threads_and_chunks(dtype, monkeypatch):
    """query_many's scorer: pairs in any order, several per query and per row, chunks of 3 pairs split over 3
    threads; each pair's distance is `rerank` of its query and row."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(distance, "_CHUNK_BYTES", 3 * 2 * np.dtype(dtype).itemsize * 300)  # 3 pairs a chunk
    rng = np.random.default_rng(5)
    queries = np.exp(rng.normal(size=(6, 300))).astype(np.float32)
    rows = np.exp(rng.normal(size=(9, 300))).astype(np.float32)
    qi, ri = rng.integers(6, size=40), rng.integers(9, size=40)
    want = np.array([distance.rerank(queries[a], rows[b:b + 1], dtype)[0] for a, b in zip(qi, ri)])
    with ThreadPoolExecutor(3) as pool:
        got = distance.rerank_pairs(queries, qi, rows, ri, dtype, pool, threads=3)
    assert np.array_equal(got, want)
    assert np.array_equal(distance.rerank_pairs(queries, qi, rows, ri, dtype), want)
    assert distance.rerank_pairs(queries, qi[:0], rows, ri[:0], dtype).shape == (0,)
