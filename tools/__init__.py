"""Benchmarks and checks of taskindex, run as modules from the repository root: `.venv/bin/python -m tools.NAME`
(`--help` on each). The shared harness is tools.harness; the paper's experiments are under tools.experiments.

Not part of the installed package: these run from a checkout."""
