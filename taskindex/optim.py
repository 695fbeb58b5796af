"""Adam and AdamW without torch.optim's Optimizer class, whose first use imports torch._dynamo: a second of
start-up in every process that embeds a task or fits MODEL2VEC. Each step is torch's own functional Adam, so
the parameters move exactly as under torch.optim.Adam / AdamW."""

from __future__ import annotations

import torch
from torch.optim.adam import adam


class Adam:
    """groups: (parameters, weight_decay) pairs; decoupled: AdamW's decay, else Adam's L2 term."""

    def __init__(self, groups, lr: float, decoupled: bool = False, betas=(0.9, 0.999), eps: float = 1e-8):
        self.groups = [(list(params), float(decay)) for params, decay in groups]
        self.lr, self.decoupled, self.betas, self.eps = lr, decoupled, betas, eps
        self.state = {id(p): (torch.zeros_like(p), torch.zeros_like(p), torch.tensor(0.0))
                      for params, _ in self.groups for p in params}

    def zero_grad(self) -> None:
        for params, _ in self.groups:
            for p in params:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for params, decay in self.groups:
            live = [p for p in params if p.grad is not None]
            if not live:
                continue
            avgs, sqs, steps = zip(*(self.state[id(p)] for p in live))
            adam(live, [p.grad for p in live], list(avgs), list(sqs), [], list(steps),
                 decoupled_weight_decay=self.decoupled, amsgrad=False, beta1=self.betas[0], beta2=self.betas[1],
                 lr=self.lr, weight_decay=decay, eps=self.eps, maximize=False)
