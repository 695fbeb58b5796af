"""Threads: rebuild workers and the MODEL2VEC fit take embed's idle-core rule; `threads` and --threads override it."""

from __future__ import annotations

import numpy as np
import pytest
from test_rebuild import SAMPLES, TINY, sample_rows, write_csv

import taskindex.embedding.pipeline as pipeline
import taskindex.rebuilds.run as run
from taskindex import cores
from taskindex.select import model2vec


@pytest.fixture
def busy_machine(monkeypatch):
    """Four cores, three of them kept busy by other processes; returns the thread counts torch is set to."""
    used = []

    def record(n: int):
        used.append(n)
        return before(n)

    before = pipeline.torch_threads
    monkeypatch.setattr(cores, "available_cores", lambda: 4)
    monkeypatch.setattr(run, "available_cores", lambda: 4)
    monkeypatch.setattr(cores, "cores_used_by_others", lambda n, window=0.05, own_threads=1: 3.0)
    monkeypatch.setattr(pipeline, "torch_threads", record)
    return used


def test_a_rebuild_takes_the_idle_cores_and_threads_overrides_them(tmp_path, busy_machine):
    manifest = write_csv(tmp_path / "m.csv", sample_rows(SAMPLES[:1], per_class=4))
    run.rebuild(tmp_path / "a", manifest, workers=1, progress=False, **TINY)
    assert busy_machine and set(busy_machine) == {1}  # one idle core: one thread, not the machine's four
    busy_machine.clear()
    run.rebuild(tmp_path / "b", manifest, workers=1, threads=2, progress=False, **TINY)
    assert set(busy_machine) == {2}


def test_pool_workers_take_the_idle_cores_up_to_their_share(monkeypatch, busy_machine):
    assert run.idle_threads(2) == 1  # three of four cores busy: one thread
    monkeypatch.setattr(cores, "cores_used_by_others", lambda n, window=0.05, own_threads=1: 0.0)
    assert run.idle_threads(2) == 2  # an idle machine: the worker's share, never all four cores
    assert run.idle_threads(8) == 4


def test_a_model2vec_fit_takes_the_idle_cores_and_threads_overrides_them(busy_machine):
    rng = np.random.default_rng(0)
    prior = np.full(8, 1e-6)
    tasks, models = (prior + 1e-4 * np.exp(rng.normal(0, 1, (n, 8))) for n in (5, 2))
    err = rng.uniform(0.1, 0.9, (5, 2))
    model2vec.fit(tasks, models, err, prior, 0.15, ["a", "b"], max_steps=3)
    assert busy_machine == [1]
    model2vec.fit(tasks, models, err, prior, 0.15, ["a", "b"], max_steps=3, threads=2)
    assert busy_machine == [1, 2]
    model2vec.check_options({"threads": 2})  # fit_model2vec(threads=) and `model2vec fit --threads` pass it on
