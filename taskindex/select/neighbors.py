"""The neighbours selector: experts ranked by how they did on the known tasks nearest to the query.

Each known task's errors are standardised across the experts measured on it (so a hard task and an easy
one weigh alike) and averaged over the K tasks nearest to the query, each weighted exp(-d_sym / TAU). The
fallback score (d_asym, standardised the same way) joins the average as one more neighbour at distance
FALLBACK_D: where the known tasks are nearer than that, their results decide; where they are all farther
(a kind of task the index holds no results for), or an expert was never measured on them, the fallback
does. K, TAU and FALLBACK_D were chosen by nested validation over random halvings of the expert-selection
benchmark's 43 targets x 31 experts (tools/experiments/neighbors_sweep.py, docs/selection.md).
"""

from __future__ import annotations

import numpy as np

K = 5
TAU = 0.1
FALLBACK_D = 0.3


def standardised(values: np.ndarray) -> np.ndarray:
    """(x - mean) / sd over the finite entries of each row (NaN stays NaN; a row of ties is all 0)."""
    values = np.atleast_2d(np.asarray(values, np.float64))
    finite = np.isfinite(values)
    count = finite.sum(axis=1, keepdims=True)
    mean = np.where(finite, values, 0.0).sum(axis=1, keepdims=True) / np.maximum(count, 1)
    sd = np.sqrt(np.where(finite, (values - mean) ** 2, 0.0).sum(axis=1, keepdims=True) / np.maximum(count, 1))
    return np.where(finite, np.where(sd > 0, (values - mean) / np.where(sd > 0, sd, 1.0), 0.0), np.nan)


def weights(dists: np.ndarray, k: int = K, tau: float = TAU) -> np.ndarray:
    """Each known task's weight for a query at `dists` from them: exp(-d / tau) for the k nearest, else 0."""
    w = np.zeros(len(dists))
    near = np.argsort(dists, kind="stable")[:k]
    w[near] = np.exp(-dists[near] / tau) if np.isfinite(tau) else 1.0
    return w


def scores(dists: np.ndarray, err: np.ndarray, fallback: np.ndarray | None = None, k: int = K,
           tau: float = TAU, fallback_d: float = FALLBACK_D) -> tuple[np.ndarray, np.ndarray]:
    """(score, support) per expert, lower is better: the weighted mean of its standardised errors on the
    query's neighbours (err: tasks x experts, NaN where not measured) and of its standardised `fallback`,
    counted as a neighbour at `fallback_d`. support: the share of the weight its measured results carry."""
    w = weights(np.asarray(dists, np.float64), k, tau)
    z = standardised(err)
    present = np.isfinite(z) & (w[:, None] > 0)
    mass = (w[:, None] * present).sum(axis=0)
    total = (w[:, None] * np.where(present, z, 0.0)).sum(axis=0)
    if fallback is None:
        return np.where(mass > 0, total / np.where(mass > 0, mass, 1.0), np.inf), np.where(mass > 0, 1.0, 0.0)
    c = np.exp(-fallback_d / tau) if np.isfinite(tau) else 1.0
    back = standardised(fallback)[0]
    known = np.isfinite(back)  # an expert without a fallback score (excluded) is never picked
    score = (total + c * np.where(known, back, 0.0)) / (mass + c)
    return np.where(known, score, np.inf), mass / (mass + c)


def evidence(dists: np.ndarray, err: np.ndarray, tasks: list[str], expert: int, k: int = K,
             tau: float = TAU, fallback_d: float = FALLBACK_D) -> list[dict]:
    """The neighbour tasks behind an expert's score: their distance, share of the weight, and its error there."""
    w = weights(np.asarray(dists, np.float64), k, tau)
    measured = np.isfinite(err[:, expert]) & (w > 0)
    whole = (w * measured).sum() + (np.exp(-fallback_d / tau) if np.isfinite(tau) else 1.0)
    return [{"task": tasks[i], "d_sym": float(dists[i]), "weight": float(w[i] / whole), "error": float(err[i, expert])}
            for i in np.argsort(dists, kind="stable") if measured[i]]
