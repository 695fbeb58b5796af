"""Shared fixtures: a tiny CNN probe (fast) and small real-image tasks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from taskindex import Probe
from taskindex.data import samples


class TinyCNN(nn.Module):
    """Strided, depthwise and pointwise convs with BatchNorm: the shapes of a real probe, in miniature."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.pw = nn.Conv2d(8, 16, 1)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.pw(torch.relu(self.dw(x))))
        return x.mean((2, 3))


def make_tiny_cnn(seed: int = 0) -> TinyCNN:
    torch.manual_seed(seed)
    net = TinyCNN()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 1.5)
    return net


@pytest.fixture(scope="module")
def one_torch_thread():
    """Thousands of small torch ops (per-image loops, SGVB steps, fits, batch re-ranks): on a shared machine two
    torch threads spin-wait for each other and run them several times slower than one. Use it with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")` or as an argument."""
    from taskindex.embedding.pipeline import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture
def one_blas_thread():
    """BLAS and OpenMP (numpy, FAISS, t-SNE) on one thread, for the same reason."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture
def tiny_probe() -> Probe:
    return Probe.from_module(make_tiny_cnn(), 16, name="tiny", image_size=16)


@pytest.fixture(scope="session")
def digits_round():
    return samples.load("digits-round", max_per_class=30, seed=0)


@pytest.fixture(scope="session")
def digits_straight():
    return samples.load("digits-straight", max_per_class=30, seed=0)


@pytest.fixture
def segmented_index(tmp_path, tiny_probe):
    """Six versions: 12 rows in 4 segments, then 2 removed, so that a compact rewrites every file."""
    from taskindex._testing.index_harness import Synth
    from taskindex.index import TaskIndex

    root = tmp_path / "idx"
    with TaskIndex.create(root, probe=tiny_probe) as idx:
        synth = Synth(idx)
        for lo in range(0, 12, 3):
            idx.add_many([(f"r{i}", synth.make(i)) for i in range(lo, lo + 3)])
        idx.remove("r0", "r5")
    return root


@pytest.fixture(autouse=True)
def sigint_handler_restored():
    """An interrupted CLI command ignores further Ctrl-C until its process ends; under CliRunner that process
    is pytest's, so each test gets its handler back."""
    import signal

    before = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, before)
