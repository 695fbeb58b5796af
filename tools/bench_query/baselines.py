"""The reference repository's pairwise loop and a numpy brute force, timed at one size to put the default
query path in proportion."""

from __future__ import annotations

import gc
import statistics

import numpy as np

from taskindex import distance
from taskindex.embedding.vector import Embedding
from tools import harness


def blas_one_thread():
    """A context with BLAS at one thread: scipy's cosine calls a threaded BLAS dot per pair, which on a small,
    busy machine costs far more than the arithmetic (timings swing 100x); one thread is the fast, stable
    baseline, so the speed-up over it is not flattered."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def pairwise_loop(qvec: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The reference style: one pair at a time, cosine distance of a/(a+b) and b/(a+b) with scipy."""
    from scipy.spatial.distance import cosine

    a = qvec.astype(np.float64)
    out = np.empty(len(rows))
    for i in range(len(rows)):
        b = rows[i].astype(np.float64)
        s = a + b
        out[i] = cosine(a / s, b / s)
    return out


def baselines(index, queries: list[Embedding], subset: int, reps: int) -> dict:
    """Seconds per query of the pairwise loop (timed on `subset` rows, extrapolated) and of the brute force."""
    n = len(index)
    raw, load_s = harness.timed(harness.loaded(index).gather, np.arange(n))  # all raw vectors in RAM, float32
    loop_per_row, brute = [], []
    max_diff = 0.0
    for q in queries[:reps]:
        sub = raw[:subset]
        with blas_one_thread():
            d_loop, dt = harness.timed(pairwise_loop, q.vector, sub)
            loop_per_row.append(dt / len(sub))
        d_all, dt = harness.timed(distance.one_to_many, q.vector, raw)
        brute.append(dt)
        max_diff = max(max_diff, float(np.abs(d_all[:subset] - d_loop).max()))
    del raw
    gc.collect()
    per_row = statistics.median(loop_per_row)
    return {"loop_rows": min(subset, n), "loop_per_row_us": per_row * 1e6, "loop_s": per_row * n,
            "brute_s": statistics.median(brute), "load_s": load_s, "max_diff": max_diff, "reps": len(brute)}
