"""Benchmark of the TASK2VEC embedding: `.venv/bin/python -m tools.bench_embed --help` (the description
is in __main__.py).

Parts: common (the probe, images, timing, the estimators compared), throughput (part 1), convergence
(part 2), stability (part 3)."""
