"""The task-specific linear classifier, fitted on cached probe features.

Training on cached features instead of images makes the head almost free, so
the probe runs once per image. Minibatches are drawn uniformly between classes
with replacement (supplementary 4.1), which keeps unbalanced tasks from
collapsing to the majority class.
"""

from __future__ import annotations

import torch
from torch import nn

from taskindex.optim import Adam


def fit_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    *,
    seed: int = 0,
    epochs: int = 2,
    epoch_size: int = 10_000,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 5e-4,
) -> nn.Linear:
    """Multinomial logistic regression on standardised features, folded back into raw-feature weights.

    Two balanced epochs of Adam, as the paper trains the probe's classifier (supp. 4.2):
    a head trained to certainty has a Fisher dominated by a handful of images.
    """
    x = features.detach().float().cpu()
    y = labels.detach().long().cpu()
    mu = x.mean(0)
    sd = x.std(0, unbiased=False).clamp_min(1e-6)
    xs = (x - mu) / sd
    gen = torch.Generator().manual_seed(seed)
    w = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = Adam([([w, b], weight_decay)], lr=lr)
    # sample a class uniformly, then a member of that class uniformly
    members = [torch.nonzero(y == c).flatten() for c in range(n_classes)]
    counts = torch.tensor([len(m) for m in members])
    if (counts == 0).any():
        raise ValueError("every class needs at least one sample to fit the head")
    padded = torch.stack([m[torch.arange(int(counts.max())) % len(m)] for m in members])
    steps = max(1, epochs * epoch_size // batch_size)
    for _ in range(steps):
        cls = torch.randint(n_classes, (batch_size,), generator=gen)
        pos = (torch.rand(batch_size, generator=gen) * counts[cls]).long()
        idx = padded[cls, pos]
        loss = nn.functional.cross_entropy(xs[idx] @ w + b, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    head = nn.Linear(x.shape[1], n_classes)
    with torch.no_grad():
        w_raw = (w / sd[:, None]).T
        head.weight.copy_(w_raw)
        head.bias.copy_(b - w_raw @ mu)
    head.requires_grad_(False)
    return head.eval()
