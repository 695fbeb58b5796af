"""embed(): the pipeline's guarantees (determinism, invariances, a frozen probe) and the file format."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest
import torch

import taskindex as ti
from taskindex import Embedding, Task, embed, load_probe
from taskindex.data import samples
from taskindex.errors import EmbeddingFileError, IncompatibleEmbeddingsError, TaskError, TaskIndexError


def test_same_seed_gives_the_same_vector_bit_for_bit(tiny_probe, digits_round):
    a = embed(digits_round, tiny_probe, progress=False)
    b = embed(digits_round, tiny_probe, progress=False)
    assert a.vector.tobytes() == b.vector.tobytes()
    c = embed(digits_round, tiny_probe, seed=1, progress=False)
    assert c.vector.tobytes() != a.vector.tobytes()


def test_embedding_is_invariant_to_permuting_the_labels(tiny_probe, digits_round):
    perm = np.array([2, 0, 3, 1])  # class i is renamed perm[i]
    relabelled = Task.from_arrays(
        np.stack([digits_round.load([i], 8)[0].permute(1, 2, 0).numpy() for i in range(len(digits_round))]),
        perm[digits_round.labels], name="relabelled")
    original = Task.from_arrays(
        np.stack([digits_round.load([i], 8)[0].permute(1, 2, 0).numpy() for i in range(len(digits_round))]),
        digits_round.labels, name="original")
    a = embed(original, tiny_probe, progress=False)
    b = embed(relabelled, tiny_probe, progress=False)
    assert np.array_equal(a.vector, b.vector)
    for method in ("montecarlo", "variational"):
        assert np.array_equal(embed(original, tiny_probe, method=method, epochs=2, progress=False).vector,
                              embed(relabelled, tiny_probe, method=method, epochs=2, progress=False).vector)


def test_probe_is_unchanged_by_embedding(tiny_probe, digits_round):
    before = {k: v.clone() for k, v in tiny_probe.backbone.state_dict().items()}
    flags = [p.requires_grad for p in tiny_probe.backbone.parameters()]
    for method in ("montecarlo", "variational"):
        embed(digits_round, tiny_probe, method=method, epochs=1, progress=False)
    after = tiny_probe.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not tiny_probe.backbone.training
    assert [p.requires_grad for p in tiny_probe.backbone.parameters()] == flags
    assert all(p.grad is None for p in tiny_probe.backbone.parameters())


def test_probe_from_module_does_not_touch_the_callers_model(digits_round):
    from conftest import make_tiny_cnn

    net = make_tiny_cnn().train()
    probe = ti.Probe.from_module(net, 16, name="tiny", image_size=16)
    embed(digits_round, probe, progress=False)
    assert net.training and all(p.requires_grad for p in net.parameters())
    assert all(p.grad is None for p in net.parameters())


def test_vector_layout_and_metadata(tiny_probe, digits_round):
    e = embed(digits_round, tiny_probe, max_samples=40, progress=False)
    assert e.dim == 8 + 8 + 16 == sum(c for _, c in e.layout)
    assert e.layout == [("stem", 8), ("dw", 8), ("pw", 16)]
    assert e.vector.dtype == np.float32 and (e.vector >= e.prior).all() and (e.prior > 0).all()
    assert e.meta["n_samples"] == 40 and e.meta["n_classes"] == 4
    assert e.meta["probe"] == "tiny" and e.meta["fingerprint"] == tiny_probe.fingerprint
    assert e.meta["method"] == "montecarlo" and e.meta["seed"] == 0 and e.meta["seconds"] > 0


@pytest.mark.parametrize("name,dim", [("efficientnet_lite0", 21008), ("resnet34", 8512)])
def test_dimension_is_the_number_of_conv_filters(name, dim):
    probe = load_probe(name, weights=None, image_size=32)
    assert probe.dim == dim
    if name == "efficientnet_lite0":
        t = samples.load("digits-even-odd", max_per_class=4)
        assert embed(t, probe, max_samples=8, progress=False).dim == dim


def test_save_and_load_round_trip(tmp_path, tiny_probe, digits_round):
    e = embed(digits_round, tiny_probe, progress=False)
    path = tmp_path / "a.emb"
    e.save(path)
    back = Embedding.load(path)
    assert np.array_equal(back.vector, e.vector) and np.array_equal(back.prior, e.prior)
    assert back.layout == e.layout and back.meta == e.meta
    with zipfile.ZipFile(path) as z:  # documented, pickle-free members
        assert sorted(z.namelist()) == ["embedding.json", "prior.npy", "vector.npy"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_files_respect_the_umask(tmp_path, tiny_probe, digits_round, umask, mode):
    """Like any file a user's tool writes (the atomic rename must not keep the temp file's 0600)."""
    e = embed(digits_round, tiny_probe, max_samples=20, progress=False)
    before = os.umask(umask)
    try:
        e.save(tmp_path / "a.emb")
    finally:
        os.umask(before)
    assert (tmp_path / "a.emb").stat().st_mode & 0o777 == mode


def test_loading_files_that_are_not_embeddings(tmp_path):
    junk = tmp_path / "junk.emb"
    junk.write_bytes(b"\x00not a zip")
    with pytest.raises(EmbeddingFileError, match="not a taskindex embedding"):
        Embedding.load(junk)
    with pytest.raises(EmbeddingFileError, match="does not exist"):
        Embedding.load(tmp_path / "missing.emb")


def test_one_class_task_is_refused(tiny_probe):
    t = Task.from_arrays(np.zeros((5, 8, 8), np.uint8), np.full(5, 3), name="mono")
    with pytest.raises(TaskError, match="only one class"):
        embed(t, tiny_probe, progress=False)


def test_bad_options_are_refused(tiny_probe, digits_round):
    with pytest.raises(TaskIndexError, match="unknown method 'fisher'"):
        embed(digits_round, tiny_probe, method="fisher")
    with pytest.raises(TaskIndexError, match="max_samples"):
        embed(digits_round, tiny_probe, max_samples=1)
    with pytest.raises(TaskIndexError, match="taskindex.Task"):
        embed("not a task", tiny_probe)


def test_different_probes_are_not_comparable(tiny_probe, digits_round):
    from conftest import make_tiny_cnn

    other = ti.Probe.from_module(make_tiny_cnn(seed=1), 16, name="tiny", image_size=16)
    a = embed(digits_round, tiny_probe, max_samples=20, progress=False)
    b = embed(digits_round, other, max_samples=20, progress=False)
    with pytest.raises(IncompatibleEmbeddingsError, match="fingerprint"):
        ti.d_sym(a, b)
    c = embed(digits_round, tiny_probe, max_samples=20, method="variational", epochs=1, progress=False)
    with pytest.raises(IncompatibleEmbeddingsError, match="method"):
        ti.pairwise([a, c])


@pytest.fixture
def fitted_heads(monkeypatch) -> list:
    """The heads embed fits, caught on their way out of fit_head."""
    import taskindex.embedding.pipeline as t2v

    heads, fit_head = [], t2v.fit_head

    def spy(*args, **kwargs):
        heads.append(fit_head(*args, **kwargs))
        return heads[-1]

    monkeypatch.setattr(t2v, "fit_head", spy)
    return heads


def test_embed_exact_expectation_equals_the_naive_loop_on_the_head_it_fits(tiny_probe, digits_round, fitted_heads):
    """embed(expectation='exact') against an independent reference: the naive per-sample loop
    (one autograd.grad per image and label, taskindex._testing.reference) on every image of the task, with
    the head embed fitted (caught on its way out of fit_head), divided by images and weights per
    filter, plus t0 = prior_scale / mean(w^2) of each layer computed here."""
    from taskindex._testing.reference import naive_per_sample

    heads = fitted_heads

    # the plain mean over images and every label direction: what the naive loop computes
    e = embed(digits_round, tiny_probe, method="montecarlo", expectation="exact", max_samples=None,
              batch_size=32, progress=False, estimator="mean", label_passes=None)
    assert len(heads) == 1 and e.meta["n_samples"] == len(digits_round)
    net = tiny_probe.backbone
    x = tiny_probe.normalize(digits_round.load(np.arange(len(digits_round)), tiny_probe.image_size))
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    per_weight = np.concatenate([np.full(m.out_channels, m.weight[0].numel()) for m in convs])
    fisher = naive_per_sample(net, heads[0], x, None) / (len(x) * per_weight)
    prior = np.concatenate([np.full(m.out_channels, e.meta["prior_scale"] / m.weight.double().square().mean().item())
                            for m in convs])
    assert np.allclose(e.prior, prior, rtol=1e-6)
    assert (fisher > 100 * prior).mean() > 0.5  # the Fisher, not the prior, decides most of the vector
    assert np.allclose(e.vector, fisher + prior, rtol=1e-4, atol=0)


@pytest.mark.parametrize("seed", [0, 9])
def test_sampled_labels_average_to_the_exact_expectation_not_to_the_true_labels(tiny_probe, digits_round,
                                                                                fitted_heads, seed):
    """expectation='sample' draws each image's label from the fitted head's predictive distribution, so
    with the plain mean over images its expectation over the draws is expectation='exact' on the same
    head. Every image is repeated 40 times, so one embedding averages 40 independent draws per image and
    lands near 'exact'; the true labels (the empirical Fisher) land far from it on the same head, so a
    sampler that used them instead of draws fails the bound."""
    from taskindex._testing.reference import naive_per_sample

    heads = fitted_heads
    repeated = digits_round.subset(np.repeat(np.arange(len(digits_round)), 40))
    options = {"method": "montecarlo", "estimator": "mean", "max_samples": None, "seed": seed, "progress": False}
    sampled = embed(repeated, tiny_probe, expectation="sample", **options)
    exact = embed(repeated, tiny_probe, expectation="exact", label_passes=None, **options)
    assert len(heads) == 2 and torch.equal(heads[0].weight, heads[1].weight)  # both use the same head
    assert torch.equal(heads[0].bias, heads[1].bias)
    # the true labels on that head; embed numbers the classes by first appearance
    _, first, inverse = np.unique(digits_round.labels, return_index=True, return_inverse=True)
    true = torch.as_tensor(np.argsort(np.argsort(first))[inverse])
    x = tiny_probe.normalize(digits_round.load(np.arange(len(digits_round)), tiny_probe.image_size))
    convs = [m for m in tiny_probe.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    per_weight = np.concatenate([np.full(m.out_channels, m.weight[0].numel()) for m in convs])
    true_fisher = naive_per_sample(tiny_probe.backbone, heads[0], x, true) / (len(x) * per_weight)

    f_exact, f_sampled = exact.vector - exact.prior, sampled.vector - sampled.prior
    live = f_exact > 1e-6 * f_exact.max()
    assert live.sum() > 20

    def rms_log_ratio(f):
        return float(np.sqrt(np.mean(np.log(f[live] / f_exact[live]) ** 2)))

    # the bound lies between the sampler's spread and the true labels' bias, with room both ways
    assert rms_log_ratio(f_sampled) < 0.2
    assert rms_log_ratio(true_fisher) > 0.3


class FakeMachine:
    """/proc/stat, the process clock and the wall clock of a machine whose load the test sets: during a
    sleep of t seconds, `busy` cores' worth of ticks (ours and other processes') are added to the busy
    fields of /proc/stat, `idle` cores' worth to idle and iowait, and `ours` to this process's CPU time."""

    def __init__(self, ours: float, busy: float, idle: float = 0.0):
        self.hz = os.sysconf("SC_CLK_TCK")
        self.ours, self.busy, self.idle = ours, busy, idle
        self.busy_ticks = self.idle_ticks = 0.0
        self.cpu = self.wall = 0.0

    def sleep(self, t):
        self.wall += t
        self.cpu += self.ours * t
        self.busy_ticks += self.busy * t * self.hz
        self.idle_ticks += self.idle * t * self.hz

    def process_time(self):
        return self.cpu

    def monotonic(self):
        return self.wall

    def open(self, path, *args, **kwargs):
        assert path == "/proc/stat"
        busy, idle = round(self.busy_ticks), round(self.idle_ticks)
        # user nice system idle iowait irq softirq steal: the busy ticks spread over user, system and irq
        fields = [busy // 2, 0, busy - busy // 2 - busy // 4, idle // 2, idle - idle // 2, busy // 4, 0, 0]
        return io.StringIO("cpu  " + " ".join(map(str, fields)) + "\ncpu0 0 0 0 0 0 0 0 0\n")


@pytest.mark.parametrize("ours, busy, idle, expected", [
    (1.0, 1.0, 1.0, 0.0),   # our own busy thread counts for nothing
    (0.0, 1.0, 1.0, 1.0),   # another process's busy loop counts for one core
    (1.0, 2.0, 0.0, 1.0),   # both: only the other's
    (0.0, 0.0, 2.0, 0.0),   # idle and iowait ticks are no work
    (0.5, 3.5, 0.0, 2.0),   # never more than the cores
    (1.0, 0.5, 1.5, 0.0),   # nor less than none (the ticks can lag our own CPU time)
])
def test_cores_used_by_others_subtracts_our_own_work_and_counts_the_rest(monkeypatch, ours, busy, idle, expected):
    """The thread count must not follow the load average: a long run of embeddings made it count its own
    work and fall to one thread on an idle machine. On a machine whose load is known: the busy time over
    the window, less this process's CPU time, in cores, clamped to [0, cores]."""
    from taskindex import cores

    machine = FakeMachine(ours, busy, idle)
    monkeypatch.setattr(cores, "time", machine)
    monkeypatch.setattr(cores, "open", machine.open, raising=False)
    assert cores.cores_used_by_others(2, window=0.5) == pytest.approx(expected, abs=0.05)
    assert machine.wall == pytest.approx(0.5)  # one window, slept once


def test_cores_used_by_others_without_proc_stat_is_the_load_less_our_threads(monkeypatch):
    from taskindex import cores

    def no_proc(path, *args, **kwargs):
        raise FileNotFoundError(path)

    monkeypatch.setattr(cores, "open", no_proc, raising=False)
    monkeypatch.setattr(cores.os, "getloadavg", lambda: (3.0, 0.0, 0.0))
    assert cores.cores_used_by_others(4, window=0.01, own_threads=2) == pytest.approx(1.0)
    monkeypatch.setattr(cores.os, "getloadavg", lambda: (1.0, 0.0, 0.0))
    assert cores.cores_used_by_others(4, window=0.01, own_threads=2) == 0.0


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2
                    or not os.path.exists("/proc/stat"), reason="needs Linux and two cores")
def test_cores_used_by_others_on_this_machine_ignores_our_thread_and_sees_another_process():
    """The same on the real /proc/stat, relative to what other processes already use (a shared machine
    is rarely idle): our own busy thread adds nothing, another process's busy loop adds about one core.
    Each reading is paired with a baseline taken just before it, so load that comes and goes elsewhere
    moves both."""
    from taskindex.cores import cores_used_by_others as _cores_used_by_others

    cores = len(os.sched_getaffinity(0))

    def used():
        return _cores_used_by_others(cores, window=0.3)

    if cores - min(used() for _ in range(3)) < 1.2:
        pytest.skip("other processes leave less than 1.2 cores idle: nothing can be measured")

    def added_by(start, stop):
        rises = []
        for _ in range(3):
            base = used()
            start()
            try:
                time.sleep(0.1)
                rises.append(used() - base)
            finally:
                stop()
        return float(np.median(rises))

    spinning = {}

    def spin():
        spinning["stop"] = threading.Event()
        spinning["thread"] = threading.Thread(target=lambda: [None for _ in iter(spinning["stop"].is_set, True)])
        spinning["thread"].start()

    def unspin():
        spinning["stop"].set()
        spinning["thread"].join()

    def busy():
        spinning["process"] = subprocess.Popen([sys.executable, "-c", "while True: pass"])

    def unbusy():
        spinning["process"].kill()
        spinning["process"].wait()

    own = added_by(spin, unspin)
    other = added_by(busy, unbusy)
    assert own < 0.5, own
    assert 0.5 < other < 1.5, other
