"""Rebuild throughput: rows per minute by executor, on one manifest, side by side in one run.

    .venv/bin/python -m tools.bench_rebuild [--rows 12] [--per-class 20] [--image-size 64]

Rebuilds a fresh index from the same manifest (named sample tasks, pretrained
EfficientNet-Lite0) with: 1 worker with 1 thread, 2 workers with 1 thread each, 1 worker
using every core, the default (`workers=None`), and Ray on a local instance with 2 CPUs (one
CPU per task). Ray's start-up is timed apart; its overhead per row is its time per row less
the 2-worker local pool's. Then the steady state: the same rows on a 2-worker pool whose workers
have started, loaded the probe and decoded the datasets, against one warm single-threaded
process, with the pool's start-up timed apart: what a rebuild of many rows sees.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import multiprocessing
import os
import shutil
import sys
import tempfile
import time

from taskindex.data import samples
from taskindex.index.task_index import TaskIndex
from taskindex.rebuilds import run as rebuilds
from taskindex.rebuilds.inputs import read_manifest
from taskindex.rebuilds.run import default_workers, rebuild
from tools import harness


def warm_up(_=None) -> int:
    """Decode every dataset once in this process, as a worker's first rows would."""
    for dataset in samples.DATASETS:
        samples.arrays(dataset)
    return os.getpid()


def steady_state(index: str, path: str) -> dict:
    """Seconds for the manifest's rows on 2 warm single-threaded workers and in 1 warm process."""
    rows = read_manifest(path)
    with TaskIndex.open(index, readonly=True) as idx:
        spec = rebuilds.worker_spec(idx)
    start = time.perf_counter()
    with cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=rebuilds._init,
                                initargs=(spec, 1)) as pool:
        assert len(set(pool.map(warm_up, range(8)))) == 2
        started = time.perf_counter()
        list(pool.map(rebuilds._embed_row, rows))
        pool_seconds = time.perf_counter() - started
    rebuilds._init(spec, 1)
    warm_up()
    one = time.perf_counter()
    for row in rows:
        rebuilds._embed_row(row)
    return {"start-up": started - start, "pool": pool_seconds, "one": time.perf_counter() - one}


def manifest(path: str, rows: int, per_class: int) -> None:
    names = samples.names()
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "source", "per_class", "seed"])
        for i in range(rows):
            w.writerow([f"row{i}", f"sample:{names[i % len(names)]}", per_class, i])


def main(argv=None) -> int:
    ap = harness.parser("tools.bench_rebuild", __doc__)
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--image-size", type=int, default=64)
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="bench-rebuild-")
    path = os.path.join(tmp, "m.csv")
    manifest(path, args.rows, args.per_class)
    load = harness.load1()
    warm_up()  # every in-process run finds the datasets decoded; pool workers decode their own (their cost)
    TaskIndex.create(os.path.join(tmp, "template"), image_size=args.image_size).close()
    runs = {"1 worker, 1 thread": dict(workers=1, threads=1), "2 workers, 1 thread each": dict(workers=2, threads=1),
            f"1 worker, {os.cpu_count()} threads": dict(workers=1),
            f"default ({default_workers()} worker(s))": dict()}
    results = {}
    for label, kw in runs.items():
        out = os.path.join(tmp, label.replace(" ", "_"))
        shutil.copytree(os.path.join(tmp, "template"), out)
        results[label] = harness.timed(rebuild, out, path, progress=False, **kw)[1]
        print(f"{label}: {results[label]:.1f} s", flush=True)
    import ray

    ray_start = harness.timed(ray.init, num_cpus=2, include_dashboard=False, logging_level="ERROR",
                              log_to_driver=False)[1]
    out = os.path.join(tmp, "ray")
    shutil.copytree(os.path.join(tmp, "template"), out)
    results["Ray, local instance, 2 CPUs (1 a task)"] = harness.timed(rebuild, out, path, ray_address="local",
                                                                      progress=False)[1]
    ray.shutdown()
    base = results["1 worker, 1 thread"]
    print(f"\n{args.rows} rows ({args.per_class} images per class), efficientnet_lite0 @ {args.image_size} px; "
          f"{harness.cpu_name()}, {os.cpu_count()} cores; load average {load:.2f} at the start, "
          f"{harness.load1():.2f} at the end\n")
    print(harness.md_row(["executor", "seconds", "rows/min", "speed vs 1 worker, 1 thread"]))
    print(harness.md_rule("lrrr"))
    for label, sec in results.items():
        print(harness.md_row([label, f"{sec:.1f}", f"{60 * args.rows / sec:.1f}", f"{base / sec:.2f}x"]))
    pool = results["2 workers, 1 thread each"]
    ray_sec = results["Ray, local instance, 2 CPUs (1 a task)"]
    print(f"\nRay start-up (ray.init) {ray_start:.1f} s, not in the table; Ray vs the 2-worker pool: "
          f"{ray_sec / pool:.2f}x the time, {(ray_sec - pool) / args.rows:.2f} s overhead per row")
    warm = steady_state(os.path.join(tmp, "template"), path)
    print(f"steady state: 2 warm single-threaded workers {warm['pool']:.1f} s, 1 warm single-threaded process "
          f"{warm['one']:.1f} s: {warm['one'] / warm['pool']:.2f}x; the pool's start-up (spawn, probe, "
          f"datasets) {warm['start-up']:.1f} s")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
