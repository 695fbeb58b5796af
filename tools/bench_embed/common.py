"""What the parts of the embedding benchmark share: the probe, the images, device-synchronised timing, and
the estimators timed against fisher_pass (ours)."""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

import taskindex
from taskindex.data import samples
from taskindex.embedding.fisher import conv_weights, fisher_pass
from taskindex.embedding.head import fit_head
from taskindex._testing.reference import naive_per_sample
from tools import harness

PROBE = "efficientnet_lite0"
try:
    from taskindex.embedding.vector import PRIOR_SCALE
except ImportError:  # moved
    PRIOR_SCALE = 1e-8


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> tuple[float, list[float]]:
    """Warm up once, then `repeats` timed calls, the device synchronised around each; (best seconds, all)."""
    return harness.best_of(fn, repeats, sync=lambda: sync(device))


class Stopwatch:
    """Accumulates wall time between resume() and pause() (synchronising the device)."""

    def __init__(self, device: torch.device):
        self.device, self.total, self.t0 = device, 0.0, None

    def resume(self) -> None:
        sync(self.device)
        self.t0 = time.perf_counter()

    def pause(self) -> float:
        sync(self.device)
        self.total += time.perf_counter() - self.t0
        return self.total


def load_pool(name: str, n: int, size: int, seed: int):
    """n class-balanced images (uint8, size x size) of a sample task and their labels."""
    spec = samples.spec(name)
    per_class = math.ceil(n / len(spec.groups)) + 1
    task = samples.load(name, max_per_class=per_class, seed=seed)
    idx = task.balanced_indices(n, seed)
    if len(idx) < n:
        raise SystemExit(f"sample task {name!r} has only {len(idx)} images; asked for {n}")
    return task.load(idx, size), torch.as_tensor(task.labels[idx], dtype=torch.long), len(spec.groups)


def trainable_copy(backbone: torch.nn.Module, device: torch.device) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """A deep copy whose conv weights (the Fisher's parameters, and only those) require grad."""
    net = copy.deepcopy(backbone).eval()
    if device.type == "cpu":
        net = net.to(memory_format=torch.channels_last)
    for p in net.parameters():
        p.requires_grad_(False)
    ws = conv_weights(net)
    for w in ws:
        w.requires_grad_(True)
    return net, ws


def setup(probe, images: torch.Tensor, labels: torch.Tensor, n_classes: int, batch: int, seed: int):
    """Normalised batches, a head fitted on the probe's features, labels drawn from it, its probabilities."""
    dev = probe.device
    xs = [probe.normalize(images[i:i + batch]) for i in range(0, len(images), batch)]
    with torch.no_grad():
        feats = torch.cat([probe.backbone(x).float().cpu() for x in xs])
    head = fit_head(feats, labels, n_classes, seed=seed).to(dev)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        probs = torch.softmax(head(feats.to(dev)).float(), 1).cpu()
    draws = torch.multinomial(probs, 1, generator=gen).flatten().to(dev)
    ys = [draws[i:i + batch] for i in range(0, len(images), batch)]
    return xs, ys, head, probs


def prepared(task: str, n: int, size: int, batch: int, seed: int, device: torch.device):
    """The probe at `size`, n images of a sample task in batches, a head fitted on their features and labels
    drawn from it: (probe, xs, ys, head, probs, n_classes)."""
    probe = taskindex.load_probe(PROBE, image_size=size, device=device)
    images, labels, n_classes = load_pool(task, n, size, seed)
    xs, ys, head, probs = setup(probe, images, labels, n_classes, batch, seed)
    return probe, xs, ys, head, probs, n_classes


def per_filter(sq_by_layer: list[torch.Tensor]) -> np.ndarray:
    return torch.cat([s.detach().double().cpu().flatten() for s in sq_by_layer]).numpy()


def conv_kind(call) -> str:
    kh, kw = call.weight.shape[-2:]
    s = call.stride[0]
    if call.weight.shape[1] == 1 and call.groups > 1:
        return f"depthwise {kh}x{kw} s{s}"
    if kh == 1 and kw == 1:
        return f"pointwise 1x1 s{s}"
    return f"dense {kh}x{kw} s{s} (groups {call.groups})"


# --------------------------------------------------------------------------- estimators


def run_ours(backbone, head, xs, ys):
    return fisher_pass(backbone, head, zip(xs, ys))


def run_floor(net, head, xs, ys):
    """One batched forward+backward to the conv weights: loss = sum_n -log p(y_n|x_n)."""
    for x, y in zip(xs, ys):
        lp = torch.log_softmax(head(net(x)).float(), 1)
        (-lp.gather(1, y[:, None]).sum()).backward()
    for w in conv_weights(net):
        w.grad = None


def run_activation_only(backbone, head, xs, ys):
    """Forward + backward of the frozen backbone to the input: the base that fisher_pass builds on."""
    for x, y in zip(xs, ys):
        x = x.detach().requires_grad_(True)
        lp = torch.log_softmax(head(backbone(x)).float(), 1)
        (-lp.gather(1, y[:, None]).sum()).backward()


def run_naive(net, head, xs, ys, n: int):
    """Per image: forward, autograd.grad of log p(y|x) w.r.t. every conv weight, square, sum per filter
    (taskindex._testing.reference.naive_per_sample, the reference the tests check fisher_pass against)."""
    return naive_per_sample(net, head, torch.cat(xs)[:n], torch.cat(ys)[:n])


def run_batch_squared(net, ws, head, xs, ys=None, snapshot=None):
    """The reference repository's montecarlo estimator: square the gradient of the batch-MEAN loss.

    Per batch: labels drawn from the model's predictive distribution (or the given ys),
    loss = cross-entropy averaged over the batch, grad**2 accumulated; divided by the
    number of batches at the end. snapshot(n_images, per-filter estimate) sees the
    running estimate after every batch.
    """
    acc = [torch.zeros_like(w) for w in ws]
    seen = 0
    for b, x in enumerate(xs):
        logits = head(net(x)).float()
        if ys is None:
            y = torch.multinomial(torch.softmax(logits.detach(), 1), 1).flatten()
        else:
            y = ys[b]
        loss = F.cross_entropy(logits, y)
        grads = torch.autograd.grad(loss, ws)
        for a, g in zip(acc, grads):
            a += g.square()
        seen += x.shape[0]
        if snapshot is not None:
            snapshot(seen, per_filter([a.flatten(1).sum(1) for a in acc]) / (b + 1))
    return [a / len(xs) for a in acc]
