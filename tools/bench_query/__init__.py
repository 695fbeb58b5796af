"""Benchmark of TaskIndex search on synthetic indexes built from real TASK2VEC embeddings:
`.venv/bin/python -m tools.bench_query --help` (the description is in __main__.py).

Parts: seeds (the real embeddings and their perturbations), measure and baselines (what one index size is
timed on), size (one size end to end), report (the table, its targets, Markdown), machine.
"""

from __future__ import annotations

from functools import partial

from tools import harness

K = 10  # results per query
log = partial(harness.log, stamp=True)
