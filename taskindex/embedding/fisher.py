"""Per-filter Fisher information of a probe's convolutions.

Every conv2d call on a probe filter is intercepted with a TorchFunctionMode, so
the code works for any backbone (static 'same' padding modules, reflect padding,
grouped and depthwise convs) without knowing its forward(). The backbone's
weights never require grad: autograd only propagates activation gradients, and
the per-sample weight gradients are formed in a hook on each conv output from
the conv's input and output gradient, squared per sample and summed per filter
at once. Nothing of size (batch x weights) is ever stored.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from taskindex.embedding.estimators import FilterEstimator
from taskindex.optim import Adam

_CONV_SIG = inspect.Signature([
    inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d)
    for n, d in (("input", inspect.Parameter.empty), ("weight", inspect.Parameter.empty),
                 ("bias", None), ("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1))
])


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


class ConvCall:
    """The arguments of one conv2d call, normalised to explicit (top, bottom, left, right) padding."""

    def __init__(self, args, kwargs):
        b = _CONV_SIG.bind(*args, **kwargs)
        b.apply_defaults()
        a = b.arguments
        self.input, self.weight, self.bias = a["input"], a["weight"], a["bias"]
        self.stride, self.dilation, self.groups = _pair(a["stride"]), _pair(a["dilation"]), int(a["groups"])
        kh, kw = self.weight.shape[-2:]
        pad = self.padding = a["padding"]
        if pad == "valid":
            self.pad = (0, 0, 0, 0)
        elif pad == "same":  # torch puts the odd pixel at the bottom/right
            th, tw = self.dilation[0] * (kh - 1), self.dilation[1] * (kw - 1)
            self.pad = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        else:
            ph, pw = _pair(pad)
            self.pad = (ph, ph, pw, pw)


def per_sample_filter_sq(call: ConvCall, grad_out: torch.Tensor) -> torch.Tensor:
    """(n, out_channels): per sample, the squared norm of each filter's weight gradient.

    The weight gradient is a sum over kernel offsets of (grad_out x shifted input);
    each offset is a batched GEMM (or an elementwise product for depthwise convs),
    and its squares are accumulated immediately, so memory stays at one shifted input.
    """
    dtype = torch.float64 if call.input.dtype == torch.float64 else torch.float32
    x = call.input.detach().to(dtype)
    g = grad_out.detach().to(dtype)
    n, cout, ho, wo = g.shape
    cin_g = call.weight.shape[1]
    groups = call.groups
    cout_g = cout // groups
    kh, kw = call.weight.shape[-2:]
    (sh, sw), (dh, dw) = call.stride, call.dilation
    top, bottom, left, right = call.pad
    if any(call.pad):
        x = F.pad(x, (left, right, top, bottom))
    span = cin_g * kh * kw
    if groups == 1 and ho * wo * (span + cout) < cout * span:
        return _ghost_sq(x, g, (kh, kw), call.stride, call.dilation)
    out = torch.zeros(n, groups, cout_g, device=g.device, dtype=dtype)
    if cin_g == 1:  # depthwise: filter o reads input channel o // cout_g only
        gg = g.view(n, groups, cout_g, ho, wo) if g.is_contiguous() else g.reshape(n, groups, cout_g, ho, wo)
    else:
        gm = g.permute(0, 2, 3, 1).reshape(n, ho * wo, groups, cout_g).permute(0, 2, 3, 1)  # n,G,o,P
    for a in range(kh):
        for b in range(kw):
            xs = x[:, :, a * dh: a * dh + sh * (ho - 1) + 1: sh, b * dw: b * dw + sw * (wo - 1) + 1: sw]
            if cin_g == 1:
                gw = (gg * xs.unsqueeze(2)).sum(dim=(3, 4))  # n,G,o
                out += gw.square()
            else:
                xm = xs.permute(0, 2, 3, 1).reshape(n, ho * wo, groups, cin_g).transpose(1, 2)  # n,G,P,i
                gw = torch.matmul(gm, xm)  # n,G,o,i
                out += gw.square().sum(-1)
    return out.reshape(n, cout)


def _ghost_sq(x: torch.Tensor, g: torch.Tensor, kernel, stride, dilation) -> torch.Tensor:
    """Per-sample filter norms without forming the gradient, for small feature maps.

    With X (weights x positions) the unfolded input and G (filters x positions) the output
    gradient of one sample, the gradient is G X^T and the squared norm of filter o's row is
    G_o (X^T X) G_o^T: O(P^2 (weights + filters)) instead of O(P weights filters), a large
    saving once the feature map has fewer positions P than the layer has channels.
    """
    n, cout, ho, wo = g.shape
    cols = F.unfold(x, kernel, dilation=dilation, stride=stride)  # n, weights, P
    gram = torch.bmm(cols.transpose(1, 2), cols)  # n, P, P
    gm = g.reshape(n, cout, ho * wo)
    return (torch.bmm(gm, gram) * gm).sum(-1)


class FilterTap(TorchFunctionMode):
    """Passes each conv2d call on one of `weights` and its output to `handler(layer, call, out)`."""

    def __init__(self, weights: list[torch.Tensor], handler: Callable):
        super().__init__()
        self._layer_of = {id(w): i for i, w in enumerate(weights)}
        self._handler = handler

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            layer = self._layer_of.get(id(weight))
            if layer is not None:
                return self._handler(layer, ConvCall(args, kwargs), func(*args, **kwargs))
        return func(*args, **kwargs)


def conv_weights(backbone: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in backbone.modules() if isinstance(m, nn.Conv2d)]


def weights_per_filter(backbone: nn.Module) -> np.ndarray:
    """m_k: number of weights in each filter, for averaging the Fisher over a filter."""
    return np.concatenate([np.full(w.shape[0], w[0].numel(), dtype=np.float64) for w in conv_weights(backbone)])


class PerSampleFisher:
    """Accumulates sum_n ||d log p / d w_filter||^2 for every filter of a backbone.

    With an `estimator`, each image's contribution (summed over the label passes of its
    batch) is also handed to it at `end_batch()`, for a per-filter aggregate other than the sum.
    """

    def __init__(self, backbone: nn.Module, sink: Callable[[int, torch.Tensor], None] | None = None,
                 estimator: FilterEstimator | None = None):
        self.weights = conv_weights(backbone)
        self.sizes = [w.shape[0] for w in self.weights]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        self.total = torch.zeros(int(self.offsets[-1]), dtype=torch.float64, device=self.weights[0].device)
        self.sink = sink
        self.estimator = estimator
        self._batch: torch.Tensor | None = None

    def _handle(self, layer: int, call: ConvCall, out: torch.Tensor) -> torch.Tensor:
        if out.requires_grad:
            def hook(grad, layer=layer, call=call):
                sq = per_sample_filter_sq(call, grad)
                lo, hi = self.offsets[layer], self.offsets[layer + 1]
                self.total[lo:hi] += sq.sum(0).double()
                if self.estimator is not None:
                    if self._batch is None:
                        self._batch = torch.zeros(sq.shape[0], len(self.total), dtype=sq.dtype, device=sq.device)
                    self._batch[:, lo:hi] += sq
                if self.sink is not None:
                    self.sink(layer, sq)
            out.register_hook(hook)
        return out

    def end_batch(self) -> None:
        if self.estimator is not None and self._batch is not None:
            self.estimator.update(self._batch)
        self._batch = None

    def tap(self) -> FilterTap:
        return FilterTap(self.weights, self._handle)


def logit_grads(probs: torch.Tensor, draws: torch.Tensor | None,
                label_passes: int | None = None) -> Iterable[torch.Tensor]:
    """Gradients of -log p(y|x) w.r.t. the logits, one backward pass each.

    With `draws` (sampled labels): p - onehot(draw). Without: the exact expectation over
    labels. Per image, E_y[g_y g_y^T] = diag(p) - p p^T =: H, whose rank is at most C - 1
    (H 1 = 0), so the passes sqrt(lambda_i) u_i over H's C - 1 leading eigenpairs give
    sum_i ||J^T sqrt(lambda_i) u_i||^2 = tr(J^T H J), the exact expectation, in C - 1 passes
    (one for a binary task, like a sampled label). `label_passes` keeps only the leading
    eigen-directions: the sum over the most informative label directions, for many classes.
    """
    if draws is not None:
        yield probs - F.one_hot(draws, probs.shape[1]).to(probs.dtype)
        return
    p = probs.double()
    h = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    evals, evecs = torch.linalg.eigh(h)  # ascending
    rank = probs.shape[1] - 1 if label_passes is None else min(probs.shape[1] - 1, label_passes)
    for i in range(rank):
        j = probs.shape[1] - 1 - i
        yield (evecs[:, :, j] * evals[:, j:j + 1].clamp_min(0).sqrt()).to(probs.dtype)


def fisher_pass(
    backbone: nn.Module,
    head: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]],
    sink: Callable[[int, torch.Tensor], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
    estimator: FilterEstimator | None = None,
    label_passes: int | None = None,
) -> np.ndarray:
    """Sum over samples of per-filter squared score norms (divide by n and m_k for the Fisher).

    batches yield (normalised images, sampled labels or None for the exact expectation).
    An `estimator` also receives every image's contribution (see PerSampleFisher).
    """
    acc = PerSampleFisher(backbone, sink, estimator)
    for x, draws in batches:
        x = x.detach().requires_grad_(True)  # the graph must exist although no weight needs grad
        with acc.tap():
            logits = head(backbone(x))
        probs = torch.softmax(logits.detach().float(), dim=1)
        grads = list(logit_grads(probs, draws, label_passes))
        for i, gl in enumerate(grads):
            logits.backward(gl.to(logits.dtype), retain_graph=i < len(grads) - 1)
        acc.end_batch()
        if on_batch is not None:
            on_batch(x.shape[0])
    return acc.total.cpu().numpy()


class VariationalTap:
    """Local reparametrisation: each filter's weights get Gaussian noise of variance nu / precision."""

    def __init__(self, backbone: nn.Module, log_precision: torch.Tensor, nu: float, generator: torch.Generator):
        self.weights = conv_weights(backbone)
        sizes = [w.shape[0] for w in self.weights]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.log_precision = log_precision
        self.log_nu = math.log(nu)
        self.generator = generator

    def _handle(self, layer: int, call: ConvCall, mean: torch.Tensor) -> torch.Tensor:
        x = call.input
        lo, hi = self.offsets[layer], self.offsets[layer + 1]
        var_w = torch.exp(self.log_nu - self.log_precision[lo:hi]).view(-1, 1, 1, 1).expand_as(call.weight)
        var = F.conv2d(x * x, var_w.to(x.dtype), None, call.stride, call.padding, call.dilation, call.groups)
        eps = torch.randn(mean.shape, generator=self.generator, device=mean.device, dtype=mean.dtype)
        return mean + var.clamp_min(1e-30).sqrt() * eps

    def tap(self) -> FilterTap:
        return FilterTap(self.weights, self._handle)


def variational_precision(
    backbone: nn.Module,
    head: nn.Module,
    batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    prior: np.ndarray,
    epochs: int,
    lr: float,
    seed: int,
    nu: float,
    init: np.ndarray | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The robust estimator of sec. 3.1 / supp. 6, one precision per filter.

    With nu = beta / N (beta = 1: the ELBO) and P = nu * Lambda, minimises
    E_{w ~ N(w_hat, nu/P)}[mean CE] + nu * sum_k m_k/2 (t0_k/P_k - 1 + log(P_k/t0_k)),
    whose second-order optimum is P_k = mean_{w in k} F_w + t0_k: the Fisher plus
    the prior, in Fisher units, and exactly the prior when the loss is flat.
    `init` is the starting precision (default: the prior). Start near the answer:
    at a weak prior the weight noise is so large that the loss saturates and the
    gradient vanishes, so SGVB started there never leaves it.
    """
    device = next(iter(conv_weights(backbone))).device
    t0 = torch.as_tensor(prior, dtype=torch.float32, device=device)
    m = torch.as_tensor(weights_per_filter(backbone), dtype=torch.float32, device=device)
    start = t0 if init is None else torch.as_tensor(init, dtype=torch.float32, device=device)
    log_prec = torch.log(start).clone().requires_grad_(True)
    opt = Adam([([log_prec], 0.0)], lr=lr)
    gen = torch.Generator(device=device).manual_seed(seed)
    vt = VariationalTap(backbone, log_prec, nu, gen)
    for _ in range(epochs):
        for x, y in batches():
            with vt.tap():
                logits = head(backbone(x))
            ce = F.cross_entropy(logits.float(), y)
            ratio = torch.exp(torch.log(t0) - log_prec)  # t0 / Lambda
            kl = 0.5 * nu * (m * (ratio - 1.0 - torch.log(ratio))).sum()
            opt.zero_grad()
            (ce + kl).backward()
            opt.step()
            if on_batch is not None:
                on_batch(x.shape[0])
    return torch.exp(log_prec.detach()).double().cpu().numpy()


def weight_scale_prior(backbone: nn.Module, scale: float) -> np.ndarray:
    """t0: per layer, scale / mean(w^2), the isotropic prior precision lambda^2 of supp. 6.

    It depends only on the probe's weights, so every task embedded with the same
    probe shares the same trivial embedding: what the index needs to compare them.
    """
    parts = []
    for w in conv_weights(backbone):
        ms = float(w.detach().double().square().mean())
        lam2 = 1.0 / ms if ms > 0 and math.isfinite(ms) else 1.0
        parts.append(np.full(w.shape[0], scale * lam2))
    return np.concatenate(parts)
