"""Reference code shared by the tests and the tools (like numpy.testing): slow, obvious and
independent of the engine in taskindex.embedding.fisher, so that the engine can be checked against it.

* `naive_per_sample`: the per-sample Fisher by one `torch.autograd.grad` per image (and per
  label for the exact expectation), on functional copies of the conv weights.
* `GroupedNet`: a small network with every kind of conv the engine must handle.
* `frozen`: eval mode and no parameter requiring grad, as a probe's backbone is.
* `two_layer_fisher`: the paper's analytic FIM of z = sigmoid(U x), p = sigmoid(w.z + b) (supp. 5).

Only the tests and tools import this module (tests/test_layout.py checks); it needs torch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GroupedNet", "frozen", "naive_per_sample", "conv_filter_counts", "two_layer_terms", "two_layer_fisher"]


def frozen(module: nn.Module) -> nn.Module:
    """Eval mode, no parameter requiring grad: the state of a probe's backbone."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def conv_filter_counts(net: nn.Module) -> list[int]:
    """Output channels of every Conv2d in module order: the layout of a Fisher vector."""
    return [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)]


class GroupedNet(nn.Module):
    """Every kind of conv the engine must handle: strided, depthwise, grouped+dilated with
    'same' padding, 1x1 strided, depthwise multiplier 2 with reflect padding, non-square,
    and wide layers on a small map (the Gram-matrix path). 64 output features; 168 filters."""

    FEATURES = 64

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.c3 = nn.Conv2d(8, 12, 3, padding="same", groups=4, dilation=2, bias=False)
        self.c4 = nn.Conv2d(12, 6, 1, stride=2)
        self.c5 = nn.Conv2d(6, 12, 5, padding=2, padding_mode="reflect", groups=6)
        self.c6 = nn.Conv2d(12, 10, (3, 1), stride=(2, 1), padding=(1, 0))
        self.c7 = nn.Conv2d(10, 48, 3, padding=1)  # wide layers on a small map take the Gram-matrix path
        self.c8 = nn.Conv2d(48, 64, 1)

    def forward(self, x):
        x = F.relu(self.bn(self.c1(x)))
        x = F.relu(self.c2(x))
        x = torch.tanh(self.c3(x))
        x = F.relu6(self.c4(x))
        x = torch.sigmoid(self.c5(x))
        x = torch.tanh(self.c7(self.c6(x)))
        return self.c8(x).mean((2, 3))


def naive_per_sample(net: nn.Module, head: nn.Module, x: torch.Tensor, y: torch.Tensor | None,
                     *, per_sample: bool = False) -> np.ndarray:
    """Per filter, sum over images of ||d log p(y_n|x_n) / d w_filter||^2 (float64).

    One forward and one `torch.autograd.grad` per image, on functional copies of every
    Conv2d weight (the module itself is not touched; BatchNorm runs as the module is set).
    y: one label per image, or None for the exact expectation over labels,
    sum_c p(c|x_n) ||d log p(c|x_n) / dw||^2, one autograd.grad per label.
    per_sample=True returns the (images, filters) contributions instead of their sum.
    """
    convs = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    params = {f"{n}.weight": m.weight.detach().requires_grad_(True) for n, m in convs}
    weights = list(params.values())
    rows = []
    for i in range(x.shape[0]):
        out = torch.func.functional_call(net, params, (x[i:i + 1],))
        logp = torch.log_softmax(head(out).double(), 1)[0]
        labels = [int(y[i])] if y is not None else range(logp.shape[0])
        row = torch.zeros(sum(w.shape[0] for w in weights), dtype=torch.float64)
        for j, c in enumerate(labels):
            grads = torch.autograd.grad(logp[c], weights, retain_graph=j < len(labels) - 1)
            sq = torch.cat([g.double().square().flatten(1).sum(1).cpu() for g in grads])
            row += sq if y is not None else float(logp[c].detach().exp()) * sq
        rows.append(row)
    if per_sample:
        return torch.stack(rows).numpy()
    return torch.stack(rows).sum(0).numpy()


def two_layer_terms(x: np.ndarray, u: np.ndarray, w: np.ndarray, b: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Supp. 5 for inputs x (N, d), hidden weights U (K, d), head w (K,) and bias b: with
    c_ek = w_k^2 z_ek^2 (1 - z_ek)^2 mean_j x_ej^2, image e's squared score for hidden unit k
    (averaged over its d weights) is (y_e - p_e)^2 c_ek. Returns (p_e, c_ek), float64."""
    x, u, w = (np.asarray(a, dtype=np.float64) for a in (x, u, w))
    z = 1.0 / (1.0 + np.exp(-(x @ u.T)))
    p = 1.0 / (1.0 + np.exp(-(z @ w + b)))
    c = (w * z * (1 - z)) ** 2 * (x ** 2).mean(1, keepdims=True)
    return p, c


def two_layer_fisher(x: np.ndarray, u: np.ndarray, w: np.ndarray, b: float = 0.0) -> np.ndarray:
    """Supp. 5: F_k = mean_e p_e (1 - p_e) w_k^2 z_ek^2 (1 - z_ek)^2 mean_j x_ej^2, one value per hidden
    unit: the expectation over y ~ p of the squared scores of `two_layer_terms`."""
    p, c = two_layer_terms(x, u, w, b)
    return ((p * (1 - p))[:, None] * c).mean(0)
