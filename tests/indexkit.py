"""Synthetic embeddings at realistic dimension for index tests, and a writer process for crash tests.

The probe is a plain CNN with 2,048 filters (never run: only its identity and
prior matter); rows are clusters of perturbed log-normal Fisher vectors, so
nearest neighbours are well defined and d_sym spans a realistic range.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from taskindex.embedding import Embedding


def wide_probe():
    from torch import nn

    from taskindex import Probe

    net = nn.Sequential(nn.Conv2d(3, 512, 3), nn.Conv2d(512, 512, 1), nn.Conv2d(512, 1024, 1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    for i, m in enumerate(net):
        if isinstance(m, nn.Conv2d):  # fixed values: every process builds the same probe identity
            nn.init.constant_(m.weight, 0.01 * (i + 1))
            nn.init.zeros_(m.bias)
    return Probe.from_module(net, 1024, name="wide", image_size=32)


class Synth:
    """Clustered embeddings in an index's space: row i of cluster c is centre_c * exp(noise)."""

    def __init__(self, index, clusters: int = 20, seed: int = 0):
        self.prior, self.layout, self.dim = index.prior, index.layout, index.dim
        self.space = {k: v for k, v in index.space.items() if k != "weights"}
        self.rng = np.random.default_rng(seed)
        self.centres = np.exp(self.rng.normal(0.0, 2.0, (clusters, self.dim))) * 1e-4

    def make(self, cluster: int, spread: float = 0.3, name: str = "t") -> Embedding:
        f = self.centres[cluster] * np.exp(self.rng.normal(0.0, spread, self.dim))
        f[self.rng.random(self.dim) < 0.2] = 0.0  # dead filters, as at small image sizes
        return Embedding((f + self.prior).astype(np.float32), self.prior, self.layout,
                         dict(self.space, task=name, n_samples=100, n_classes=2))


def writer_main(path: str, start: int, count: int) -> None:
    """Crash-test writer: add rows one commit at a time, printing each name once add() returned."""
    from taskindex.index import TaskIndex

    with TaskIndex.open(path) as index:
        synth = Synth(index, seed=start)
        for i in range(start, start + count):
            emb = synth.make(i % 20, name=f"row{i}")
            emb.vector[0] = float(i + 1)  # each row carries its own number: partial rows are detectable
            index.add(f"row{i}", emb, metadata={"i": i})
            print(f"row{i}", flush=True)


def crash_trials(root: Path, trials: int, seed: int = 0, max_delay: float = 0.25, report=None) -> list[str]:
    """Kill a writer with SIGKILL at random instants; after each kill the index must verify and open,
    hold every commit whose add() returned, with its own vector, and at most the one in flight besides.
    Returns the failures (empty: all trials passed)."""
    from taskindex.index import TaskIndex, verify

    here = Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=f"{here}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    rng = random.Random(seed)
    failures: list[str] = []
    committed: set[str] = set()
    for trial in range(trials):
        with TaskIndex.open(root, readonly=True) as idx:
            first_id = idx.manifest["next_id"]
        proc = subprocess.Popen([sys.executable, str(here / "indexkit.py"), str(root), str(first_id), "100000"],
                                stdout=subprocess.PIPE, env=env, text=True)
        first = proc.stdout.readline().strip()  # the writer is up and committing
        time.sleep(rng.uniform(0.0, max_delay))
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate()
        done = [x for x in [first, *rest.split()] if x]
        committed |= set(done)
        problems = verify(root)
        with TaskIndex.open(root, readonly=True) as idx:
            names = set(idx.names())
            torn = [n for n in done[-3:] if idx.get(n)[0].vector[0] != int(n[3:]) + 1]
        missing, unreported = committed - names, names - committed
        ok = not (problems or missing or len(unreported) > 1 or torn)
        if not ok:
            failures.append(f"trial {trial}: problems={problems} missing={sorted(missing)} "
                            f"unreported={sorted(unreported)} torn={torn}")
        if report is not None:
            report(trial, len(done), len(names), ok)
        committed = names
    return failures


if __name__ == "__main__":
    writer_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
