"""One index size end to end: build (or reuse) it, then recall, latency, the extras and the add timings."""

from __future__ import annotations

import gc
import shutil
from pathlib import Path

import numpy as np

from taskindex.embedding.vector import Embedding
from taskindex.index.task_index import TaskIndex
from tools import harness
from tools.bench_query import K, log
from tools.bench_query.baselines import baselines
from tools.bench_query.measure import (add_timings, batch_queries, breakdown, build, other_structure, refine_sweep,
                                       rss_of_open, scan_exact, timed_query, warm_if_it_fits)
from tools.bench_query.scaled import measure_scaled
from tools.bench_query.seeds import Perturber


def bench_size(n: int, args, seeds: list[Embedding], image_size: int, baseline_n: int | None) -> dict:
    """Every figure of one size N (a dict that report.table_rows reads)."""
    path = Path(args.workdir) / f"index-{n}"
    queries = Perturber(seeds, args.spread, seed=args.seed + 10_000)
    index, res, rows = open_built(path, n, args, seeds, image_size)
    log(f"  recall: {args.queries} queries, default vs exact " + ("(one scan)" if args.scan_truth else "path"))
    qs = [e for e, _ in queries.embeddings(args.queries)]
    truth = recall(index, qs, args.scan_truth, res)

    log(f"  latency: {args.latency_queries} queries on the default path")
    lq = [e for e, _ in queries.embeddings(args.latency_queries)]
    for q in lq[:5]:
        index.query(q, k=K)
    lat = [timed_query(index, q)[1] for q in lq]
    p50, p99 = harness.p50_p99_ms(lat)
    res.update(p50_ms=p50, p99_ms=p99, mean_ms=float(np.mean(lat)) * 1e3, latency_queries=len(lat),
               load_query=harness.load1())
    if args.scaled_queries and harness.loaded(index).candidates is not None:
        res["scaled"] = measure_scaled(index, seeds, args.scaled_queries, args.seed + 30_000, args.scan_truth, lq)
    if args.refine:
        res["refine"] = refine_sweep(index, args.refine, qs, truth, lq)
    res["breakdown"] = breakdown(index, lq[:min(50, len(lq))])
    if harness.loaded(index).candidates is not None and args.extras:
        res["alternative"] = other_structure(index, qs, truth, lq)
    if args.many_queries:
        res.update(batch_queries(index, queries, args.many_queries, args.many_device))

    if baseline_n == n:
        log(f"  baselines: pairwise loop on {args.loop_rows} rows, numpy brute force over {n:,} rows")
        bl = baselines(index, lq, args.loop_rows, args.baseline_queries)
        bl["speedup_loop"] = bl["loop_s"] / (res["p50_ms"] / 1e3)
        bl["speedup_brute"] = bl["brute_s"] / (res["p50_ms"] / 1e3)
        res["baselines"] = bl

    if args.extras:
        log(f"  add: {args.add_singles} single rows, then one add_many of {args.add_bulk:,}")
        res.update(add_timings(index, rows, args.add_singles, args.add_bulk))
    index.close()
    del index
    gc.collect()
    if not args.keep:
        shutil.rmtree(path, ignore_errors=True)
    return res


def open_built(path: Path, n: int, args, seeds: list[Embedding], image_size: int):
    """(the index opened as a user gets it, its figures so far, the Perturber of the rows to add later): built
    here, or one a --keep run left where --reuse; then the fresh process's RSS and the page cache warmed."""
    res = {"n": n}
    rows = Perturber(seeds, args.spread, seed=args.seed)
    if args.reuse and (path / "CURRENT").is_file():  # a --keep run (or an interrupted one) left it: as it is
        log(f"N = {n:,}: reusing {path} ({harness.load_line()})")
        rows = Perturber(seeds, args.spread, seed=args.seed + 20_000)  # the added rows: new draws all the same
        b = {"build_s": float("nan"), "gen_s": float("nan")}
    else:
        if path.exists():
            shutil.rmtree(path)
        log(f"N = {n:,}: building {path} in batches of {args.batch:,} ({harness.load_line()})")
        b = build(path, n, rows, args.batch, image_size, args.vectors)
        b["index"].close()
    index, res["open_s"] = harness.timed(TaskIndex.open, path)  # the candidate structure is chosen for its size
    res.update(build_s=b["build_s"], gen_s=b["gen_s"], load_build=harness.load1(), vectors=args.vectors)
    res["candidates_kind"] = index.info()["candidates"]
    cand = harness.loaded(index).candidates
    res["cand_bytes"] = cand.memory_bytes() if cand is not None else 0
    res["cand_bytes_per_row"] = res["cand_bytes"] / len(index)
    res["disk_bytes"] = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

    if args.extras:
        log("  RSS of a fresh process opening the index")
        res["rss"] = rss_of_open(path, n)
    res["warm"] = warm_if_it_fits(index, args.warm)
    return index, res, rows


def recall(index, qs: list[Embedding], scan_truth: bool, res: dict) -> list[set]:
    """Recall@K of the default path against the exact answers (exact=True, or one scan of the files), and the
    latencies of both, into res; returns the exact answers' names per query."""
    index.query(qs[0], k=K)  # warm-up (page cache, lazy imports)
    rec_id, rec_dist, t_exact, first, tenth, truth = [], [], [], [], [], []
    scanned = scan_exact(index, qs) if scan_truth else None
    for i, q in enumerate(qs):
        approx, dt = timed_query(index, q)
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
    p50, p99 = harness.p50_p99_ms(t_exact) if t_exact else (float("nan"), float("nan"))
    res.update(recall=float(np.mean(rec_id)), recall_min=float(np.min(rec_id)), recall_dist=float(np.mean(rec_dist)),
               exact_p50_ms=p50, exact_p99_ms=p99, recall_queries=len(qs), d_first=float(np.median(first)),
               d_tenth=float(np.median(tenth)))
    return truth
