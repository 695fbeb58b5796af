"""Candidate search: a FAISS structure whose ranking agrees with d_sym, then exact re-rank.

d_sym depends only on the log-ratio log F_a - log F_b. For nearby tasks it is
about half the variance over filters of that log-ratio, i.e. a squared L2
distance between per-row centred log F vectors. Those live in ~21k dimensions,
so they are projected by PCA (trained on the index's own rows) to PROJ_DIM
floats, 1 KiB a row on disk, held by FAISS as float16 (512 bytes a row) and
searched: exact flat search below IVF_ROWS rows, an inverted file above. The top candidates are re-ranked with the
exact distance on the raw, memory-mapped vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PROJ_DIM = 256          # stored floats per row: PROJ_DIM - 1 PCA coordinates + the residual norm
EXACT_ROWS = 512        # below this every row is a candidate: brute force is the plan
PCA_SAMPLE = 4096       # rows used to train the projection
IVF_ROWS = 100_000      # flat below, IVF from here: at 100k IVF had the recall of flat (1.0) at 17 ms p50 against 21
BOUND_PROBES = 12      # percent of the IVF probes the lower-bound search makes: a row's own list comes first
                       # (its cost against the first search: tools/bench_candidates.py)
GPU_MAX_K = 2048        # the most neighbours a FAISS GPU index returns per query

# Candidates re-ranked exactly per result wanted (LanceDB's refine_factor). A query's true neighbours sit deeper
# in the candidate ranking the more rows lie near it, so the factor grows with the index (tools/bench_query.py,
# recall@10 of 20-30 queries): with 1.5k rows per seed task (100k rows) 5 gave 0.98 and 10 gave 1.000 (0.957
# and 0.997 on held-out queries); with 14k per seed (1M's rows per seed, in 100k rows) 10 gave 0.73, 20 0.895,
# 40 0.970 and 80 1.000. At 1M itself 40 gave 0.960 and 60 0.970 (dev queries), so 80 is the factor there: on
# held-out queries it gave 0.995 at 35 ms p50 (README, "Query").
REFINE_MIN, REFINE_MAX = 10, 80
REFINE_MAX_ROWS = 1_000_000  # the factor rises linearly from REFINE_MIN to REFINE_MAX here; beyond, shard


def default_refine(rows: int) -> int:
    return int(min(REFINE_MAX, max(REFINE_MIN, round(REFINE_MAX * rows / REFINE_MAX_ROWS))))


# A query unlike every row (a row's Fisher scaled far up or down, as between estimators) lies where the projection's
# squared distance no longer follows d_sym, which saturates: its true neighbours can sit thousands deep in FAISS's
# order, or in another cluster. It is told by its nearest candidate's exact distance, against the distances of
# sampled rows to their own nearest neighbours (measured once per loaded version), and then widens its search:
# exact distances to landmark rows spread over the index, then FAISS's order around the query and around the best
# row found, doubled until the deeper half adds nothing to the top k (rerank.widen; tools/bench_query.py).
FAR_SAMPLE = 128        # rows whose nearest-neighbour distance is measured
FAR_QUANTILE = 0.9      # a query whose best candidate is farther than this quantile of those distances widens
LANDMARKS = 256         # rows re-ranked by a widening query: the cluster it belongs to need not be near in FAISS
LANDMARK_SAMPLE = 20    # rows clustered per landmark, to choose them
LANDMARK_DIMS = 32      # leading projected coordinates they are clustered on
WIDEN_MAX = 128         # the most candidates a widening query re-ranks, in multiples of its first fetch
RESAMPLE = 0.1          # rows added or removed, as a fraction, after which the reference is measured again


@dataclass(frozen=True)
class Reference:
    """What a query's candidates are judged by, for the rows of one loaded version."""

    rows: int               # rows of the index when it was measured
    far: float              # a query whose nearest candidate lies farther than this widens its search
    landmarks: np.ndarray   # row ids drawn over the index, re-ranked exactly by a widening query

    def stale(self, rows: int) -> bool:
        return abs(rows - self.rows) > RESAMPLE * self.rows


def to_gpu(index):
    """A GPU copy of a FAISS IVF index where the installed FAISS has GPU support and sees a GPU, else None."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        return None
    return faiss.index_cpu_to_all_gpus(index)


def centred_log(vectors: np.ndarray) -> np.ndarray:
    z = np.log(np.asarray(vectors, dtype=np.float32))
    z -= z.mean(axis=1, keepdims=True)
    return z


def train_projection(vectors: np.ndarray, dim: int = PROJ_DIM - 1) -> np.ndarray:
    """PCA of centred log F: returns (dim + 1, d) float32, the mean row then the components."""
    z = centred_log(vectors).astype(np.float64)
    mean = z.mean(axis=0)
    z -= mean
    gram = z @ z.T  # n x n: cheap because the sample has far fewer rows than filters
    vals, vecs = np.linalg.eigh(gram)
    order = np.argsort(vals)[::-1]
    keep = [i for i in order[:dim] if vals[i] > 1e-9 * max(vals.max(), 1e-300)]
    comps = (vecs[:, keep].T @ z) / np.sqrt(vals[keep])[:, None]
    out = np.zeros((dim + 1, z.shape[1]), np.float32)
    out[0] = mean
    out[1:1 + len(keep)] = comps
    return out


def project(vectors: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """PCA coordinates plus one more: the norm of what the PCA does not capture.

    ||z_q - z_r||^2 = ||P(z_q - z_r)||^2 + ||R z_q - R z_r||^2, and the last term lies
    between (||R z_q|| - ||R z_r||)^2 (residuals parallel) and (||R z_q|| + ||R z_r||)^2;
    for rows drawn apart their residuals are nearly orthogonal, about ||R z_q||^2 + ||R z_r||^2.
    `Candidates.nearest` searches both ways: with the query's last coordinate at 0 (orthogonal:
    near-duplicate rows ranked by how far they really are, where PCA alone sees only noise) and
    with it kept (parallel: a lower bound, so a row the PCA was not trained on still finds itself).
    """
    z = centred_log(vectors) - projection[0]
    # one query: one BLAS dot a component, 1.2 ms (einsum 1.7); BLAS's threaded matrix-vector product takes
    # 0.3 ms on an idle machine but 12 ms at p99 with one other busy process (tools/bench_query.py, this machine)
    coords = np.vecdot(projection[1:], z[0])[None, :] if len(z) == 1 else z @ projection[1:].T
    out = np.empty((len(z), coords.shape[1] + 1), np.float32)
    out[:, :-1] = coords
    resid = np.einsum("ij,ij->i", z, z, dtype=np.float64) - np.einsum("ij,ij->i", coords, coords, dtype=np.float64)
    out[:, -1] = np.sqrt(np.maximum(resid, 0.0))
    return out


class Candidates:
    """FAISS over projected rows, with the row ids of the index (stable through deletes)."""

    def __init__(self, proj: np.ndarray, ids: np.ndarray, seed: int = 0, kind: str | None = None):
        import faiss

        n, dim = proj.shape
        if kind not in (None, "flat", "ivf"):
            raise ValueError(f"unknown candidate structure {kind!r}: use 'flat' or 'ivf'")
        self.kind = kind or ("flat" if n < IVF_ROWS else "ivf")  # IVF_ROWS chosen by tools/bench_query.py
        fp16 = faiss.ScalarQuantizer.QT_fp16  # half the RAM of float32 codes, and faster to scan (bench_query)
        if self.kind == "flat":
            base = faiss.IndexScalarQuantizer(dim, fp16)
            self.index = faiss.IndexIDMap(base)
            quantizer = None
        else:
            # sqrt(n) lists trained on 40 rows each: seconds at a million rows (the structure is rebuilt on open)
            nlist = max(1, int(np.sqrt(n)))
            quantizer = faiss.IndexFlatL2(dim)
            base = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, fp16)
            rng = np.random.default_rng(seed)
            sample = proj[np.sort(rng.choice(n, size=min(n, 40 * nlist), replace=False))]
            base.train(np.ascontiguousarray(sample))
            base.nprobe = max(1, nlist // 8)
            self.index = base
        self._quantizer = quantizer  # keep the SWIG owners alive
        self._base = base
        self._gpu = None  # the GPU copy, made on the first unfiltered search and dropped when rows change
        self.reference: Reference | None = None  # measured on the first query that needs it (rerank.reference)
        self.add(proj, ids)
        if self.kind == "ivf":
            self._repack()

    def _repack(self) -> None:
        """Copy the inverted lists into exactly sized ones: adding grows each list's arrays geometrically,
        which left ~100 B a row of unused capacity at 100k rows."""
        import faiss

        old = self._base.invlists
        new = faiss.ArrayInvertedLists(old.nlist, old.code_size)
        for i in range(old.nlist):
            if n := old.list_size(i):
                new.add_entries(i, n, old.get_ids(i), old.get_codes(i))
        self._base.replace_invlists(new, True)
        new.this.disown()  # the index owns it now

    def add(self, proj: np.ndarray, ids: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(proj, dtype=np.float32), np.asarray(ids, dtype=np.int64))
            self._gpu = None

    def remove(self, ids) -> None:
        import faiss

        if len(ids):
            self.index.remove_ids(faiss.IDSelectorBatch(np.asarray(list(ids), dtype=np.int64)))
            self._gpu = None

    def _params(self, allowed: np.ndarray | None, bound: bool = False, k: int = 0):
        """FAISS's search parameters: the filter, and for IVF the lists probed: fewer for the lower bound, and
        for a long list (a widened query's) enough that they hold twice the k rows asked for."""
        import faiss

        ivf = self.kind == "ivf"
        probes = None
        if ivf:
            probes = (max(1, self._base.nprobe * BOUND_PROBES // 100) if bound else
                      max(self._base.nprobe, -(-2 * k * self._base.nlist // max(1, self.index.ntotal))))
        if allowed is None and (probes is None or probes == self._base.nprobe):
            return None
        sel = None if allowed is None else faiss.IDSelectorBatch(np.asarray(allowed, dtype=np.int64))
        if not ivf:
            return faiss.SearchParameters(sel=sel)
        return faiss.SearchParametersIVF(sel=sel, nprobe=min(probes, self._base.nlist))

    def nearest(self, points: np.ndarray, far, near, allowed: np.ndarray | None = None) -> list[np.ndarray]:
        """Each query's candidate row ids: its far[i] nearest with its residual taken as orthogonal to every
        row's (last coordinate 0), then, of its near[i] nearest by the lower bound (residuals parallel), those
        not found already. The second list holds a row whose residual matches the query's however large it
        is: the query's own row, or a near-duplicate added after the PCA was trained, which the first list,
        favouring the rows the PCA fits best, can miss. far, near: an int, or one a query."""
        points = np.ascontiguousarray(points, dtype=np.float32)
        far, near = (np.broadcast_to(np.asarray(x, dtype=np.int64), len(points)) for x in (far, near))
        orthogonal = points.copy()
        orthogonal[:, -1] = 0.0

        def find(p: np.ndarray, k: int, bound: bool = False):  # one query: `search`, on one OpenMP thread
            return ([self.search(p[0], k, allowed, bound)] if len(p) == 1 else
                    self.search_many(p, k, allowed, bound))

        first, second = find(orthogonal, int(far.max(initial=0))), find(points, int(near.max(initial=0)), True)
        out = []
        for a, b, fa, ne in zip(first, second, far, near):
            a, b = a[a >= 0][:fa], b[b >= 0][:ne]
            out.append(np.concatenate([a, b[~np.isin(b, a)]]))
        return out

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None, bound: bool = False) -> np.ndarray:
        import faiss

        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # one query: OpenMP start-up costs more than it saves (bench_query)
        try:
            found = self.search_many(query[None, :], k, allowed, bound)[0]
        finally:
            faiss.omp_set_num_threads(threads)
        return found[found >= 0]

    def search_many(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
                    bound: bool = False) -> np.ndarray:
        """(queries, k) row ids, -1 past the end: one FAISS call on all OpenMP threads, or on the GPU copy
        of an IVF structure where there is one (FAISS's GPU indexes take no ID filter: filtered searches,
        more than GPU_MAX_K neighbours and searches probing more lists than the default stay on the CPU).
        bound: the lower-bound search, on the CPU with BOUND_PROBES percent of the probes: a row sits in the
        list nearest its own point, so its near-duplicates are in the first few lists."""
        k = min(k, self.index.ntotal)
        if k <= 0:
            return np.full((len(queries), 0), -1, np.int64)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        params = self._params(allowed, bound, k)
        if params is None and not bound and self.kind == "ivf" and k <= GPU_MAX_K:
            if self._gpu is None:
                self._gpu = to_gpu(self.index) or False  # False: no GPU here, do not ask again
            if self._gpu:
                return self._gpu.search(queries, k)[1]
        _, found = self.index.search(queries, k, params=params)
        return found

    def memory_bytes(self) -> int:
        per_row = self._base.d * 2 + 8  # fp16 codes and the int64 id
        return int(self.index.ntotal * per_row)
