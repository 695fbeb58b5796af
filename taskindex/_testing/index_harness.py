"""Synthetic index rows at realistic dimension and a SIGKILL crash harness.

Shared by the tests and tools/crash_index.py; no library module
imports it. The probe is a plain CNN with 2,048 filters (never run: only its
identity and prior matter). `Synth` makes well-separated clusters (every row has
a clear neighbourhood); `Overlapping` makes rows like tools/bench_query.py's, many
overlapping seeds perturbed by a per-row spread, where only a candidate space that
follows d_sym finds the true neighbours among the crowd.

    python -m taskindex._testing.index_harness INDEX START COUNT    # the crash-test writer
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from taskindex.embedding.vector import Embedding


def wide_probe():
    from torch import nn

    from taskindex.embedding.probes import Probe

    net = nn.Sequential(nn.Conv2d(3, 512, 3), nn.Conv2d(512, 512, 1), nn.Conv2d(512, 1024, 1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    for i, m in enumerate(net):
        if isinstance(m, nn.Conv2d):  # fixed values: every process builds the same probe identity
            nn.init.constant_(m.weight, 0.01 * (i + 1))
            nn.init.zeros_(m.bias)
    return Probe.from_module(net, 1024, name="wide", image_size=32)


class _Rows:
    """Embeddings in an index's space from Fisher vectors."""

    def __init__(self, index, seed: int):
        self.prior, self.layout, self.dim = index.prior, index.layout, index.dim
        self.space = {k: v for k, v in index.space.items() if k != "weights"}
        self.rng = np.random.default_rng(seed)

    def embedding(self, fisher: np.ndarray, name: str) -> Embedding:
        return Embedding((fisher + self.prior).astype(np.float32), self.prior, self.layout,
                         dict(self.space, task=name, n_samples=100, n_classes=2))


class Synth(_Rows):
    """Clustered embeddings in an index's space: row i of cluster c is centre_c * exp(noise)."""

    def __init__(self, index, clusters: int = 20, seed: int = 0):
        super().__init__(index, seed)
        self.centres = np.exp(self.rng.normal(0.0, 2.0, (clusters, self.dim))) * 1e-4

    def make(self, cluster: int, spread: float = 0.3, name: str = "t") -> Embedding:
        f = self.centres[cluster] * np.exp(self.rng.normal(0.0, spread, self.dim))
        f[self.rng.random(self.dim) < 0.2] = 0.0  # dead filters, as at small image sizes
        return self.embedding(f, name)


class Overlapping(_Rows):
    """Rows F_seed * exp(N(0, s)), s log-uniform in [0.1, 1] per row (tools/bench_query.py's rows), around
    `seeds` seeds that differ from a common task by exp(N(0, seed_spread)) per filter: clusters overlap."""

    def __init__(self, index, seeds: int = 50, seed_spread: float = 0.3, seed: int = 0):
        super().__init__(index, seed)
        base = np.exp(self.rng.normal(0.0, 2.0, self.dim)) * 1e-4
        base[self.rng.random(self.dim) < 0.2] = 0.0  # the same dead filters for every task, as with a real probe
        self.seeds = base * np.exp(self.rng.normal(0.0, seed_spread, (seeds, self.dim)))

    def make(self, name: str = "t") -> Embedding:
        s = np.exp(self.rng.uniform(np.log(0.1), np.log(1.0)))
        f = self.seeds[self.rng.integers(len(self.seeds))] * np.exp(self.rng.normal(0.0, s, self.dim))
        return self.embedding(f, name)


def writer_main(path: str, start: int, count: int) -> None:
    """Crash-test writer: add rows one commit at a time, printing each name once add() returned."""
    from taskindex.index.task_index import TaskIndex

    with TaskIndex.open(path) as index:
        synth = Synth(index, seed=start)
        for i in range(start, start + count):
            index.add(f"row{i}", numbered(synth, i), metadata={"i": i})
            print(f"row{i}", flush=True)


def numbered(synth: Synth, i: int) -> Embedding:
    """Row i's embedding carries its own number in its first value: a row with another's vector is detectable."""
    emb = synth.make(i % 20, name=f"row{i}")
    emb.vector[0] = float(i + 1)
    return emb


def index_with_rows(root: Path, rows: int, batch: int = 17) -> None:
    """A new index of `rows` numbered rows in commits of `batch`: the start of crash trials near a threshold."""
    from taskindex.index.task_index import TaskIndex

    with TaskIndex.create(root, probe=wide_probe()) as index:
        synth = Synth(index)
        for lo in range(0, rows, batch):
            index.add_many([(f"row{i}", numbered(synth, i), "task", {"i": i})
                            for i in range(lo, min(rows, lo + batch))])


def _writer(root: Path) -> subprocess.Popen:
    from taskindex.index.task_index import TaskIndex

    with TaskIndex.open(root, readonly=True) as idx:
        first_id = idx._v.manifest.next_id
    return subprocess.Popen([sys.executable, "-m", "taskindex._testing.index_harness", str(root), str(first_id), "100000"],
                            stdout=subprocess.PIPE, text=True)


def crash_trials(root: Path, trials: int, seed: int = 0, max_delay: float = 0.25, report=None,
                 start_from: Path | None = None, files: int | None = None) -> list[dict]:
    """Kill a writer with SIGKILL at a random instant after its first commit, `trials` times.

    After each kill the index must verify and open, hold every commit whose add() returned, with its
    own vector, and at most the one in flight besides. Trials go on from one another, or each starts
    from a copy of `start_from`. With `files`, the kill comes once the writer has created a random
    number, 1 to `files`, of data files after its first commit, instead of after a random delay: on a
    copy of an index just below a threshold, that puts every kill inside the commit that crosses it,
    at any of its file writes, however fast the machine. Returns one record per trial: rows before and
    after, commits reported, new data files the current version does not use (those of the commit the
    kill interrupted, and any a re-training superseded), and the problems found (empty: the trial passed).
    """
    from taskindex.index.task_index import TaskIndex, verify
    from taskindex.index.storage import Store

    rng = random.Random(seed)
    results: list[dict] = []
    for trial in range(trials):
        if start_from is not None:
            shutil.rmtree(root, ignore_errors=True)
            shutil.copytree(start_from, root)
        with TaskIndex.open(root, readonly=True) as idx:
            committed, rows_before = set(idx.names()), len(idx)
            unused_before = len(_unused(Store(root), idx._v.manifest))
        proc = _writer(root)
        first = proc.stdout.readline().strip()  # the writer is up and committing
        if files:
            _wait_for_files(root / "data", len(os.listdir(root / "data")) + rng.randint(1, files))
        else:
            time.sleep(rng.uniform(0.0, max_delay))
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate()
        done = [x for x in [first, *rest.split()] if x]
        committed |= set(done)
        problems = verify(root)
        with TaskIndex.open(root, readonly=True) as idx:
            names = set(idx.names())
            torn = [n for n in done[-3:] if idx.get(n)[0].vector[0] != int(n[3:]) + 1]
            unused = len(_unused(Store(root), idx._v.manifest)) - unused_before
        missing, unreported = committed - names, names - committed
        if missing:
            problems.append(f"returned commits missing: {sorted(missing)}")
        if len(unreported) > 1:
            problems.append(f"more than the commit in flight landed: {sorted(unreported)}")
        if torn:
            problems.append(f"rows hold another row's vector: {torn}")
        record = {"trial": trial, "rows_before": rows_before, "reported": len(done), "rows": len(names),
                  "unused_files": unused, "problems": problems}
        results.append(record)
        if report is not None:
            report(record)
    return results


def _wait_for_files(folder: Path, count: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while len(os.listdir(folder)) < count and time.monotonic() < deadline:
        time.sleep(0.0005)


def _unused(store, manifest) -> list[Path]:
    return [p for p in store.unreferenced(manifest.to_json()) if p.parent == store.data]


if __name__ == "__main__":
    writer_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
