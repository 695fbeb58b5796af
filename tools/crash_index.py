"""Kill a writing process with SIGKILL at random instants, many times, and check the index each time.

    .venv/bin/python -m tools.crash_index [--trials 100] [--training-trials 20] [--max-delay 0.3] [--seed 0]

Each trial starts a writer (`python -m taskindex._testing.index_harness`) that commits one row at
a time and prints each name once add() has returned, kills it after a random delay,
then hashes every file (`verify`) and opens the index: every reported commit must be
present with its own vector, and at most the one commit in flight may have landed
unreported. --trials go on from an empty index; --training-trials each start from an
index two rows below the projection's first training and kill the writer once it has
created a random number of that commit's files: every kill lands in the commit that
trains the projection and writes a projected file per segment. The suite runs 15 + 8.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from taskindex.index import candidates
from taskindex.index.task_index import TaskIndex
from taskindex._testing.index_harness import crash_trials, index_with_rows, wide_probe
from tools import harness


def show(record: dict) -> None:
    print(f"trial {record['trial']:4d}: {record['rows_before']:5d} rows, {record['reported']:3d} commits reported, "
          f"{record['rows']:5d} rows after the kill, {record['unused_files']:3d} unused data files, "
          f"{'FAIL ' + '; '.join(record['problems']) if record['problems'] else 'ok'}", flush=True)


def main(argv=None) -> int:
    ap = harness.parser("tools.crash_index", __doc__)
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--training-trials", type=int, default=20)
    ap.add_argument("--max-delay", type=float, default=0.3, help="seconds after the first commit")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root, below = Path(tmp) / "idx", Path(tmp) / "below"
        TaskIndex.create(root, probe=wide_probe()).close()
        results = crash_trials(root, args.trials, args.seed, args.max_delay, report=show)
        index_with_rows(below, candidates.EXACT_ROWS - 2)
        with TaskIndex.open(below, readonly=True) as idx:
            # the training commit writes a segment (2 files), the projection, and a projected file per segment
            files = 3 + idx.info()["segments"] + 2
        print(f"training trials: each kill after 1 to {files} files of the training commit", flush=True)
        training = crash_trials(root, args.training_trials, args.seed + 1, report=show, start_from=below,
                                files=files)
    inside = sum(t["rows"] == candidates.EXACT_ROWS - 1 and t["unused_files"] >= 3 for t in training)
    failures = [t for t in results + training if t["problems"]]
    print(f"{args.trials} + {args.training_trials} trials ({inside} killed inside the training commit after it "
          f"wrote the projection), {len(failures)} failures, {time.perf_counter() - start:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
