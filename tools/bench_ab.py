"""Query latency of two checkouts of taskindex, side by side on one index: a before/after ratio measured in
one run, as the README's figures need.

Each run draws --queries held-out queries and 20 for the warm-up (fresh perturbations of the shipped index's
rows, as `python -m tools.bench_query` draws them), then times them in a fresh process per checkout
(tools/bench_ab_child.py, with that checkout first on PYTHONPATH: e.g. a `git worktree` of an older
commit), which opens the index read-only and queries it on the default path. The checkouts alternate,
--runs times each, so a drift of the machine falls on both.

Usage:
    git worktree add /tmp/old <commit>
    .venv/bin/python -m tools.bench_ab /tmp/old . --index /tmp/taskindex-bench/index-100000 --runs 3
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from tools import harness
from tools.bench_query.seeds import Perturber

CHILD = Path(__file__).resolve().with_name("bench_ab_child.py")
WARM = 20


def draw_queries(path: Path, queries: int, run: int) -> None:
    """The run's queries (this checkout's Perturber on the shipped index's rows), as an .npz for the children."""
    from taskindex import TaskIndex
    from taskindex.shipped import DEFAULT_INDEX

    with TaskIndex.open(DEFAULT_INDEX, readonly=True) as shipped:
        seeds = [shipped.get(n)[0] for n in shipped.names()]
    vectors, which = Perturber(seeds, (0.1, 1.0), 10_007 + run).draw(queries + WARM)
    np.savez(path, vectors=vectors, which=which, prior=seeds[0].prior, layout=json.dumps(seeds[0].layout),
             metas=json.dumps([s.meta for s in seeds]))


def timed_run(name: str, root: str, run: int, index: str, queries: Path) -> dict:
    """One checkout's timed queries in a fresh process (taskindex from `root`): its p50 and p99, printed."""
    out = subprocess.run([sys.executable, str(CHILD), root, index, str(queries), "--warm", str(WARM)],
                         capture_output=True, text=True, cwd="/", env=harness.module_env(root))
    if out.returncode:
        sys.exit(f"the run of {root} failed:\n{out.stderr.strip()[-2000:]}")
    p50, p99 = harness.p50_p99_ms(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
    print(f"run {run + 1} {name:6s} p50 {p50:.2f} ms  p99 {p99:.2f} ms", flush=True)
    return {"p50_ms": p50, "p99_ms": p99}


def main(argv=None) -> int:
    p = harness.parser("tools.bench_ab", __doc__.splitlines()[0], raw=False)
    p.add_argument("before", help="checkout of the baseline (its folder holds taskindex/)")
    p.add_argument("after", help="checkout to compare")
    p.add_argument("--index", required=True, help="an index built by `python -m tools.bench_query --keep`")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--queries", type=int, default=200)
    args = p.parse_args(argv)
    roots = {"before": str(Path(args.before).resolve()), "after": str(Path(args.after).resolve())}
    index = str(Path(args.index).resolve())
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        queries = [Path(tmp) / f"queries-{run}.npz" for run in range(args.runs)]
        for run, path in enumerate(queries):
            draw_queries(path, args.queries, run)
        got = harness.alternate({name: lambda run, name=name, root=root: timed_run(name, root, run, index, queries[run])
                                 for name, root in roots.items()}, args.runs)
    for key in ("p50_ms", "p99_ms"):
        b = sorted(r[key] for r in got["before"])
        a = sorted(r[key] for r in got["after"])
        print(f"{key[:3]}: before {' / '.join(f'{x:.2f}' for x in b)} ms, after {' / '.join(f'{x:.2f}' for x in a)} "
              f"ms: {b[len(b) // 2] / a[len(a) // 2]:.2f}x (medians of the runs)")
    print(f"load average {harness.load1():.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
