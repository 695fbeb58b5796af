"""What the lower-bound candidate list costs: `Candidates.nearest` with and without it, side by side.

A query searches the candidate structure twice (its residual taken as orthogonal to each row's, then as
parallel, for k more candidates). This times one query's `nearest` with near=0 (the first search only) and
near=k, alternating, on a structure of N rows of the index's shape (PROJ_DIM float16 codes, flat below
IVF_ROWS, IVF from there with the index's nlist and nprobe). The rows are Gaussian, not projections of real
tasks: the cost of a FAISS scan depends on the rows, lists and probes, not on what the codes hold, so this
measures 1M rows without the 43 GB of raw vectors that `python -m tools.bench_query` builds.

Usage:
    .venv/bin/python -m tools.bench_candidates --rows 100k,1M --queries 200
"""

from __future__ import annotations

import sys

import numpy as np

from taskindex.index import candidates
from tools import harness

K = 10


def measure(n: int, queries: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    proj = rng.normal(size=(n, candidates.PROJ_DIM)).astype(np.float32)
    proj[:, -1] = np.abs(proj[:, -1])  # the last coordinate is a norm
    cand, built = harness.timed(candidates.Candidates, proj, np.arange(n, dtype=np.int64))
    points = proj[rng.choice(n, size=queries, replace=False)] + rng.normal(scale=0.1, size=(queries, proj.shape[1]))
    far = K * candidates.default_refine(n)
    # one query a round, both ways, in turn; every other round the other way first
    times = harness.alternate({near: lambda r, near=near: harness.timed(cand.nearest, points[r][None, :], far, near)[1]
                               for near in (K, 0)}, queries, swap=True)
    (one, p99_one), (two, p99_two) = (harness.p50_p99_ms(times[x]) for x in (0, K))
    return {"rows": n, "kind": cand.kind, "far": far, "built_s": built, "p50_one_ms": one, "p50_two_ms": two,
            "p99_one_ms": p99_one, "p99_two_ms": p99_two}


def main(argv=None) -> int:
    ap = harness.parser("tools.bench_candidates", __doc__)
    ap.add_argument("--rows", default="100k,1M", help="comma-separated row counts, e.g. 100k,1M")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(harness.load_line())
    print(harness.md_row(["rows", "structure", "candidates (refine x k)", "nearest p50, first search only",
                          "with the lower-bound search (k more)", "p99 only / with", "build"]))
    print(harness.md_rule("lllllll"))
    for n in harness.parse_sizes(args.rows):
        r = measure(n, args.queries, args.seed)
        print(harness.md_row([f"{n:,}", r["kind"], r["far"], f"{r['p50_one_ms']:.2f} ms",
                              f"{r['p50_two_ms']:.2f} ms (+{r['p50_two_ms'] - r['p50_one_ms']:.2f})",
                              f"{r['p99_one_ms']:.1f} / {r['p99_two_ms']:.1f} ms", f"{r['built_s']:.0f} s"]),
              flush=True)
    print(f"load average {harness.load_text()} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
