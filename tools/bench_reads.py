"""How an index's raw vectors are read: through the memory map, with the read-ahead hint, or with read calls.

Measures, on an index that `python -m tools.bench_query --keep` kept:
* a query's gather: 200 random rows through the map (MADV_RANDOM), then the same through
  `storage.read_rows` (one MADV_WILLNEED per run first), fresh rows for each, cold from disk
  and again once they are cached;
* a dense scan of one segment file: through the map, and through `read_rows` (one read call).

"Cold" needs the page cache dropped (`echo 3 > /proc/sys/vm/drop_caches`, root), which the tool does
when it may (--drop-caches); otherwise the figures say "cache not dropped". Run it alone:

    .venv/bin/python -m tools.bench_reads /tmp/taskindex-bench/index-100000 --drop-caches
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import numpy as np

from taskindex.index.storage import decode_vectors, read_rows
from taskindex.index.task_index import TaskIndex
from tools import harness


def drop(enabled: bool) -> bool:
    if not enabled:
        return False
    subprocess.run(["sync"], check=True)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def main(argv=None) -> int:
    p = harness.parser("tools.bench_reads", __doc__)
    p.add_argument("index")
    p.add_argument("--rows", type=int, default=200)
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--drop-caches", action="store_true")
    args = p.parse_args(argv)
    idx = TaskIndex.open(args.index, readonly=True)
    v = harness.loaded(idx)
    files, dim = v.vectors, idx.dim
    rng = np.random.default_rng(0)

    def gather(pos_by_seg, hinted):
        for seg, pos in pos_by_seg:
            out = np.empty((len(pos), dim), np.float32)
            if hinted:
                read_rows(files[seg], pos, out)
            else:
                decode_vectors(files[seg][pos], out=out)

    def draw():
        rows = np.sort(rng.choice(len(idx), args.rows, replace=False))
        segs = v.seg[rows]
        return [(s, v.pos[rows[segs == s]]) for s in np.unique(segs)]

    def twice(hinted):  # fresh rows from disk, then the same rows again from the cache
        sets = draw()
        return harness.timed(gather, sets, hinted)[1], harness.timed(gather, sets, hinted)[1]

    cold = drop(args.drop_caches)
    got = harness.alternate({"map": lambda r: twice(False), "map + WILLNEED": lambda r: twice(True)}, args.trials)
    times = {(way, where): [t[i] for t in got[way]] for i, where in enumerate(("disk", "cached")) for way in got}
    state = "cache dropped first" if cold else "cache not dropped"
    print(f"gather of {args.rows} random rows of {files[0].strides[0]:,} B, {len(idx):,} rows ({state}; "
          f"median of {args.trials}):")
    for (way, where), v in times.items():
        print(f"  {way:<16} {where:<7} {statistics.median(v) * 1e3:8.2f} ms")

    big = max(range(len(files)), key=lambda s: len(files[s]))
    mm = files[big]
    mb = mm.shape[0] * mm.strides[0] / 1e6
    print(f"dense scan of one segment file ({mb:.0f} MB):")
    for way in ("map", "read call"):
        cold = drop(args.drop_caches)
        t = time.perf_counter()
        for lo in range(0, len(mm), 2048):
            pos = np.arange(lo, min(len(mm), lo + 2048))
            out = np.empty((len(pos), dim), np.float32)
            if way == "map":
                decode_vectors(mm[pos], out=out)
            else:
                read_rows(mm, pos, out)
        dt = time.perf_counter() - t
        print(f"  {way:<16} {mb / dt:8.0f} MB/s ({'from disk' if cold else 'cache not dropped'})")
    print(f"load average {harness.load1():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
