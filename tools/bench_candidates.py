#!/usr/bin/env python
"""What the lower-bound candidate list costs: `Candidates.nearest` with and without it, side by side.

A query searches the candidate structure twice (its residual taken as orthogonal to each row's, then as
parallel, for k more candidates). This times one query's `nearest` with near=0 (the first search only) and
near=k, alternating, on a structure of N rows of the index's shape (PROJ_DIM float16 codes, flat below
IVF_ROWS, IVF from there with the index's nlist and nprobe). The rows are Gaussian, not projections of real
tasks: the cost of a FAISS scan depends on the rows, lists and probes, not on what the codes hold, so this
measures 1M rows without the 43 GB of raw vectors that tools/bench_query.py builds.

Usage:
    .venv/bin/python tools/bench_candidates.py --rows 100k,1M --queries 200
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from taskindex.index import candidates  # noqa: E402

K = 10


def measure(n: int, queries: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    proj = rng.normal(size=(n, candidates.PROJ_DIM)).astype(np.float32)
    proj[:, -1] = np.abs(proj[:, -1])  # the last coordinate is a norm
    t = time.perf_counter()
    cand = candidates.Candidates(proj, np.arange(n, dtype=np.int64))
    built = time.perf_counter() - t
    points = proj[rng.choice(n, size=queries, replace=False)] + rng.normal(scale=0.1, size=(queries, proj.shape[1]))
    far = K * candidates.default_refine(n)
    times = {0: [], K: []}
    for p in points:
        for near in (0, K) if len(times[0]) % 2 else (K, 0):  # alternate the order
            t = time.perf_counter()
            cand.nearest(p[None, :], far, near)
            times[near].append(time.perf_counter() - t)
    one, two = (statistics.median(times[x]) * 1e3 for x in (0, K))
    return {"rows": n, "kind": cand.kind, "far": far, "built_s": built, "p50_one_ms": one, "p50_two_ms": two,
            "p99_one_ms": float(np.percentile(times[0], 99) * 1e3),
            "p99_two_ms": float(np.percentile(times[K], 99) * 1e3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="100k,1M", help="comma-separated row counts, e.g. 100k,1M")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    sizes = [int(float(s.lower().replace("k", "e3").replace("m", "e6"))) for s in args.rows.split(",")]
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    print("| rows | structure | candidates (refine x k) | nearest p50, first search only | with the lower-bound "
          "search (k more) | p99 only / with | build |")
    print("|---|---|---|---|---|---|---|")
    for n in sizes:
        r = measure(n, args.queries, args.seed)
        print(f"| {n:,} | {r['kind']} | {r['far']} | {r['p50_one_ms']:.2f} ms | {r['p50_two_ms']:.2f} ms "
              f"(+{r['p50_two_ms'] - r['p50_one_ms']:.2f}) | {r['p99_one_ms']:.1f} / {r['p99_two_ms']:.1f} ms "
              f"| {r['built_s']:.0f} s |")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
