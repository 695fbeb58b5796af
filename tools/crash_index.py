"""Kill a writing process with SIGKILL at random instants, many times, and check the index each time.

    .venv/bin/python tools/crash_index.py --trials 200 [--max-delay 0.3] [--seed 0]

Each trial starts a writer (tests/indexkit.py) that commits one row at a time and
prints each name once add() has returned, kills it after a random delay, then
hashes every file (`verify`) and opens the index: every reported commit must be
present with its own vector, and at most the one commit in flight may have landed
unreported. The test suite runs 30 trials of the same; this tool runs as many as asked.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from indexkit import crash_trials, wide_probe  # noqa: E402

from taskindex.index import TaskIndex  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--max-delay", type=float, default=0.3, help="seconds after the first commit")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "idx"
        TaskIndex.create(root, probe=wide_probe()).close()
        failures = crash_trials(root, args.trials, args.seed, args.max_delay, report=lambda t, d, n, ok: print(
            f"trial {t:4d}: {d:3d} commits reported, {n:6d} rows, {'ok' if ok else 'FAIL'}", flush=True))
    for f in failures:
        print(f)
    print(f"{args.trials} trials, {len(failures)} failures, {time.perf_counter() - start:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
