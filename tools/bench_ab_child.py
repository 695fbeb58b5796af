"""The timed half of tools.bench_ab, in a process of its own for one checkout.

bench_ab runs it by path (`python tools/bench_ab_child.py ROOT INDEX QUERIES`), not as a module, with the
checkout under test, ROOT, first on PYTHONPATH: this folder holds no taskindex, so taskindex comes from ROOT,
and the file imports nothing from tools, so both checkouts are timed by this same code. It opens INDEX
read-only, rebuilds the queries in QUERIES (an .npz that bench_ab wrote) as that checkout's Embeddings, warms
up on the first --warm of them, times each of the others on the default path and prints one JSON line:
{"seconds": [...]}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="the checkout whose taskindex is timed")
    p.add_argument("index")
    p.add_argument("queries", help="an .npz of bench_ab: vectors, which, prior, layout, metas")
    p.add_argument("--warm", type=int, default=20)
    args = p.parse_args(argv)
    import taskindex
    from taskindex import Embedding, TaskIndex

    if not taskindex.__file__.startswith(args.root):
        sys.exit(f"taskindex came from {taskindex.__file__}, not {args.root}: run from outside both checkouts")
    data = np.load(args.queries)
    layout, metas = json.loads(str(data["layout"])), json.loads(str(data["metas"]))
    qs = [Embedding(v, data["prior"], layout, metas[j]) for v, j in zip(data["vectors"], data["which"])]
    index = TaskIndex.open(args.index, readonly=True)
    for q in qs[:args.warm]:
        index.query(q, k=10)
    times = []
    for q in qs[args.warm:]:
        t = time.perf_counter()
        index.query(q, k=10)
        times.append(time.perf_counter() - t)
    print(json.dumps({"seconds": times}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
