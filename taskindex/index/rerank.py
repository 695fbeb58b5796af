"""The exact stage of a query: which rows are candidates, and their re-rank by the exact distance.

FAISS proposes candidates over the projected rows (or every row, below EXACT_ROWS or with exact=True);
a float32 pass over the memory-mapped raw vectors picks the k, and a float64 pass settles their order and
distances, so answers equal an exact scan's. A query whose nearest candidate is far from it, by the index's own
nearest-neighbour distances, widens its search (`widen`): there the projection's order no longer follows d_sym.
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
    dists, raw = _scored(v, vector, rows)
    return _top(v, vector, rows, dists, k, metric, alpha, raw)


def _scored(v: LoadedVersion, vector: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 d_sym of rows in index order, and their vectors where they were read at once: the usual query's
    candidates stay in memory for the float64 pass, an exact scan goes a block at a time."""
    if len(rows) <= RERANK_ROWS:
        raw = v.gather(rows)
        return distance.rerank(vector, raw), raw
    return np.concatenate([distance.rerank(vector, v.gather(rows[i:i + RERANK_ROWS]))
                           for i in range(0, len(rows), RERANK_ROWS)]), None


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
        return hits(v, [rank(v, vector, np.flatnonzero(keep), self_id, k, metric, alpha)], metric)[0]
    own = int(self_id is not None)
    rows = candidate_rows(v, vector[None, :], want + own, k + own, keep, filtered)[0]
    ranked = rank(v, vector, rows, self_id, k, metric, alpha)
    if poor(v, ranked, metric, alpha):
        ranked = widen(v, vector, rows, self_id, k, metric, alpha, keep, filtered, want + own)
    return hits(v, [ranked], metric)[0]


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
    ranked = rank_batches(v, vectors, rows, self_ids, k, metric, alpha, device, progress)
    if not exact and v.candidates is not None:  # a poor query widens as `search` does, one at a time
        for i in [i for i, r in enumerate(ranked) if poor(v, r, metric, alpha)]:
            ranked[i] = widen(v, vectors[i], rows[i], self_ids[i], k, metric, alpha, keep, filtered, want + own[i])
    return hits(v, ranked, metric)


def candidate_rows(v: LoadedVersion, vectors: np.ndarray, fetch, least, keep: np.ndarray,
                   filtered: bool) -> list[np.ndarray]:
    """Each query's FAISS candidates (`fetch` of them, at least `least` that pass the filter) as row numbers."""
    found = v.candidates.nearest(candidates.project(vectors, v.projection), fetch, least,
                                 v.ids[keep] if filtered else None)
    return [np.searchsorted(v.ids, f) for f in found]


def reference(v: LoadedVersion) -> candidates.Reference:
    """The rows' nearest-neighbour distances (FAR_SAMPLE rows, each by the default path of a k=1 query) and the
    landmark rows, drawn once per loaded version (again after RESAMPLE of its rows changed) by the first query
    that needs them, the same in every process."""
    cand, n = v.candidates, len(v.ids)
    if cand.reference is None or cand.reference.stale(n):
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(n, min(n, candidates.FAR_SAMPLE), replace=False))
        vectors, ids = v.gather(sample), [int(i) for i in v.ids[sample]]
        rows = candidate_rows(v, vectors, want(v, 1, "sym", None) + 1, 2, np.ones(n, dtype=bool), False)
        nearest = [s[0] for _, s in rank_batches(v, vectors, rows, ids, 1, "sym", 0.0, None, False) if len(s)]
        far = float(np.quantile(nearest, candidates.FAR_QUANTILE)) if nearest else np.inf
        cand.reference = candidates.Reference(n, far, _landmarks(v, rng))
    return cand.reference


def _landmarks(v: LoadedVersion, rng: np.random.Generator) -> np.ndarray:
    """Row ids nearest the centres of a k-means of sampled rows' leading projected coordinates: every cluster
    gets one however few rows it holds (a random draw missed a cluster of 1.6% of the rows)."""
    import faiss

    n = len(v.ids)
    sample = np.sort(rng.choice(n, min(n, candidates.LANDMARK_SAMPLE * candidates.LANDMARKS), replace=False))
    points = np.ascontiguousarray(v.proj_rows(sample)[:, :candidates.LANDMARK_DIMS])
    means = faiss.Kmeans(points.shape[1], min(candidates.LANDMARKS, len(sample)), niter=10, seed=0,
                         min_points_per_centroid=1)  # no warning: a few rows a centre are enough here
    means.train(points)
    flat = faiss.IndexFlatL2(points.shape[1])
    flat.add(points)
    return v.ids[np.unique(sample[flat.search(means.centroids, 1)[1][:, 0]])]


def poor(v: LoadedVersion, ranked: tuple[np.ndarray, np.ndarray], metric: str, alpha: float) -> bool:
    """Whether a query's best answer lies farther than most rows lie from their nearest neighbour."""
    top, scores = ranked
    if not len(top):
        return False
    dists = scores + alpha * v.complexity[top] if metric == "asym" else scores
    return float(dists.min()) > reference(v).far


def widen(v: LoadedVersion, vector: np.ndarray, rows: np.ndarray, self_id, k: int, metric: str, alpha: float,
          keep: np.ndarray, filtered: bool, fetch: int) -> tuple[np.ndarray, np.ndarray]:
    """A poor query's answer from a wider search. Its candidates (`rows`, `fetch` of them) and the landmark rows
    are re-ranked; then FAISS's order around the query, and around the best row found where that is not among
    its candidates (the query's true cluster, far in the projection), is read ever deeper, doubling, until each of
    the k best lies in the first half of some list read, up to WIDEN_MAX times `fetch` candidates."""
    ref = reference(v)
    at = np.minimum(np.searchsorted(v.ids, ref.landmarks), len(v.ids) - 1)
    marks = at[v.ids[at] == ref.landmarks]  # those still in the index
    have = _own(v, np.union1d(rows, marks[keep[marks]]), self_id)
    dists = _scored(v, vector, have)[0]
    allowed = v.ids[keep] if filtered else None
    cap = fetch * candidates.WIDEN_MAX
    orders = [_order(v, candidates.project(vector[None, :], v.projection), cap, allowed)]
    pivot = have[_best(v, have, dists, 1, metric, alpha)]
    if not np.isin(pivot, orders[0][:fetch]).all():
        orders.append(_order(v, v.proj_rows(pivot), cap, allowed))
    size = fetch
    while size < cap and any(len(o) > size for o in orders):
        size *= 2
        new = _own(v, np.setdiff1d(np.concatenate([o[:size] for o in orders]), have), self_id)
        have, dists = np.concatenate([have, new]), np.concatenate([dists, _scored(v, vector, new)[0]])
        if _depth(orders, have[_best(v, have, dists, k, metric, alpha)], size) < size // 2:
            break
    order = np.argsort(have, kind="stable")  # index order: ties fall as in an exact scan
    return _top(v, vector, have[order], dists[order], k, metric, alpha)


def _order(v: LoadedVersion, point: np.ndarray, size: int, allowed: np.ndarray | None) -> np.ndarray:
    """Row numbers in FAISS's order from a projected point (its residual taken as orthogonal to every row's)."""
    return np.searchsorted(v.ids, v.candidates.nearest(point, size, 0, allowed)[0])


def _best(v: LoadedVersion, rows: np.ndarray, dists: np.ndarray, k: int, metric: str, alpha: float) -> np.ndarray:
    """Positions of the k best scores (float32) of rows with d_sym `dists`."""
    score = dists - alpha * v.complexity[rows] if metric == "asym" else dists
    return np.argsort(score, kind="stable")[:k]


def _depth(orders: list[np.ndarray], best: np.ndarray, size: int) -> int:
    """How deep the best rows lie: the largest, over them, of their first place in any list (size: in none)."""
    place = np.full(len(best), size)
    for order in orders:
        hit = order[:size, None] == best[None, :]
        place = np.where(hit.any(axis=0), np.minimum(place, hit.argmax(axis=0)), place)
    return int(place.max(initial=0))


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
