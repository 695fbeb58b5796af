#!/usr/bin/env python
"""Query latency of two checkouts of taskindex, side by side on one index: a before/after ratio measured in
one run, as the README's figures need.

Each run is a fresh process that imports taskindex from one checkout (e.g. a `git worktree` of an older
commit), opens the index read-only, warms up on 20 queries and times --queries held-out queries (fresh
perturbations of the shipped index's rows, as tools/bench_query.py draws them) on the default path. The
checkouts alternate, --runs times each, so a drift of the machine falls on both.

Usage:
    git worktree add /tmp/old <commit>
    .venv/bin/python tools/bench_ab.py /tmp/old . --index /tmp/taskindex-bench/index-100000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent


def child(root: str, index: str, queries: int, seed: int) -> None:
    """One timed run in this process, with taskindex imported from `root`: prints one JSON line."""
    sys.path.insert(0, root)
    import numpy as np
    import taskindex
    from taskindex import TaskIndex
    from taskindex.shipped import DEFAULT_INDEX

    if not taskindex.__file__.startswith(root):
        sys.exit(f"taskindex came from {taskindex.__file__}, not {root}: run from outside both checkouts")
    sys.path.insert(1, str(TOOLS))
    from bench_query import ROOT, Perturber

    with TaskIndex.open(DEFAULT_INDEX, readonly=True) as shipped:
        seeds = [shipped.get(n)[0] for n in shipped.names()]
    qs = [e for e, _ in Perturber(seeds, (0.1, 1.0), 10_007 + seed).embeddings(queries + 20)]
    index = TaskIndex.open(index, readonly=True)
    for q in qs[:20]:
        index.query(q, k=10)
    times = []
    for q in qs[20:]:
        t = time.perf_counter()
        index.query(q, k=10)
        times.append(time.perf_counter() - t)
    print(json.dumps({"p50_ms": float(np.median(times) * 1e3), "p99_ms": float(np.percentile(times, 99) * 1e3)}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before", nargs="?", help="checkout of the baseline (its folder holds taskindex/)")
    p.add_argument("after", nargs="?", help="checkout to compare")
    p.add_argument("--index", required=True, help="an index built by tools/bench_query.py --keep")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child[0], args.index, args.queries, int(args.child[1]))
        return 0
    if not (args.before and args.after):
        p.error("give two checkouts: BEFORE AFTER")
    roots = {"before": str(Path(args.before).resolve()), "after": str(Path(args.after).resolve())}
    got = {k: [] for k in roots}
    for run in range(args.runs):
        for name, root in roots.items():
            out = subprocess.run([sys.executable, __file__, "--child", root, str(run), "--index", args.index,
                                  "--queries", str(args.queries)], capture_output=True, text=True, cwd="/")
            if out.returncode:
                sys.exit(f"the run of {root} failed:\n{out.stderr.strip()[-2000:]}")
            got[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"run {run + 1} {name:6s} p50 {got[name][-1]['p50_ms']:.2f} ms  p99 {got[name][-1]['p99_ms']:.2f} ms",
                  flush=True)
    for key in ("p50_ms", "p99_ms"):
        b = sorted(r[key] for r in got["before"])
        a = sorted(r[key] for r in got["after"])
        print(f"{key[:3]}: before {' / '.join(f'{x:.2f}' for x in b)} ms, after {' / '.join(f'{x:.2f}' for x in a)} "
              f"ms: {b[len(b) // 2] / a[len(a) // 2]:.2f}x (medians of the runs)")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
