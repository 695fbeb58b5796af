"""The Fisher estimators against independent references: a naive per-sample
autograd loop, and the paper's analytic FIM of a two-layer sigmoid network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from taskindex.fisher import fisher_pass, variational_precision, weights_per_filter


class GroupedNet(nn.Module):
    """Every kind of conv the engine must handle: strided, depthwise, grouped+dilated
    with 'same' padding, 1x1 strided, depthwise multiplier 2 with reflect padding, non-square."""

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


def frozen(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def naive_per_sample(net: nn.Module, head: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Reference: one autograd.grad per sample on functional copies of the conv weights."""
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    names = {id(m): n for n, m in net.named_modules()}
    total = np.zeros(sum(m.out_channels for m in convs))
    for i in range(x.shape[0]):
        params = {f"{names[id(m)]}.weight": m.weight.detach().clone().requires_grad_(True) for m in convs}
        out = torch.func.functional_call(net, params, (x[i:i + 1],))
        logp = torch.log_softmax(head(out), 1)[0, y[i]]
        grads = torch.autograd.grad(logp, list(params.values()))
        total += np.concatenate([g.double().pow(2).flatten(1).sum(1).numpy() for g in grads])
    return total


def test_per_sample_fisher_equals_naive_loop_on_grouped_and_depthwise_convs():
    torch.manual_seed(0)
    net = frozen(GroupedNet())
    net.bn.running_mean.normal_()
    net.bn.running_var.uniform_(0.5, 2.0)
    head = frozen(nn.Linear(64, 4))
    x = torch.randn(9, 3, 17, 15)
    y = torch.randint(0, 4, (9,))
    batches = [(x[:5], y[:5]), (x[5:], y[5:])]  # the sum must not depend on batching
    ours = fisher_pass(net, head, batches)
    ref = naive_per_sample(net, head, x, y)
    live = ref > 1e-12 * ref.max()
    assert live.sum() > 140  # the comparison covers most filters
    rel = np.abs(ours - ref)[live] / ref[live]
    assert rel.max() < 1e-4
    assert np.all(ours[~live] < 1e-9 * ref.max())


def test_per_sample_fisher_is_not_the_square_of_the_batch_gradient():
    torch.manual_seed(1)
    net = frozen(GroupedNet())
    head = frozen(nn.Linear(64, 4))
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 4, (8,))
    ours = fisher_pass(net, head, [(x, y)])
    ref = naive_per_sample(net, head, x, y)
    # the batch-squared estimator: (sum of per-sample gradients)^2 / n, as the reference code does
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    names = {id(m): n for n, m in net.named_modules()}
    params = {f"{names[id(m)]}.weight": m.weight.detach().clone().requires_grad_(True) for m in convs}
    out = torch.func.functional_call(net, params, (x,))
    loss = torch.log_softmax(head(out), 1).gather(1, y[:, None]).mean()
    grads = torch.autograd.grad(loss, list(params.values()))
    batch_sq = np.concatenate([g.double().pow(2).flatten(1).sum(1).numpy() for g in grads])
    assert np.allclose(ours, ref, rtol=1e-4, atol=1e-12)
    assert not np.allclose(batch_sq, ref / 8, rtol=0.1)


# ---- the two-layer sigmoid model of supplementary 5 ----------------------------------------------


class TwoLayer(nn.Module):
    """z = sigmoid(U x) written as a 1x1 conv, so each hidden unit U_k is one filter."""

    def __init__(self, d: int, k: int):
        super().__init__()
        self.u = nn.Conv2d(d, k, 1, bias=False)

    def forward(self, x):
        return torch.sigmoid(self.u(x)).flatten(1)


def two_layer(d=6, k=12, n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    net = TwoLayer(d, k).double()
    with torch.no_grad():
        net.u.weight.copy_(torch.randn(k, d, 1, 1, generator=g, dtype=torch.float64))
    w = torch.randn(k, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3.0, k, dtype=torch.float64)
    head = nn.Linear(k, 2, bias=False).double()
    with torch.no_grad():  # logits [0, w.z]: softmax gives p(y=1) = sigmoid(w.z)
        head.weight.copy_(torch.stack([torch.zeros(k, dtype=torch.float64), w]))
    x = torch.randn(n, d, 1, 1, generator=g, dtype=torch.float64)
    return frozen(net), frozen(head), x, w


def analytic_fisher(net, w, x) -> np.ndarray:
    """Supp. 5: F_(k,j) = mean_e p_e (1 - p_e) w_k^2 z_k^2 (1 - z_k)^2 x_j^2, averaged over j."""
    with torch.no_grad():
        xe = x.flatten(1)
        z = torch.sigmoid(xe @ net.u.weight.flatten(1).T)
        p = torch.sigmoid(z @ w)
        per = (p * (1 - p))[:, None, None] * ((w * z * (1 - z)) ** 2)[:, :, None] * (xe ** 2)[:, None, :]
        return per.mean(0).mean(-1).numpy()


def test_exact_expectation_matches_the_analytic_two_layer_fisher():
    net, head, x, w = two_layer()
    total = fisher_pass(net, head, [(x[i:i + 500], None) for i in range(0, len(x), 500)])
    ours = total / (len(x) * weights_per_filter(net))
    ref = analytic_fisher(net, w, x)
    assert np.allclose(ours, ref, rtol=1e-5)


def test_sampled_labels_converge_to_the_analytic_two_layer_fisher():
    net, head, x, w = two_layer(n=20000)
    with torch.no_grad():
        probs = torch.softmax(head(net(x)), 1)
    draws = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(3)).flatten()
    total = fisher_pass(net, head, [(x[i:i + 2000], draws[i:i + 2000]) for i in range(0, len(x), 2000)])
    ours = total / (len(x) * weights_per_filter(net))
    ref = analytic_fisher(net, w, x)
    assert np.abs(ours - ref).max() / ref.max() < 0.05
    assert spearmanr(ours, ref).statistic > 0.97


def test_variational_precision_ranks_filters_like_the_analytic_fisher():
    net, head, x, w = two_layer(n=3000, seed=2)
    with torch.no_grad():  # labels from the model itself: the Hessian of the loss is the Fisher
        probs = torch.softmax(head(net(x)), 1)
    y = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(0)).flatten()
    ref = analytic_fisher(net, w, x)
    prior = np.full(ref.shape, 1e-3 * ref.mean())
    order = torch.Generator().manual_seed(1)

    def batches():
        perm = torch.randperm(len(x), generator=order)
        for i in range(0, len(x), 300):
            yield x[perm[i:i + 300]], y[perm[i:i + 300]]

    # start from a flat guess: the ranking must come from SGVB, not from the start
    flat = np.full(ref.shape, ref.mean()) + prior
    prec = variational_precision(net, head, batches, prior, epochs=60, lr=0.05, seed=0, nu=1 / len(x), init=flat)
    est = prec - prior
    assert spearmanr(est, ref).statistic > 0.9
    # and the scale is the Fisher's: the precision estimates F + t0, not some multiple of it
    assert 0.3 < np.median(est / ref) < 3.0


def test_variational_precision_is_the_prior_for_a_trivial_task():
    net, head, x, w = two_layer(n=400, seed=4)
    with torch.no_grad():  # a head that is certain of class 0, and every label is 0: the loss is flat
        head.weight.zero_()
    trivial_head = frozen(nn.Sequential(head, Shift(torch.tensor([30.0, 0.0], dtype=torch.float64))))
    y = torch.zeros(len(x), dtype=torch.long)
    prior = np.geomspace(1e-3, 1e1, 12)

    def batches():
        for i in range(0, len(x), 100):
            yield x[i:i + 100], y[i:i + 100]

    prec = variational_precision(net, trivial_head, batches, prior, epochs=20, lr=0.05, seed=0, nu=1 / len(x))
    assert np.allclose(prec, prior, rtol=1e-6)


class Shift(nn.Module):
    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.register_buffer("bias", bias)

    def forward(self, x):
        return x + self.bias


@pytest.mark.parametrize("seed", [0, 1])
def test_per_sample_fisher_in_float32_matches_float64(seed):
    net, head, x, _ = two_layer(n=300, seed=seed)
    t64 = fisher_pass(net, head, [(x, None)])
    t32 = fisher_pass(net.float(), head.float(), [(x.float(), None)])
    assert np.allclose(t32, t64, rtol=1e-4)
