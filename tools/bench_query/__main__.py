#!/usr/bin/env python
"""Benchmark of TaskIndex search on synthetic indexes built from real TASK2VEC embeddings.

Rows are perturbations of real seed embeddings at the default probe's dimension
(EfficientNet-Lite0, 21,008 filters): row = F_seed * exp(N(0, s)) per filter + prior,
with s drawn per row, log-uniformly, from --spread (default 0.1..1.0). Seeds are the
rows of the shipped index (index_data/) when it exists, else a few sample tasks
embedded here (cached under --workdir/seeds). Queries are fresh perturbations of the
seeds, never rows of the index.

For each size N it reports: build time; recall@10 of the default query path against
the exact answer (`exact=True`); p50/p99 latency of the default and the exact path;
where the default path spends its time (candidate search, gather of raw vectors,
exact re-rank, the rest); RAM per row (candidate structure, and the RSS growth of a
fresh process opening the index); time to add one row and 1,000 rows. At 10k (or
the smallest size of at most 10k) also the reference repository's pairwise loop
(one pair at a time with scipy's cosine, timed on a subset and extrapolated) and a
vectorised numpy brute force over all raw vectors in RAM.

Usage:
    .venv/bin/python tools/bench_query.py                      # N = 10k and 100k
    .venv/bin/python tools/bench_query.py --sizes 2000 --queries 10 --latency-queries 50
    .venv/bin/python tools/bench_query.py --markdown out/perf_query.md

Results go to stdout, progress to stderr. Sizes whose raw vectors do not fit on the
free disk of --workdir are skipped with a printed line (1M rows need ~44 GB with the default
--vectors bfloat16, ~86 GB with float32). Also: the candidate structure the index did not choose at
that size (flat <-> IVF) on the same queries, and query_many of --many-queries fresh queries against
as many single queries. Before the queries the page cache is warmed with index.warm() where the vectors
fit in half the available memory, as a server would at start (--no-warm: measure cold); the report says.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import taskindex  # noqa: E402
from machine import cpu_name  # noqa: E402
from taskindex import distance
from taskindex.index import candidates  # noqa: E402
from taskindex.embedding.vector import Embedding  # noqa: E402
from taskindex.index.task_index import TaskIndex  # noqa: E402
from taskindex.shipped import DEFAULT_INDEX  # noqa: E402

SEED_TASKS = ("fashion-all", "mnist-all", "digits-all", "fashion-footwear")
SEED_IMAGE_SIZE = 48
K = 10
KIB = 1024

# (key, label, target description, check) -- a check gets (value, N) and returns True/False, or None
# when the target does not apply at that N.
TARGETS = {
    "recall": ("recall@10 >= 0.99 (100k), >= 0.97 (1M)",
               lambda v, n: (v >= 0.99) if n == 100_000 else (v >= 0.97) if n >= 1_000_000 else None),
    "p50_ms": ("p50 <= 8 ms at 100k, <= 60 ms at 1M",
               lambda v, n: (v <= 8.0) if n == 100_000 else (v <= 60.0) if n >= 1_000_000 else None),
    "p99_ms": ("p99 <= 20 ms at 100k", lambda v, n: (v <= 20.0) if n == 100_000 else None),
    "rss_bytes_per_row": ("<= 1.5 KiB RAM per row (100k and 1M: fixed costs dominate smaller N)",
                          lambda v, n: (v <= 1.5 * KIB) if n >= 100_000 else None),
    "disk_bytes_per_row": ("<= 45 KiB on disk per row at 1M", lambda v, n: (v <= 45 * KIB) if n >= 1_000_000
                           else None),
    "add_one_ms": ("add one row <= 200 ms (1M)", lambda v, n: (v <= 200.0) if n >= 1_000_000 else None),
    "many_speedup": ("query_many of 1,000 >= 20x faster than 1,000 queries (100k)",
                     lambda v, n: (v >= 20.0) if n == 100_000 else None),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- machine ---------------------------------------------------------------------------------------


def proc_status() -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, VmHWM of this process in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def machine_info(workdir: Path) -> dict:
    import faiss
    import scipy

    cpu = cpu_name()
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": mem / 2**30, "load": os.getloadavg(),
            "free_gb": shutil.disk_usage(workdir).free / 1e9, "python": platform.python_version(),
            "numpy": np.__version__, "scipy": scipy.__version__, "faiss": faiss.__version__,
            "faiss_threads": faiss.omp_get_max_threads(), "taskindex": taskindex.__version__, "commit": git_commit()}


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "taskindex"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (out + (" + uncommitted changes in taskindex/" if dirty else "")) if out else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_line(m: dict) -> str:
    return (f"{m['cores']} CPU cores ({m['cpu']}), {m['ram_gib']:.0f} GiB RAM, {m['free_gb']:.0f} GB free in the "
            f"workdir, Python {m['python']}, numpy {m['numpy']}, scipy {m['scipy']}, faiss {m['faiss']} "
            f"({m['faiss_threads']} threads), taskindex {m['taskindex']} at commit {m['commit']}")


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


# --- seeds and synthetic rows ----------------------------------------------------------------------


def load_seeds(args) -> tuple[list[Embedding], str]:
    """Real embeddings to perturb, and a sentence saying where they came from."""
    shipped = DEFAULT_INDEX
    if (shipped / "CURRENT").is_file() and not args.embed_seeds:
        with TaskIndex.open(shipped, readonly=True) as idx:
            seeds = [idx.get(name)[0] for name in idx.names()]
            size = idx.space["image_size"]
        return seeds, f"{len(seeds)} rows of the shipped index index_data/ (image size {size})"
    cache = Path(args.workdir) / "seeds"
    cache.mkdir(parents=True, exist_ok=True)
    probe = None
    seeds = []
    cached = 0
    for name in args.seed_tasks:
        path = cache / f"{name}@{args.seed_image_size}px-{args.seed_per_class}pc.emb"
        if path.is_file():
            seeds.append(Embedding.load(path))
            cached += 1
            continue
        if probe is None:
            probe = taskindex.load_probe("efficientnet_lite0", image_size=args.seed_image_size)
        log(f"embedding seed task {name} ({args.seed_per_class} images per class, {args.seed_image_size} px)")
        t = time.perf_counter()
        emb = taskindex.embed(taskindex.samples.load(name, max_per_class=args.seed_per_class), probe, progress=False)
        log(f"  {time.perf_counter() - t:.0f} s")
        emb.save(path)
        seeds.append(emb)
    where = "index_data/ has no index, so " if not args.embed_seeds else ""
    return seeds, (f"{where}{len(seeds)} sample tasks embedded with efficientnet_lite0 at {args.seed_image_size} px, "
                   f"{args.seed_per_class} images per class ({', '.join(args.seed_tasks)}; "
                   f"{cached} read from the cache {cache})")


class Perturber:
    """Synthetic embeddings: F_seed * exp(N(0, s)) per filter + prior, s log-uniform in [lo, hi] per row."""

    def __init__(self, seeds: list[Embedding], spread: tuple[float, float], seed: int):
        self.seeds = seeds
        self.fisher = np.stack([e.fisher for e in seeds]).astype(np.float32)
        self.prior = seeds[0].prior.astype(np.float32)
        self.lo, self.hi = np.log(spread[0]), np.log(spread[1])
        self.rng = np.random.default_rng(seed)
        self.dim = self.fisher.shape[1]

    def draw(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, dim) float32 vectors and the seed index of each."""
        which = self.rng.integers(len(self.seeds), size=n)
        s = np.exp(self.rng.uniform(self.lo, self.hi, size=n)).astype(np.float32)
        noise = self.rng.standard_normal((n, self.dim), dtype=np.float32)
        noise *= s[:, None]
        np.exp(noise, out=noise)
        noise *= self.fisher[which]
        noise += self.prior
        return noise, which

    def embeddings(self, n: int) -> list[tuple[Embedding, int]]:
        vecs, which = self.draw(n)
        return [(Embedding(v, self.seeds[j].prior, self.seeds[j].layout, self.seeds[j].meta), int(j))
                for v, j in zip(vecs, which)]


# --- measurements ----------------------------------------------------------------------------------


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def build(path: Path, n: int, perturb: Perturber, batch: int, image_size: int, vectors: str) -> dict:
    probe = taskindex.load_probe("efficientnet_lite0", image_size=image_size)
    index = TaskIndex.create(path, probe=probe, vectors=vectors)
    gen_s = add_s = 0.0
    done = 0
    while done < n:
        m = min(batch, n - done)
        t = time.perf_counter()
        rows = [(f"row{done + i}", emb, "task", {"seed": j}) for i, (emb, j) in enumerate(perturb.embeddings(m))]
        gen_s += time.perf_counter() - t
        t = time.perf_counter()
        index.add_many(rows)
        dt = time.perf_counter() - t
        add_s += dt
        done += m
        del rows
        log(f"  added {done:,}/{n:,} rows ({dt:.1f} s for this batch of {m:,}; {load_line()})")
    return {"index": index, "build_s": add_s, "gen_s": gen_s}


def rss_of_open(path: Path, n: int) -> dict:
    """Open the index in a fresh process and report its RSS before/after open and after queries."""
    out = subprocess.run([sys.executable, __file__, "--rss-probe", str(path)], capture_output=True, text=True,
                         timeout=3600)
    if out.returncode != 0:
        log(f"RSS probe failed: {out.stderr.strip()[-2000:]}")
        return {}
    return json.loads(out.stdout.strip().splitlines()[-1])


def rss_probe(path: str) -> None:
    """Child process of rss_of_open: prints one JSON line."""
    import faiss  # noqa: F401  (imports count in the baseline, not in the index)
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    gc.collect()
    before = proc_status()
    t = time.perf_counter()
    index = TaskIndex.open(path, readonly=True)
    open_s = time.perf_counter() - t
    gc.collect()
    opened = proc_status()
    names = index.names()
    rng = np.random.default_rng(1)
    for i in rng.choice(len(names), size=min(20, len(names)), replace=False):
        index.query(names[int(i)], k=K)
    queried = proc_status()
    print(json.dumps({"before": before, "opened": opened, "queried": queried, "open_s": open_s,
                      "torch": "torch" in sys.modules, "rows": len(index)}))


def warm_if_it_fits(index, wanted: bool) -> dict:
    """What a server does before it takes traffic: index.warm() where the vectors fit in half the memory
    available (at 1M rows they do not, and queries read from disk); --no-warm measures a cold start."""
    stored = sum(v.nbytes for v in index._vectors)
    with open("/proc/meminfo") as f:
        avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    if not wanted or stored > avail / 2:
        return {"bytes": 0, "stored": stored, "available": avail, "wanted": wanted}
    log(f"  warming the page cache: index.warm() over {stored / 1e9:.1f} GB of vectors")
    t = time.perf_counter()
    index.warm(progress=False)
    return {"bytes": stored, "stored": stored, "available": avail, "wanted": wanted, "s": time.perf_counter() - t}


def timed_query(index, emb, **kw) -> tuple[list, float]:
    t = time.perf_counter()
    hits = index.query(emb, k=K, **kw)
    return hits, time.perf_counter() - t


def breakdown(index, queries: list[Embedding]) -> dict | None:
    """Where the default query path spends its time, by re-running its steps (private API, best effort)."""
    import inspect

    try:
        cand = index._candidates
        if cand is None:
            return None
        as_query = "query" in inspect.signature(candidates.project).parameters
        rerank = getattr(distance, "rerank", distance.one_to_many)
        keys = ("project", "faiss", "map_ids", "gather", "rerank", "topk_exact", "total")
        parts = {k: [] for k in keys}
        for q in queries:
            t0 = time.perf_counter()
            point = (candidates.project(q.vector[None, :], index._projection, query=True) if as_query
                     else candidates.project(q.vector[None, :], index._projection))[0]
            t1 = time.perf_counter()
            want = index._want(K, "sym", None) if hasattr(index, "_want") else K * candidates.OVERFETCH  # (before refine)
            found = (cand.nearest(point[None, :], want, K)[0] if hasattr(cand, "nearest")  # (before the lower bound)
                     else cand.search(point, want))
            t2 = time.perf_counter()
            rows = (np.array([index._by_id[i] for i in found.tolist()], dtype=np.int64) if hasattr(index, "_by_id")
                    else np.searchsorted(index._ids, found))
            t3 = time.perf_counter()
            raw = index._gather(rows)
            t4 = time.perf_counter()
            d = rerank(q.vector, raw)
            t5 = time.perf_counter()
            if rerank is not distance.one_to_many:  # the k answers get their float64 distance
                rerank(q.vector, raw[np.argsort(d, kind="stable")[:K]], np.float64)
            t6 = time.perf_counter()
            index.query(q, k=K)
            t7 = time.perf_counter()
            for key, dt in zip(keys, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6)):
                parts[key].append(dt)
        med = {k: statistics.median(v) * 1e3 for k, v in parts.items()}
        med["other"] = med["total"] - sum(med[k] for k in keys[:-1])
        med["candidates"] = len(found)
        return med
    except Exception as exc:  # internals changed: skip the breakdown, keep the benchmark
        log(f"breakdown skipped ({type(exc).__name__}: {exc})")
        return None


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
    n = len(index)
    t = time.perf_counter()
    raw = index._gather(np.arange(n))  # all raw vectors in RAM, float32
    load_s = time.perf_counter() - t
    loop_per_row, brute = [], []
    max_diff = 0.0
    for q in queries[:reps]:
        sub = raw[:subset]
        with blas_one_thread():
            t = time.perf_counter()
            d_loop = pairwise_loop(q.vector, sub)
            loop_per_row.append((time.perf_counter() - t) / len(sub))
        t = time.perf_counter()
        d_all = distance.one_to_many(q.vector, raw)
        brute.append(time.perf_counter() - t)
        max_diff = max(max_diff, float(np.abs(d_all[:subset] - d_loop).max()))
    del raw
    gc.collect()
    per_row = statistics.median(loop_per_row)
    return {"loop_rows": min(subset, n), "loop_per_row_us": per_row * 1e6, "loop_s": per_row * n,
            "brute_s": statistics.median(brute), "load_s": load_s, "max_diff": max_diff, "reps": len(brute)}


def add_timings(index, perturb: Perturber, singles: int, bulk: int) -> dict:
    one = []
    tag = f"v{index.version}"  # a --reuse of a kept index adds new names beside the earlier runs' rows
    for i, (emb, j) in enumerate(perturb.embeddings(singles)):
        t = time.perf_counter()
        index.add(f"extra{i}-{tag}", emb, "task", {"seed": j})
        one.append(time.perf_counter() - t)
    rows = [(f"bulk{i}-{tag}", emb, "task", {"seed": j}) for i, (emb, j) in enumerate(perturb.embeddings(bulk))]
    t = time.perf_counter()
    index.add_many(rows)
    many = time.perf_counter() - t
    return {"add_one_ms": statistics.median(one) * 1e3, "add_one_max_ms": max(one) * 1e3, "add_one_n": singles,
            "add_bulk_s": many, "add_bulk_n": bulk}


def scan_exact(index, qs: list[Embedding]) -> list[list]:
    """The exact top-K of every query in one sequential pass over the segment files, for indexes whose vectors
    outgrow the page cache: exact=True reads rows at random there (25 MB/s measured at 1M rows: half an hour a
    query). Float32 d_sym chooses, as the index's own re-rank does; returns (name, distance) pairs per query."""
    from types import SimpleNamespace

    from taskindex.index.storage import decode_vectors

    best = [[] for _ in qs]
    for seg, segment in enumerate(index.manifest["segments"]):
        ref = segment["vectors"]
        dtype = np.dtype("<u2" if ref["name"].endswith(".bf16") else "<f4")
        rows = np.flatnonzero(index._seg == seg)  # live rows of this segment, in file order
        pos = index._pos[rows]
        path = index._store.path(ref)
        for lo in range(0, len(rows), 2048):
            p = pos[lo:lo + 2048]
            raw = np.fromfile(path, dtype=dtype, count=int(p[-1] - p[0] + 1) * index.dim,
                              offset=int(p[0]) * index.dim * dtype.itemsize).reshape(-1, index.dim)
            block = decode_vectors(raw[p - p[0]])
            for i, q in enumerate(qs):
                d = distance.rerank(q.vector, block)
                top = np.argsort(d)[:K]
                best[i] = sorted(best[i] + [(float(d[t]), int(rows[lo + t])) for t in top])[:K]
        log(f"    scanned segment {seg + 1}/{len(index.manifest['segments'])}")
    names = index._rows["name"]
    return [[SimpleNamespace(name=names.iat[r], distance=dd) for dd, r in b] for b in best]


def other_structure(index, qs: list[Embedding], truth: list[set], lq: list[Embedding]) -> dict:
    """Recall and latency of the candidate structure the index did not choose at this size (flat <-> IVF),
    on the same queries: the measurement behind candidates.IVF_ROWS."""
    chosen = index._candidates
    kind = "ivf" if chosen.kind == "flat" else "flat"
    t = time.perf_counter()
    index._candidates = candidates.Candidates(index._proj_rows(np.arange(len(index))), index._ids, kind=kind)
    build_s = time.perf_counter() - t
    try:
        rec = [len(names & {h.name for h in index.query(q, k=K)}) / K for q, names in zip(qs, truth)]
        for q in lq[:5]:
            index.query(q, k=K)
        lat = [timed_query(index, q)[1] for q in lq]
        mem = index._candidates.memory_bytes()
    finally:
        index._candidates = chosen
    return {"kind": kind, "recall": float(np.mean(rec)), "p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3,
            "build_s": build_s, "bytes_per_row": mem / len(index)}


def refine_sweep(index, factors: list[int], qs: list[Embedding], truth: list[set], lq: list[Embedding]) -> list:
    """Recall@10 (on the recall queries) and p50 (on the latency queries) for each candidates-per-result factor."""
    out = []
    for r in factors:
        log(f"  refine={r}")
        found = [{h.name for h in index.query(q, k=K, refine=r)} for q in qs]
        recall = [len(f & t) / K for f, t in zip(found, truth)]
        lat = [timed_query(index, q, refine=r)[1] for q in lq]
        out.append({"refine": r, "recall": float(np.mean(recall)), "recall_min": float(np.min(recall)),
                    "p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3})
    return out


def batch_queries(index, perturb: Perturber, m: int, device: str | None) -> dict:
    """query_many of m fresh queries against m single queries, side by side, and whether they agree; with
    `device`, query_many on that torch device too."""
    qs = [e for e, _ in perturb.embeddings(m)]
    index.query_many(qs[:20], k=K)  # warm-up
    t = time.perf_counter()
    many = index.query_many(qs, k=K, progress=False)
    many_s = time.perf_counter() - t
    t = time.perf_counter()
    one = [index.query(q, k=K) for q in qs]
    one_s = time.perf_counter() - t
    same = sum([h.name for h in a] == [h.name for h in b] for a, b in zip(one, many))
    out = {"many_n": m, "many_s": many_s, "singles_s": one_s, "many_speedup": one_s / many_s, "many_same": same}
    if device:
        index.query_many(qs[:20], k=K, device=device)  # warm-up (torch's first call)
        t = time.perf_counter()
        on = index.query_many(qs, k=K, progress=False, device=device)
        out.update(device=device, device_s=time.perf_counter() - t,
                   device_same=sum([h.name for h in a] == [h.name for h in b] for a, b in zip(one, on)))
    return out


def bench_size(n: int, args, seeds: list[Embedding], image_size: int, baseline_n: int | None) -> dict:
    path = Path(args.workdir) / f"index-{n}"
    res = {"n": n}
    rows = Perturber(seeds, args.spread, seed=args.seed)
    queries = Perturber(seeds, args.spread, seed=args.seed + 10_000)
    reuse = args.reuse and (path / "CURRENT").is_file()
    if reuse:  # an index a --keep run (or an interrupted one) left: measure it as it is, without the build
        log(f"N = {n:,}: reusing {path} ({load_line()})")
        rows = Perturber(seeds, args.spread, seed=args.seed + 20_000)  # the added rows: new draws all the same
        b = {"build_s": float("nan"), "gen_s": float("nan")}
    else:
        if path.exists():
            shutil.rmtree(path)
        log(f"N = {n:,}: building {path} in batches of {args.batch:,} ({load_line()})")
        b = build(path, n, rows, args.batch, image_size, args.vectors)
        b["index"].close()
    t = time.perf_counter()
    index = TaskIndex.open(path)  # what a user opening it gets: the candidate structure is chosen for its size
    res["open_s"] = time.perf_counter() - t
    res.update(build_s=b["build_s"], gen_s=b["gen_s"], load_build=os.getloadavg()[0], vectors=args.vectors)
    res["candidates_kind"] = index.info()["candidates"]
    res["cand_bytes"] = index._candidates.memory_bytes() if index._candidates is not None else 0
    res["cand_bytes_per_row"] = res["cand_bytes"] / len(index)
    res["disk_bytes"] = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

    log("  RSS of a fresh process opening the index")
    res["rss"] = rss_of_open(path, n)

    res["warm"] = warm_if_it_fits(index, args.warm)
    log(f"  recall: {args.queries} queries, default vs exact " + ("(one scan)" if args.scan_truth else "path"))
    qs = [e for e, _ in queries.embeddings(args.queries)]
    index.query(qs[0], k=K)  # warm-up (page cache, lazy imports)
    rec_id, rec_dist, t_exact, t_def, first, tenth, truth = [], [], [], [], [], [], []
    scanned = scan_exact(index, qs) if args.scan_truth else None
    for i, q in enumerate(qs):
        approx, dt = timed_query(index, q)
        t_def.append(dt)
        if scanned is None:
            exact, dt = timed_query(index, q, exact=True)
            t_exact.append(dt)
        else:
            exact = scanned[i]
        names = {h.name for h in exact}
        truth.append(names)
        rec_id.append(len(names & {h.name for h in approx}) / K)
        kth = exact[-1].distance
        first.append(exact[0].distance)
        tenth.append(kth)
        rec_dist.append(sum(h.distance <= kth + 1e-7 for h in approx) / K)
        if i == 0 or (i + 1) % 10 == 0:
            log(f"    {i + 1}/{len(qs)}: exact {dt:.2f} s, recall so far {np.mean(rec_id):.4f}")
    res.update(recall=float(np.mean(rec_id)), recall_min=float(np.min(rec_id)), recall_dist=float(np.mean(rec_dist)),
               exact_p50_ms=pct(t_exact, 50) * 1e3 if t_exact else float("nan"),
               exact_p99_ms=pct(t_exact, 99) * 1e3 if t_exact else float("nan"), recall_queries=len(qs),
               d_first=float(np.median(first)), d_tenth=float(np.median(tenth)))

    log(f"  latency: {args.latency_queries} queries on the default path")
    lq = [e for e, _ in queries.embeddings(args.latency_queries)]
    for q in lq[:5]:
        index.query(q, k=K)
    lat = [timed_query(index, q)[1] for q in lq]
    res.update(p50_ms=pct(lat, 50) * 1e3, p99_ms=pct(lat, 99) * 1e3, mean_ms=float(np.mean(lat)) * 1e3,
               latency_queries=len(lat), load_query=os.getloadavg()[0])
    if args.refine:
        res["refine"] = refine_sweep(index, args.refine, qs, truth, lq)
    res["breakdown"] = breakdown(index, lq[:min(50, len(lq))])
    if index._candidates is not None:
        res["alternative"] = other_structure(index, qs, truth, lq)
    if args.many_queries:
        res.update(batch_queries(index, queries, args.many_queries, args.many_device))

    if baseline_n == n:
        log(f"  baselines: pairwise loop on {args.loop_rows} rows, numpy brute force over {n:,} rows")
        bl = baselines(index, lq, args.loop_rows, args.baseline_queries)
        bl["speedup_loop"] = bl["loop_s"] / (res["p50_ms"] / 1e3)
        bl["speedup_brute"] = bl["brute_s"] / (res["p50_ms"] / 1e3)
        res["baselines"] = bl

    log(f"  add: {args.add_singles} single rows, then one add_many of {args.add_bulk:,}")
    res.update(add_timings(index, rows, args.add_singles, args.add_bulk))
    index.close()
    del index
    gc.collect()
    if not args.keep:
        shutil.rmtree(path, ignore_errors=True)
    return res


# --- reporting -------------------------------------------------------------------------------------


def verdict(key: str, value: float, n: int) -> str:
    if key not in TARGETS or value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    ok = TARGETS[key][1](value, n)
    return "" if ok is None else ("PASS" if ok else "FAIL")


def fmt_ms(v: float) -> str:
    return f"{v / 1e3:.2f} s" if v >= 1e4 else f"{v:.2f} ms" if v < 100 else f"{v:.0f} ms"


def fmt_s(v: float) -> str:
    return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.1f} s" if v < 600 else f"{v / 60:.1f} min"


def table_rows(r: dict) -> list[tuple[str, str, str, str]]:
    """(metric, value, target, verdict) for one size."""
    n = r["n"]
    out = []

    def row(metric, value, key=None, raw=None):
        target = TARGETS[key][0] if key in TARGETS else ""
        out.append((metric, value, target, verdict(key, raw, n) if key else ""))

    if math.isnan(r["build_s"]):
        row("build: add_many in batches", "not timed here (--reuse of an index built earlier)")
    else:
        row("build: add_many in batches (excl. generating rows)",
            f"{fmt_s(r['build_s'])} ({r['build_s'] / n * 1e3:.2f} ms/row; generation {fmt_s(r['gen_s'])})")
    row("on disk", f"{r['disk_bytes'] / 1e9:.2f} GB ({r['disk_bytes'] / n / KIB:.1f} KiB/row, "
        f"{r.get('vectors', 'float32')} vectors)", "disk_bytes_per_row", r["disk_bytes"] / n)
    row("candidate structure (chosen on open; open time)", f"{r['candidates_kind']} ({fmt_s(r['open_s'])})")
    w = r.get("warm")
    if w:
        row("page cache before the queries", f"warmed by index.warm(): {w['bytes'] / 1e9:.1f} GB in {fmt_s(w['s'])}"
            if w["bytes"] else "cold: not warmed (--no-warm)" if not w["wanted"] else
            f"not warmed: {w['stored'] / 1e9:.1f} GB of vectors, {w['available'] / 1e9:.1f} GB available")

    row(f"recall@10, default vs exact ({r['recall_queries']} queries)",
        f"{r['recall']:.4f} (min {r['recall_min']:.2f}; by distance {r['recall_dist']:.4f})", "recall", r["recall"])
    row("exact d_sym of the 1st / 10th neighbour (median over queries)", f"{r['d_first']:.4g} / {r['d_tenth']:.4g}")
    row(f"default query p50 / p99 ({r['latency_queries']} queries)",
        f"{fmt_ms(r['p50_ms'])} / {fmt_ms(r['p99_ms'])}", "p50_ms", r["p50_ms"])
    row("  p99 alone", fmt_ms(r["p99_ms"]), "p99_ms", r["p99_ms"])
    alt = r.get("alternative")
    if alt:
        row(f"the other structure ({alt['kind']}): recall@10, p50 / p99, RAM/row, build",
            f"{alt['recall']:.4f}, {fmt_ms(alt['p50_ms'])} / {fmt_ms(alt['p99_ms'])}, "
            f"{alt['bytes_per_row']:.0f} B, {fmt_s(alt['build_s'])}")
    if "many_s" in r:
        row(f"query_many of {r['many_n']:,} against {r['many_n']:,} single queries",
            f"{fmt_s(r['many_s'])} vs {fmt_s(r['singles_s'])}: {r['many_speedup']:.1f}x "
            f"({r['many_same']} of {r['many_n']} answers identical)", "many_speedup", r["many_speedup"])
    if "device_s" in r:
        row(f"  the same with device={r['device']!r} (torch)",
            f"{fmt_s(r['device_s'])}: {r['singles_s'] / r['device_s']:.1f}x "
            f"({r['device_same']} of {r['many_n']} answers identical to single queries)")
    for sw in r.get("refine", []):
        row(f"  refine={sw['refine']} ({sw['refine'] * K} candidates): recall@10, p50 / p99",
            f"{sw['recall']:.4f} (min {sw['recall_min']:.2f}), {fmt_ms(sw['p50_ms'])} / {fmt_ms(sw['p99_ms'])}")
    bd = r.get("breakdown")
    if bd:
        row("  split (medians): project / FAISS / id map / gather / re-rank / exact top-k / rest",
            f"{bd['project']:.2f} / {bd['faiss']:.2f} / {bd['map_ids']:.2f} / {bd['gather']:.2f} / "
            f"{bd['rerank']:.2f} / {bd['topk_exact']:.2f} / {bd['other']:.2f} ms ({bd['candidates']} candidates)")
    if math.isnan(r["exact_p50_ms"]):
        row("exact answers", "from one sequential scan of the vector files (--scan-truth); exact=True not timed")
    else:
        row(f"exact query p50 / p99 ({r['recall_queries']} queries)", f"{fmt_ms(r['exact_p50_ms'])} / "
            f"{fmt_ms(r['exact_p99_ms'])} ({r['exact_p50_ms'] / r['p50_ms']:.0f}x the default p50)")
    row("RAM/row, candidate structure (memory_bytes / rows)", f"{r['cand_bytes_per_row']:.0f} B",
        "cand_bytes_per_row", r["cand_bytes_per_row"])
    rss = r.get("rss")
    if rss:
        anon = rss["opened"]["RssAnon"] - rss["before"]["RssAnon"]
        after = rss["queried"]["VmRSS"] - rss["before"]["VmRSS"]
        filed = rss["queried"]["RssFile"] - rss["before"]["RssFile"]
        row("RAM/row, RSS growth of a fresh process on open (RssAnon)",
            f"{anon / rss['rows']:.0f} B ({anon / 1e6:.0f} MB in all; open {fmt_s(rss['open_s'])})",
            "rss_bytes_per_row", anon / rss["rows"])
        row("RAM/row, VmRSS growth after open + 20 queries",
            f"{after / rss['rows']:.0f} B ({after / 1e6:.0f} MB, of it {filed / 1e6:.0f} MB file-backed pages)")
        row("queries by name/Embedding import torch", "yes (counted in the line above)" if rss["torch"] else "no")
    bl = r.get("baselines")
    if bl:
        row(f"pairwise loop (scipy cosine per pair, BLAS 1 thread; {bl['loop_rows']} rows timed, "
            f"extrapolated to {n:,})",
            f"{fmt_s(bl['loop_s'])} per query ({bl['loop_per_row_us']:.0f} us/pair; max abs diff to one_to_many "
            f"{bl['max_diff']:.1e})")
        row("numpy brute force (one_to_many over all raw vectors in RAM)",
            f"{fmt_s(bl['brute_s'])} per query (loading them: {fmt_s(bl['load_s'])})")
        row("speed-up of the default path over the pairwise loop", f"{bl['speedup_loop']:,.0f}x")
        row("speed-up of the default path over the numpy brute force", f"{bl['speedup_brute']:,.0f}x")
    row(f"add one row (median of {r['add_one_n']}; max)", f"{fmt_ms(r['add_one_ms'])} ({fmt_ms(r['add_one_max_ms'])})",
        "add_one_ms", r["add_one_ms"])
    row(f"add {r['add_bulk_n']:,} rows (one add_many)", fmt_s(r["add_bulk_s"]))
    return out


def print_results(results: list[dict]) -> None:
    for r in results:
        rows = table_rows(r)
        w0 = max(len(x[0]) for x in rows)
        w1 = max(len(x[1]) for x in rows)
        print(f"\nN = {r['n']:,} rows (load average during build {r['load_build']:.2f}, during latency runs "
              f"{r['load_query']:.2f})")
        for metric, value, target, v in rows:
            tail = f"  [{v}: {target}]" if v else ""
            print(f"  {metric:<{w0}}  {value:<{w1}}{tail}")


def markdown(results: list[dict], skipped: list[str], command: str, machine: str, seeds: str, args, wall: float) -> str:
    md = ["## Performance: query", "",
          f"Synthetic indexes of perturbed real TASK2VEC embeddings (efficientnet_lite0, 21,008 filters; "
          f"row = F_seed x exp(N(0, s)) per filter + prior, s log-uniform in [{args.spread[0]}, {args.spread[1]}]). "
          f"Seeds: {seeds}. Queries are fresh perturbations, not rows of the index.", "",
          f"Command: `{command}`", "", f"Machine: {machine}. Wall time {wall / 60:.1f} min.", ""]
    for r in results:
        md += [f"### N = {r['n']:,}", "", "| metric | value | target | |", "|---|---|---|---|"]
        md += [f"| {m.strip()} | {v} | {t} | {p} |" for m, v, t, p in table_rows(r)]
        md += ["", f"Load average during the latency runs: {r['load_query']:.2f}.", ""]
    md += [f"- {s}" for s in skipped]
    return "\n".join(md) + "\n"


# --- main ------------------------------------------------------------------------------------------


def parse_sizes(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().lower().replace("_", "")
        mult = 1
        if part.endswith("k"):
            mult, part = 1000, part[:-1]
        elif part.endswith("m"):
            mult, part = 1_000_000, part[:-1]
        out.append(int(float(part) * mult))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10k,100k", help="comma-separated row counts, e.g. 10k,100k,1M")
    p.add_argument("--queries", type=int, default=50, help="queries for recall and exact latency (default 50)")
    p.add_argument("--latency-queries", type=int, default=200, help="queries timed on the default path")
    p.add_argument("--workdir", default="/tmp/taskindex-bench", help="scratch folder for indexes and seed cache")
    p.add_argument("--keep", action="store_true", help="keep the indexes in --workdir")
    p.add_argument("--no-warm", dest="warm", action="store_false",
                   help="measure cold: skip index.warm() before the queries (done where the vectors fit in RAM)")
    p.add_argument("--scan-truth", action="store_true",
                   help="exact answers from one sequential scan for all queries (for sizes beyond the page cache)")
    p.add_argument("--reuse", action="store_true",
                   help="measure an index of that size already in --workdir (kept by --keep) instead of building it")
    p.add_argument("--markdown", metavar="FILE", help="also write the results as a Markdown section")
    p.add_argument("--batch", type=int, default=5000, help="rows per add_many while building")
    p.add_argument("--spread", default="0.1,1.0", help="range of the per-row log-noise scale s")
    p.add_argument("--seed-tasks", default=",".join(SEED_TASKS),
                   help="sample tasks embedded as seeds when index_data/ has no index")
    p.add_argument("--seed-image-size", type=int, default=SEED_IMAGE_SIZE)
    p.add_argument("--seed-per-class", type=int, default=60)
    p.add_argument("--embed-seeds", action="store_true", help="embed sample tasks even if index_data/ exists")
    p.add_argument("--loop-rows", type=int, default=300, help="rows timed with the pairwise loop")
    p.add_argument("--baseline-queries", type=int, default=3, help="queries timed with each baseline")
    p.add_argument("--add-singles", type=int, default=20)
    p.add_argument("--add-bulk", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--refine", type=lambda t: [int(x) for x in t.split(",")], default=[],
                   help="also measure recall@10 and latency at these candidates-per-result factors, e.g. 5,10,20")
    p.add_argument("--seed-rows", type=int, default=None,
                   help="perturb only the first N seeds: at 100k rows, 7 seeds give the rows per seed of 1M and 66")
    p.add_argument("--vectors", choices=("float32", "bfloat16"), default="bfloat16", help="raw vector storage")
    p.add_argument("--many-device", help="also time query_many on this torch device (cuda, cpu)")
    p.add_argument("--many-queries", type=int, default=1000, help="batch size of the query_many comparison (0: skip)")
    p.add_argument("--rss-probe", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rss_probe:
        rss_probe(args.rss_probe)
        return 0
    args.sizes = parse_sizes(args.sizes)
    args.spread = tuple(float(x) for x in args.spread.split(","))
    args.seed_tasks = [s.strip() for s in args.seed_tasks.split(",") if s.strip()]
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "tools/bench_query.py", *sys.argv[1:]]) \
        if argv is None else "bench_query.main(" + repr(argv) + ")"
    wall = time.perf_counter()

    m = machine_info(workdir)
    machine = machine_line(m)
    print(f"command: {command}")
    print(f"machine: {machine}")
    print(f"start: {load_line()}")

    seeds, seeds_line = load_seeds(args)
    if args.seed_rows:
        seeds = seeds[:args.seed_rows]
        seeds_line += f"; only the first {len(seeds)} used (--seed-rows)"
    image_size = int(seeds[0].meta["image_size"])
    print(f"seeds: {seeds_line}; dim {seeds[0].dim}")
    print(f"rows: F_seed x exp(N(0, s)) per filter + prior, s log-uniform in [{args.spread[0]}, {args.spread[1]}] "
          f"per row; queries: fresh perturbations of the same kind")

    dim = seeds[0].dim
    results, skipped = [], []
    small = [n for n in args.sizes if n <= 10_000]
    baseline_n = 10_000 if 10_000 in args.sizes else (max(small) if small else None)
    for n in args.sizes:
        width = 2 if args.vectors == "bfloat16" else 4
        built = args.reuse and (workdir / f"index-{n}" / "CURRENT").is_file()
        need = (0 if built else n * (dim * width + candidates.PROJ_DIM * 4) * 1.05) + (
            args.add_bulk + args.add_singles) * dim * 4 + 2e9
        free = shutil.disk_usage(workdir).free
        if need > free:
            line = (f"N = {n:,}: SKIPPED, needs ~{need / 1e9:.0f} GB of disk in {workdir} (raw {args.vectors} "
                    f"vectors {n * dim * width / 1e9:.0f} GB + candidates + margin), {free / 1e9:.0f} GB free")
            print(line, flush=True)
            skipped.append(line)
            continue
        r = bench_size(n, args, seeds, image_size, baseline_n)
        results.append(r)
        print_results([r])
        sys.stdout.flush()
    wall = time.perf_counter() - wall
    print(f"\nwall time {wall / 60:.1f} min; end: {load_line()}")
    if args.markdown:
        text = markdown(results, skipped, command, machine, seeds_line, args, wall)
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        with open(args.markdown, "w") as f:
            f.write(text)
        log(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
