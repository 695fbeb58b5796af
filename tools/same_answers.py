"""Same answers across two checkouts: build and query an index with whichever taskindex is importable, print JSON.

A refactor must not change a bit of any answer. Build with one checkout, query with both, compare:

    PYTHONPATH=/tmp/old .venv/bin/python tools/same_answers.py /tmp/cmp/a.index build > old.json
    .venv/bin/python tools/same_answers.py /tmp/cmp/a.index query > new.json
    cmp <(python -c 'import json,sys; d=json.load(open("old.json")); d.pop("taskindex"); print(d)') \
        <(python -c 'import json,sys; d=json.load(open("new.json")); d.pop("taskindex"); print(d)')

The index holds 700 synthetic rows (past the 512 where FAISS candidates start), two of them removed, with
task and model rows and metadata; the queries cover query, exact, asym, filters, query_many, select_model,
info and get. Distances are printed with repr, so equal JSON means equal bits.
"""
import json
import sys

import numpy as np

import taskindex
from taskindex import TaskIndex
from taskindex._testing.index_harness import Overlapping, wide_probe


def build(root: str) -> None:
    with TaskIndex.create(root, probe=wide_probe()) as idx:
        rows = Overlapping(idx)
        for lo in range(0, 700, 100):
            idx.add_many([(f"r{i}", rows.make(), "model" if i % 7 == 0 else "task", {"i": i, "even": i % 2 == 0})
                          for i in range(lo, lo + 100)])
        idx.remove("r3")
        idx.remove("r10")


def _hits(hits) -> list:
    return [(h.name, h.distance, h.complexity, h.ranked_by, sorted((k, v) for k, v in h.metadata.items()
                                                                   if k != "created")) for h in hits]


def answers(root: str) -> dict:
    out = {"taskindex": taskindex.__file__}
    with TaskIndex.open(root, readonly=True) as idx:
        names = idx.names()
        qs = [names[i] for i in np.random.default_rng(5).choice(len(names), 25, replace=False)]
        out["query"] = [_hits(idx.query(q, k=7)) for q in qs]
        out["exact"] = [_hits(idx.query(q, k=7, exact=True)) for q in qs[:5]]
        out["asym"] = [_hits(idx.query(q, k=5, metric="asym", kind="task")) for q in qs[:8]]
        out["where"] = [_hits(idx.query(q, k=5, where={"even": True})) for q in qs[:8]]
        out["many"] = [_hits(x) for x in idx.query_many(qs, k=6)]
        out["select"] = [_hits(idx.select_model(q, k=4)) for q in qs[:8]]
        out["info"] = {k: v for k, v in idx.info().items() if k != "path"}
        emb, meta = idx.get(qs[0])
        out["get"] = [emb.vector[:20].tolist(), sorted((k, v) for k, v in meta.items() if k != "created")]
    return out


if __name__ == "__main__":
    if sys.argv[2:3] == ["build"]:
        build(sys.argv[1])
    print(json.dumps(answers(sys.argv[1]), sort_keys=True, default=str))
