"""The exact stage of a query: which rows are candidates, and their re-rank by the exact distance.

FAISS proposes candidates over the projected rows (or every row, below EXACT_ROWS or with exact=True);
a float32 pass over the memory-mapped raw vectors picks the k, and a float64 pass settles their order and
distances, so answers equal an exact scan's.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from taskindex import distance, validation
from taskindex.errors import TaskIndexError
from taskindex.index import candidates, filters
from taskindex.index.hit import Hit
from taskindex.index.version import KINDS, LoadedVersion

RERANK_TIE = 2e-5  # float32 re-rank scores this close to the k-th are settled in float64 (its error: 1e-5)
RERANK_ROWS = 2048  # rows read and re-ranked at once (an exact query's scan goes block by block)
PAIR_BLOCK = 1024  # candidate rows read at once, and (query, row) pairs on a torch device, in query_many
BATCH_PAIRS = 1 << 21  # candidate pairs of the queries query_many ranks together (~150 MB of bookkeeping)


def plan(v: LoadedVersion, k, metric, kind, where) -> tuple[np.ndarray, bool]:
    """Checked arguments of a query: (the rows the filter keeps, whether anything is filtered)."""
    validation.choice(metric, "metric", ("sym", "asym"))
    validation.choice(kind, "kind", (*KINDS, None))
    validation.integer(k, "k")
    keep = filters.mask(v.rows, where) if where else np.ones(len(v.ids), dtype=bool)
    if kind is not None:
        keep &= v.kinds[kind]
    return keep, bool(where) or kind is not None


def want(v: LoadedVersion, k: int, metric: str, refine: int | None) -> int:
    """Candidates fetched for k answers (a row's own name as the query costs one more: itself, dropped):
    asym re-orders by complexity, so it looks further."""
    refine = validation.integer(refine, "refine", none="the index's default", fix="candidates per result")
    return k * (refine or candidates.default_refine(len(v.ids))) * (2 if metric == "asym" else 1)


def _own(v: LoadedVersion, rows: np.ndarray, self_id) -> np.ndarray:
    """Candidate rows in index order (each segment's rows read in one pass), the query's own row left out."""
    rows = np.sort(rows)
    return rows[v.ids[rows] != self_id] if self_id is not None else rows


def rank(v: LoadedVersion, vector: np.ndarray, rows: np.ndarray, self_id, k: int, metric: str,
          alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact re-rank of candidate rows: float32 d_sym picks the k, float64 gives them their distances.
    Returns (the k rows, their scores), best first."""
    rows = _own(v, rows, self_id)
    if len(rows) <= RERANK_ROWS:  # the usual query: its candidates stay in memory for the float64 pass
        raw = v.gather(rows)
        return _top(v, vector, rows, distance.rerank(vector, raw), k, metric, alpha, raw)
    dists = [distance.rerank(vector, v.gather(rows[i:i + RERANK_ROWS]))
             for i in range(0, len(rows), RERANK_ROWS)]  # an exact scan: a block at a time
    return _top(v, vector, rows, np.concatenate(dists), k, metric, alpha)


def _top(v: LoadedVersion, vector: np.ndarray, rows: np.ndarray, dists: np.ndarray, k: int, metric: str,
         alpha: float, raw: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k best of the re-ranked rows, with their float64 scores (`raw`: the rows' vectors, if at hand)."""
    score, top = _settle(v, rows, dists, k, metric, alpha)
    exact = distance.rerank(vector, raw[top] if raw is not None else v.gather(rows[top]), np.float64)
    return _finish(v, rows, score, top, exact, k, metric, alpha)


def _settle(v: LoadedVersion, rows: np.ndarray, dists: np.ndarray, k: int, metric: str,
            alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(scores, the positions that need their float64 distance). The float32 pass is within ~1e-5 of
    d_sym: every row it puts within RERANK_TIE of the k-th gets its exact distance before the cut, so
    the k best of those are the answer (numpy and torch sums then agree)."""
    if len(rows) == 0:
        return dists, np.zeros(0, np.int64)
    score = dists - alpha * v.complexity[rows] if metric == "asym" else dists.copy()
    order = np.argsort(score, kind="stable")
    cut = score[order[min(k, len(order)) - 1]] + RERANK_TIE
    return score, order[:max(k, int(np.searchsorted(score[order], cut, side="right")))]


def _finish(v: LoadedVersion, rows: np.ndarray, score: np.ndarray, top: np.ndarray, exact: np.ndarray, k: int, metric: str,
            alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The k best rows, best first, and their scores, once `top` has its float64 distances `exact`."""
    score[top] = exact - alpha * v.complexity[rows[top]] if metric == "asym" else exact
    top = top[np.argsort(score[top], kind="stable")][:k]
    return rows[top], score[top]


def rank_many(v: LoadedVersion, vectors: np.ndarray, rows: list[np.ndarray], self_ids: list, k: int, metric: str,
               alpha: float, device: str | None, workers: tuple) -> list[tuple[np.ndarray, np.ndarray]]:
    """`rank` for a batch of queries: each candidate row is read once for all the queries that want it,
    and the float32 pass, then the float64 pass of the rows each query must settle, score (query, row)
    pairs a block of rows at a time, so a batch reads far fewer rows than its queries one by one
    (tools/bench_query.py times both). The float32 pass runs in torch on `device` where one is given."""
    rows = [_own(v, r, s) for r, s in zip(rows, self_ids)]
    counts = [len(r) for r in rows]
    owner = np.repeat(np.arange(len(rows)), counts)
    dists = _score_pairs(v, vectors, owner, np.concatenate([np.zeros(0, np.int64), *rows]), np.float32, device,
                              workers)
    cuts = np.cumsum([0, *counts])
    plans = [_settle(v, r, dists[a:b], k, metric, alpha) for r, a, b in zip(rows, cuts, cuts[1:])]
    counts = [len(top) for _, top in plans]
    exact = _score_pairs(v, vectors, np.repeat(np.arange(len(rows)), counts),
                              np.concatenate([np.zeros(0, np.int64), *(r[t] for r, (_, t) in zip(rows, plans))]),
                              np.float64, None, workers)
    cuts = np.cumsum([0, *counts])
    return [_finish(v, r, score, top, exact[a:b], k, metric, alpha)
            for r, (score, top), a, b in zip(rows, plans, cuts, cuts[1:])]


def _score_pairs(v: LoadedVersion, vectors: np.ndarray, owner: np.ndarray, wanted: np.ndarray, dtype, device: str | None,
                 workers: tuple) -> np.ndarray:
    """d_sym of each pair (vectors[owner[p]], row wanted[p]), the rows read in index order, PAIR_BLOCK at once;
    workers: (a thread pool or None, its threads) for numpy."""
    dists = np.empty(len(wanted))
    union, at = np.unique(wanted, return_inverse=True)
    by_row = np.argsort(at, kind="stable")
    at_sorted = at[by_row]
    if device is not None:
        import torch

        q = torch.as_tensor(vectors, device=device)
    for lo in range(0, len(union), PAIR_BLOCK):
        block = v.gather(union[lo:lo + PAIR_BLOCK])
        here = by_row[np.searchsorted(at_sorted, lo):np.searchsorted(at_sorted, lo + PAIR_BLOCK)]
        if device is None:
            dists[here] = distance.rerank_pairs(vectors, owner[here], block, at[here] - lo, dtype, *workers)
            continue
        block = torch.as_tensor(block, device=device)
        for p in range(0, len(here), PAIR_BLOCK):
            pairs = here[p:p + PAIR_BLOCK]
            dists[pairs] = distance.rerank_torch(q[torch.as_tensor(owner[pairs], device=device)],
                                                 block[torch.as_tensor(at[pairs] - lo, device=device)])
    return dists


def search(v: LoadedVersion, vector: np.ndarray, self_id, k: int, metric: str, alpha: float, keep: np.ndarray,
           filtered: bool, want: int, exact: bool) -> list[Hit]:
    """One query's answer: its candidates (every kept row when exact or small), re-ranked exactly."""
    if exact or v.candidates is None:
        rows = np.flatnonzero(keep)
    else:
        own = int(self_id is not None)
        rows = candidate_rows(v, vector[None, :], want + own, k + own, keep, filtered)[0]
    return hits(v, [rank(v, vector, rows, self_id, k, metric, alpha)], metric)[0]


def search_many(v: LoadedVersion, vectors: np.ndarray, self_ids: list, k: int, metric: str, alpha: float,
                keep: np.ndarray, filtered: bool, want: int, exact: bool, device: str | None,
                progress: bool | None) -> list[list[Hit]]:
    """`search` for a batch: one projection and one FAISS search for all, then the batched re-rank."""
    if exact or v.candidates is None:
        rows = [np.flatnonzero(keep)] * len(vectors)
    else:
        # each query gets the candidates `search` would fetch for it (one more only for a row's own name)
        own = np.array([i is not None for i in self_ids], dtype=np.int64)
        rows = candidate_rows(v, vectors, want + own, k + own, keep, filtered)
    return hits(v, rank_batches(v, vectors, rows, self_ids, k, metric, alpha, device, progress), metric)


def candidate_rows(v: LoadedVersion, vectors: np.ndarray, fetch, least, keep: np.ndarray,
                   filtered: bool) -> list[np.ndarray]:
    """Each query's FAISS candidates (`fetch` of them, at least `least` that pass the filter) as row numbers."""
    found = v.candidates.nearest(candidates.project(vectors, v.projection), fetch, least,
                                 v.ids[keep] if filtered else None)
    return [np.searchsorted(v.ids, f) for f in found]


def rank_batches(v: LoadedVersion, vectors: np.ndarray, rows: list[np.ndarray], self_ids: list, k: int,
                 metric: str, alpha: float, device: str | None,
                 progress: bool | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """`rank_many` over a batch of any size, in chunks of about BATCH_PAIRS candidate pairs, with a bar."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    out = []
    ends = np.cumsum([len(r) for r in rows])
    threads = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    with (ThreadPoolExecutor(threads) if device is None and threads > 1 else contextlib.nullcontext()) as pool, \
            tqdm(total=len(vectors), desc="query_many", unit="query", leave=False,
                 disable=progress is False or len(vectors) < 1000) as bar:
        lo = 0
        while lo < len(vectors):
            hi = max(lo + 1, int(np.searchsorted(ends, (ends[lo - 1] if lo else 0) + BATCH_PAIRS, side="right")))
            out += rank_many(v, vectors[lo:hi], rows[lo:hi], self_ids[lo:hi], k, metric, alpha, device,
                             (pool, threads))
            bar.update(hi - lo)
            lo = hi
    return out


def hits(v: LoadedVersion, ranked: list[tuple[np.ndarray, np.ndarray]], metric: str) -> list[list[Hit]]:
    records = v.records(np.concatenate([r for r, _ in ranked]).astype(np.int64))
    starts = np.cumsum([0] + [len(r) for r, _ in ranked])
    return [[Hit(rec["name"], rec["kind"], float(sc), rec["complexity"], rec, metric)
             for rec, sc in zip(records[lo:hi], scores)] for lo, hi, (_, scores) in zip(starts, starts[1:], ranked)]


def torch_device(device) -> str | None:
    """query_many's device: None for numpy; a CUDA GPU by default only where torch is loaded already."""
    import sys

    if device is None:
        torch = sys.modules.get("torch")
        return "cuda" if torch is not None and torch.cuda.is_available() else None
    import torch

    device = str(device)
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise TaskIndexError(f"device {device!r} is not usable here ({str(exc).splitlines()[0]}): "
                             "pass device=None for numpy, or 'cpu'") from None
    return device
