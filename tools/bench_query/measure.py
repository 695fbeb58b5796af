"""What one index is measured on: building it, a fresh process's memory, warming, where a query spends its
time, adding rows, the exact answers of a scan, the other candidate structure, refine factors, query_many."""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import taskindex
from taskindex import distance
from taskindex.embedding.vector import Embedding
from taskindex.index import candidates
from taskindex.index.task_index import TaskIndex
from tools import harness
from tools.bench_query import K, log
from tools.bench_query.machine import proc_status
from tools.bench_query.seeds import Perturber


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
        dt = harness.timed(index.add_many, rows)[1]
        add_s += dt
        done += m
        del rows
        log(f"  added {done:,}/{n:,} rows ({dt:.1f} s for this batch of {m:,}; {harness.load_line()})")
    return {"index": index, "build_s": add_s, "gen_s": gen_s}


def rss_of_open(path: Path, n: int) -> dict:
    """Open the index in a fresh process and report its RSS before/after open and after queries."""
    out = harness.run_module("tools.bench_query", ["--rss-probe", str(path)], timeout=3600)
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
    index, open_s = harness.timed(TaskIndex.open, path, readonly=True)
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
    stored = sum(f.nbytes for f in harness.loaded(index).vectors)
    avail = harness.meminfo("MemAvailable")
    if not wanted or stored > avail / 2:
        return {"bytes": 0, "stored": stored, "available": avail, "wanted": wanted}
    log(f"  warming the page cache: index.warm() over {stored / 1e9:.1f} GB of vectors")
    seconds = harness.timed(index.warm, progress=False)[1]
    return {"bytes": stored, "stored": stored, "available": avail, "wanted": wanted, "s": seconds}


def timed_query(index, emb, **kw) -> tuple[list, float]:
    """The k=K hits of one query and its seconds."""
    return harness.timed(index.query, emb, k=K, **kw)


def breakdown(index, queries: list[Embedding]) -> dict | None:
    """Where the default query path spends its time, by re-running its steps (private API, best effort)."""
    from taskindex.index import rerank as stage

    try:
        v = harness.loaded(index)
        if v.candidates is None:
            return None
        keys = ("project", "faiss", "map_ids", "gather", "rerank", "topk_exact", "total")
        parts = {k: [] for k in keys}
        want = stage.want(v, K, "sym", None)
        for q in queries:
            t0 = time.perf_counter()
            point = candidates.project(q.vector[None, :], v.projection)
            t1 = time.perf_counter()
            found = v.candidates.nearest(point, want, K)[0]
            t2 = time.perf_counter()
            rows = np.sort(np.searchsorted(v.ids, found))
            t3 = time.perf_counter()
            raw = v.gather(rows)
            t4 = time.perf_counter()
            d = distance.rerank(q.vector, raw)
            t5 = time.perf_counter()
            distance.rerank(q.vector, raw[np.argsort(d, kind="stable")[:K]], np.float64)  # the k get float64
            t6 = time.perf_counter()
            index.query(q, k=K)
            t7 = time.perf_counter()
            for key, dt in zip(keys, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6)):
                parts[key].append(dt)
        med = {k: statistics.median(x) * 1e3 for k, x in parts.items()}
        med["other"] = med["total"] - sum(med[k] for k in keys[:-1])
        med["candidates"] = len(found)
        return med
    except Exception as exc:  # internals changed: skip the breakdown, keep the benchmark
        log(f"breakdown skipped ({type(exc).__name__}: {exc})")
        return None


def add_timings(index, perturb: Perturber, singles: int, bulk: int) -> dict:
    one = []
    tag = f"v{index.version}"  # a --reuse of a kept index adds new names beside the earlier runs' rows
    for i, (emb, j) in enumerate(perturb.embeddings(singles)):
        one.append(harness.timed(index.add, f"extra{i}-{tag}", emb, "task", {"seed": j})[1])
    rows = [(f"bulk{i}-{tag}", emb, "task", {"seed": j}) for i, (emb, j) in enumerate(perturb.embeddings(bulk))]
    many = harness.timed(index.add_many, rows)[1]
    return {"add_one_ms": statistics.median(one) * 1e3, "add_one_max_ms": max(one) * 1e3, "add_one_n": singles,
            "add_bulk_s": many, "add_bulk_n": bulk}


def scan_exact(index, qs: list[Embedding]) -> list[list]:
    """The exact top-K of every query in one sequential pass over the segment files, for indexes whose vectors
    outgrow the page cache: exact=True reads rows at random there (25 MB/s measured at 1M rows: half an hour a
    query). Float32 d_sym chooses, as the index's own re-rank does; returns (name, distance) pairs per query."""
    from types import SimpleNamespace

    from taskindex.index.storage import decode_vectors

    v = harness.loaded(index)
    segments = v.manifest.segments
    best = [[] for _ in qs]
    for seg, segment in enumerate(segments):
        ref = segment["vectors"]
        dtype = np.dtype("<u2" if ref["name"].endswith(".bf16") else "<f4")
        rows = np.flatnonzero(v.seg == seg)  # live rows of this segment, in file order
        pos = v.pos[rows]
        path = v.store.path(ref)
        for lo in range(0, len(rows), 2048):
            p = pos[lo:lo + 2048]
            raw = np.fromfile(path, dtype=dtype, count=int(p[-1] - p[0] + 1) * index.dim,
                              offset=int(p[0]) * index.dim * dtype.itemsize).reshape(-1, index.dim)
            block = decode_vectors(raw[p - p[0]])
            for i, q in enumerate(qs):
                d = distance.rerank(q.vector, block)
                top = np.argsort(d)[:K]
                best[i] = sorted(best[i] + [(float(d[t]), int(rows[lo + t])) for t in top])[:K]
        log(f"    scanned segment {seg + 1}/{len(segments)}")
    names = v.rows["name"]
    return [[SimpleNamespace(name=names.iat[r], distance=dd) for dd, r in b] for b in best]


def other_structure(index, qs: list[Embedding], truth: list[set], lq: list[Embedding]) -> dict:
    """Recall and latency of the candidate structure the index did not choose at this size (flat <-> IVF),
    on the same queries: the measurement behind candidates.IVF_ROWS."""
    v = harness.loaded(index)
    chosen = v.candidates
    kind = "ivf" if chosen.kind == "flat" else "flat"
    v.candidates, build_s = harness.timed(candidates.Candidates, v.proj_rows(np.arange(len(index))), v.ids, kind=kind)
    try:
        rec = [len(names & {h.name for h in index.query(q, k=K)}) / K for q, names in zip(qs, truth)]
        for q in lq[:5]:
            index.query(q, k=K)
        lat = [timed_query(index, q)[1] for q in lq]
        mem = v.candidates.memory_bytes()
    finally:
        v.candidates = chosen
    p50, p99 = harness.p50_p99_ms(lat)
    return {"kind": kind, "recall": float(np.mean(rec)), "p50_ms": p50, "p99_ms": p99, "build_s": build_s,
            "bytes_per_row": mem / len(index)}


def refine_sweep(index, factors: list[int], qs: list[Embedding], truth: list[set], lq: list[Embedding]) -> list:
    """Recall@10 (on the recall queries) and p50 (on the latency queries) for each candidates-per-result factor."""
    out = []
    for r in factors:
        log(f"  refine={r}")
        found = [{h.name for h in index.query(q, k=K, refine=r)} for q in qs]
        recall = [len(f & t) / K for f, t in zip(found, truth)]
        lat = [timed_query(index, q, refine=r)[1] for q in lq]
        p50, p99 = harness.p50_p99_ms(lat)
        out.append({"refine": r, "recall": float(np.mean(recall)), "recall_min": float(np.min(recall)),
                    "p50_ms": p50, "p99_ms": p99})
    return out


def batch_queries(index, perturb: Perturber, m: int, device: str | None) -> dict:
    """query_many of m fresh queries against m single queries, side by side, and whether they agree; with
    `device`, query_many on that torch device too."""
    qs = [e for e, _ in perturb.embeddings(m)]
    index.query_many(qs[:20], k=K)  # warm-up
    many, many_s = harness.timed(index.query_many, qs, k=K, progress=False)
    one, one_s = harness.timed(lambda: [index.query(q, k=K) for q in qs])
    same = sum([h.name for h in a] == [h.name for h in b] for a, b in zip(one, many))
    out = {"many_n": m, "many_s": many_s, "singles_s": one_s, "many_speedup": one_s / many_s, "many_same": same}
    if device:
        index.query_many(qs[:20], k=K, device=device)  # warm-up (torch's first call)
        on, device_s = harness.timed(index.query_many, qs, k=K, progress=False, device=device)
        out.update(device=device, device_s=device_s,
                   device_same=sum([h.name for h in a] == [h.name for h in b] for a, b in zip(one, on)))
    return out
