"""Wall time of one `taskindex query` on the shipped index, against the imports it cannot avoid.

Each run is a fresh process, as a user's shell starts it. The floor is a process that only imports numpy
and click (what any query must load); the figures alternate run by run, so a busy moment hits both.
The package's bytecode is compiled first, as `pip install` does: with PYTHONDONTWRITEBYTECODE set (as on
this machine) an editable install would otherwise recompile every module on every run.
Run it with nothing else on the machine:

    .venv/bin/python -m tools.bench_cli --runs 21
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys

from tools import harness


def timed(cmd: list[str]) -> float:
    return harness.timed(subprocess.run, cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)[1]


def main(argv=None) -> int:
    p = harness.parser("tools.bench_cli", __doc__)
    p.add_argument("--runs", type=int, default=21)
    p.add_argument("--name", default="fashion-sandal-vs-rest", help="row of the shipped index to query by")
    args = p.parse_args(argv)
    import compileall

    import taskindex

    compileall.compile_dir(os.path.dirname(taskindex.__file__), quiet=1)
    exe = shutil.which("taskindex", path=os.path.dirname(sys.executable)) or "taskindex"
    commands = {
        "python (no imports)": [sys.executable, "-c", "pass"],
        "import numpy, click (the floor)": [sys.executable, "-c", "import numpy, click"],
        f"taskindex query --name {args.name} -k 3": [exe, "query", "--name", args.name, "-k", "3"],
    }
    calls = {k: lambda r, cmd=cmd: timed(cmd) for k, cmd in commands.items()}
    harness.alternate(calls, 1)  # warm the page cache and the bytecode
    times = harness.alternate(calls, args.runs)
    print(f"{args.runs} runs each, alternating; load average {harness.load1():.2f} at the end")
    floor = statistics.median(times["import numpy, click (the floor)"])
    for k, v in times.items():
        med = statistics.median(v)
        print(f"  {k:<52} median {med:.3f} s  min {min(v):.3f} s  ({med - floor:+.3f} s over the floor)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
