"""Benchmark of TaskIndex search on synthetic indexes built from real TASK2VEC embeddings.

Rows are perturbations of real seed embeddings at the default probe's dimension
(EfficientNet-Lite0, 21,008 filters): row = F_seed * exp(N(0, s)) per filter + prior,
with s drawn per row, log-uniformly, from --spread (default 0.1..1.0). Seeds are the
rows of the shipped index (taskindex/package_data/default.index) when it exists, else a
few sample tasks embedded here (cached under --workdir/seeds). Queries are fresh
perturbations of the seeds, never rows of the index.

For each size N it reports: build time; recall@10 of the default query path against
the exact answer (`exact=True`); p50/p99 latency of the default and the exact path;
where the default path spends its time (candidate search, gather of raw vectors,
exact re-rank, the rest); RAM per row (candidate structure, and the RSS growth of a
fresh process opening the index); time to add one row and 1,000 rows. At 10k (or
the smallest size of at most 10k) also the reference repository's pairwise loop
(one pair at a time with scipy's cosine, timed on a subset and extrapolated) and a
vectorised numpy brute force over all raw vectors in RAM.

Usage (from the repository root):
    .venv/bin/python -m tools.bench_query                      # N = 10k and 100k
    .venv/bin/python -m tools.bench_query --sizes 2000 --queries 10 --latency-queries 50
    .venv/bin/python -m tools.bench_query --markdown out/perf_query.md

Results go to stdout, progress to stderr. Sizes whose raw vectors do not fit on the
free disk of --workdir are skipped with a printed line (1M rows need ~44 GB with the default
--vectors bfloat16, ~86 GB with float32). Also: the candidate structure the index did not choose at
that size (flat <-> IVF) on the same queries, queries unlike every row (--scaled-queries rows' Fisher scaled
0.1x and 10x) with and without the widening of a poor query's search, beside the typical queries' latency
both ways in turns, and query_many of --many-queries fresh queries against
as many single queries. Before the queries the page cache is warmed with index.warm() where the vectors
fit in half the available memory, as a server would at start (--no-warm: measure cold); the report says.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from taskindex.index import candidates
from tools import harness
from tools.bench_query.machine import machine_line
from tools.bench_query.measure import rss_probe
from tools.bench_query.report import markdown, print_results
from tools.bench_query.seeds import SEED_IMAGE_SIZE, SEED_TASKS, load_seeds
from tools.bench_query.size import bench_size


def parse(argv=None) -> argparse.Namespace:
    p = harness.parser("tools.bench_query", __doc__)
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
                   help="sample tasks embedded as seeds when the shipped index is missing")
    p.add_argument("--seed-image-size", type=int, default=SEED_IMAGE_SIZE)
    p.add_argument("--seed-per-class", type=int, default=60)
    p.add_argument("--embed-seeds", action="store_true", help="embed sample tasks even if the shipped index exists")
    p.add_argument("--loop-rows", type=int, default=300, help="rows timed with the pairwise loop")
    p.add_argument("--baseline-queries", type=int, default=3, help="queries timed with each baseline")
    p.add_argument("--add-singles", type=int, default=20)
    p.add_argument("--add-bulk", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--refine", type=harness.ints, default=[],
                   help="also measure recall@10 and latency at these candidates-per-result factors, e.g. 5,10,20")
    p.add_argument("--seed-rows", type=int, default=None,
                   help="perturb only the first N seeds: at 100k rows, 7 seeds give the rows per seed of 1M and 66")
    p.add_argument("--vectors", choices=("float32", "bfloat16"), default="bfloat16", help="raw vector storage")
    p.add_argument("--many-device", help="also time query_many on this torch device (cuda, cpu)")
    p.add_argument("--many-queries", type=int, default=1000, help="batch size of the query_many comparison (0: skip)")
    p.add_argument("--scaled-queries", type=int, default=20,
                   help="rows whose Fisher, scaled 0.1x and 10x, are queried with and without widening (0: skip)")
    p.add_argument("--no-extras", dest="extras", action="store_false",
                   help="skip the fresh process's RSS, the other candidate structure and the add timings")
    p.add_argument("--rss-probe", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.sizes = harness.parse_sizes(args.sizes)
    args.spread = tuple(float(x) for x in args.spread.split(","))
    args.seed_tasks = [s.strip() for s in args.seed_tasks.split(",") if s.strip()]
    return args


def no_room(n: int, args, dim: int, workdir: Path) -> str | None:
    """The line saying why size n is skipped, where its raw vectors do not fit on the workdir's free disk."""
    width = 2 if args.vectors == "bfloat16" else 4
    built = args.reuse and (workdir / f"index-{n}" / "CURRENT").is_file()
    need = (0 if built else n * (dim * width + candidates.PROJ_DIM * 4) * 1.05) + (
        args.add_bulk + args.add_singles) * dim * 4 + 2e9
    free = shutil.disk_usage(workdir).free
    if need <= free:
        return None
    return (f"N = {n:,}: SKIPPED, needs ~{need / 1e9:.0f} GB of disk in {workdir} (raw {args.vectors} "
            f"vectors {n * dim * width / 1e9:.0f} GB + candidates + margin), {free / 1e9:.0f} GB free")


def main(argv=None) -> int:
    args = parse(argv)
    if args.rss_probe:
        rss_probe(args.rss_probe)
        return 0
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    command = harness.command_line("tools.bench_query", argv, python=".venv/bin/python")
    wall = time.perf_counter()

    machine = machine_line(workdir)
    print(f"command: {command}")
    print(f"machine: {machine}")
    print(f"start: {harness.load_line()}")

    seeds, seeds_line = load_seeds(args)
    if args.seed_rows:
        seeds = seeds[:args.seed_rows]
        seeds_line += f"; only the first {len(seeds)} used (--seed-rows)"
    image_size = int(seeds[0].meta["image_size"])
    print(f"seeds: {seeds_line}; dim {seeds[0].dim}")
    print(f"rows: F_seed x exp(N(0, s)) per filter + prior, s log-uniform in [{args.spread[0]}, {args.spread[1]}] "
          f"per row; queries: fresh perturbations of the same kind")

    results, skipped = [], []
    small = [n for n in args.sizes if n <= 10_000]
    baseline_n = 10_000 if 10_000 in args.sizes else (max(small) if small else None)
    for n in args.sizes:
        line = no_room(n, args, seeds[0].dim, workdir)
        if line:
            print(line, flush=True)
            skipped.append(line)
            continue
        r = bench_size(n, args, seeds, image_size, baseline_n)
        results.append(r)
        print_results([r])
        sys.stdout.flush()
    wall = time.perf_counter() - wall
    print(f"\nwall time {wall / 60:.1f} min; end: {harness.load_line()}")
    if args.markdown:
        harness.write_report(args.markdown, markdown(results, skipped, command, machine, seeds_line, args, wall))
    return 0


if __name__ == "__main__":
    sys.exit(main())
