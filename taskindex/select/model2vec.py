"""MODEL2VEC (paper sec. 3.4, supp. 4.3): model embeddings learned from observed test errors.

Each model j gets m_j = F_j + b_j, with b_j chosen so that softmax_j(-gamma d_asym(m_j -> t)) predicts
which models did well on task t. The bias is parametrised multiplicatively, m_j = v_j exp(theta_j)
(v_j = the row's stored Fisher + t0), so m_j stays positive whatever the optimiser does, and
theta = 0 is exactly asymmetric TASK2VEC: the fit starts from it and early stopping on held-out
tasks decides how far to move.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from taskindex import validation
from taskindex.errors import TaskIndexError
from taskindex.select import results

ALPHA_S = 20.0        # soft-label temperature of supp. 4.3
LR = 0.05             # Adam, as supp. 4.3
WEIGHT_DECAY = 5e-4
HOLDOUT = 0.2         # share of tasks held out for early stopping
MIN_TASKS = 4         # 3 to fit, 1 to stop on
COLUMNS = ("task", "model", "error")
OPTIONS = ("alpha_s", "lr", "weight_decay", "max_steps", "patience", "holdout", "threads")


def check_options(options: dict) -> None:
    """Refuse fit options that `fit` does not take, naming the ones it does."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TaskIndexError(f"unknown MODEL2VEC option(s) {', '.join(unknown)}: use {', '.join(OPTIONS)}")


def read_errors(errors) -> pd.DataFrame:
    """A table of observed errors (task, model, error): a DataFrame, or a .csv / .parquet file."""
    return results.read_table(errors)[list(COLUMNS)]


def error_matrix(table: pd.DataFrame, tasks, models) -> tuple[list[str], list[str], np.ndarray]:
    """Check an errors table against the index's rows; returns (tasks, models, errors[task, model])."""
    table = results.check(table, tasks, models)
    task_names = sorted(set(table["task"]))
    model_names = sorted(set(table["model"]))
    if len(model_names) < 2:
        raise TaskIndexError(f"errors table has one model ({model_names[0] if model_names else 'none'}): "
                             "choosing between models needs errors of at least two")
    if len(task_names) < MIN_TASKS:
        raise TaskIndexError(f"errors table has {len(task_names)} task(s): MODEL2VEC needs at least {MIN_TASKS} "
                             "(some to fit on, one to stop early on)")
    wide = table.pivot(index="task", columns="model", values="error")
    wide = wide.reindex(index=task_names, columns=model_names)
    holes = np.argwhere(wide.isna().to_numpy())
    if len(holes):
        t, m = holes[0]
        raise TaskIndexError(f"errors table has no error for ({task_names[t]!r}, {model_names[m]!r}) and "
                             f"{len(holes) - 1} other pair(s): every task needs an error for every model the table names")
    return task_names, model_names, wide.to_numpy(np.float64)


def soft_labels(err: np.ndarray, alpha_s: float = ALPHA_S) -> np.ndarray:
    """softmax(-alpha_s (err - mean) / std) per task; tasks where all models tie get uniform labels."""
    sd = err.std(axis=1, keepdims=True)
    z = np.where(sd > 0, (err - err.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1.0), 0.0)
    logits = -alpha_s * z
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def _dsym_terms(r):
    """d_sym = 1 - cos(r, 1 - r) from r = m/(m+t), with dcos/ds1 and dcos/ds2 (s1 = sum r, s2 = sum r^2)."""
    s1, s2 = r.sum(-1), (r * r).sum(-1)
    suu = r.shape[-1] - 2 * s1 + s2
    p = (s2 * suu).clamp_min(1e-30)
    root = p.sqrt()
    c1 = 1 / root + (s1 - s2) * s2 / (p * root)
    c2 = -1 / root - (s1 - s2) * (suu + s2) / (2 * p * root)
    return 1 - (s1 - s2) / root, c1, c2


class _Asym:
    """d_asym(m_j -> t_i) for log-space vectors, and its gradient in log m, without autograd.

    r = m/(m+t) = sigmoid(log m - log t), formed one model at a time so each (tasks, filters) block
    stays in cache, and kept for the gradient at the same point: 4x faster than autograd.
    """

    def __init__(self, log_tasks, log_prior, alpha: float):
        self.lt, self.lp, self.alpha = log_tasks, log_prior[None, :], alpha
        self._r = None

    def __call__(self, log_models):
        import torch

        out = torch.empty(len(self.lt), len(log_models), dtype=self.lt.dtype)
        self._r = []
        for j, a in enumerate(log_models):
            r, r0 = torch.sigmoid(a[None, :] - self.lt), torch.sigmoid(a[None, :] - self.lp)
            out[:, j] = _dsym_terms(r)[0] - self.alpha * _dsym_terms(r0)[0]
            self._r.append((r, r0))
        return out

    def grad(self, rows, g):
        """dL/d(log m_j) at the last call's point, from g = dL/d d_asym of tasks `rows` (len(rows), models)."""
        import torch

        out = torch.empty(len(self._r), self.lt.shape[1], dtype=self.lt.dtype)
        for j, (r_all, r0) in enumerate(self._r):
            acc = torch.zeros(self.lt.shape[1], dtype=self.lt.dtype)
            for r, weight in ((r_all[rows], g[:, j]), (r0, -self.alpha * g[:, j].sum().reshape(1))):
                _, c1, c2 = _dsym_terms(r)
                acc -= (r * (1 - r) * ((weight * c1)[:, None] + 2 * (weight * c2)[:, None] * r)).sum(0)
            out[j] = acc
        return out


@dataclass
class Fit:
    """A learned MODEL2VEC: per-model log-scales theta (m_j = v_j exp(theta_j)), gamma and a summary."""

    models: list[str]
    theta: np.ndarray
    gamma: float
    alpha: float
    summary: dict = field(default_factory=dict)


def _loss(d, target, log_gamma):
    """Soft-label cross-entropy of softmax(-gamma d), and its gradients in d and log gamma."""
    import torch

    z = -log_gamma.exp() * d
    logp = torch.log_softmax(z, dim=1)
    loss = -(target * logp).sum(1).mean()
    dz = (logp.exp() - target) / len(d)
    return float(loss), -log_gamma.exp() * dz, (dz * z).sum()


def fit(*args, threads: int | None = None, **kwargs) -> Fit:
    """`_fit` on `threads` torch threads; by default embed's rule, one per core that other processes leave idle:
    the fit's many small ops spin-wait on a busy machine when every core holds a thread."""
    import torch

    from taskindex.embedding.pipeline import thread_rule

    validation.integer(threads, "threads", none="one per idle core")
    with thread_rule(torch.device("cpu"), threads):
        return _fit(*args, **kwargs)


def _fit(task_vectors: np.ndarray, model_vectors: np.ndarray, err: np.ndarray, prior: np.ndarray, alpha: float,
         models: list[str], *, alpha_s: float = ALPHA_S, lr: float = LR, weight_decay: float = WEIGHT_DECAY,
         max_steps: int = 300, patience: int = 30, holdout: float = HOLDOUT, seed: int = 0) -> Fit:
    """Learn theta and gamma by soft-label cross-entropy, full-batch Adam, early stopping on held-out tasks."""
    import torch

    from taskindex.optim import Adam

    for key, value, ok in (("alpha_s", alpha_s, alpha_s > 0), ("lr", lr, lr > 0), ("weight_decay", weight_decay,
                           weight_decay >= 0), ("max_steps", max_steps, max_steps >= 1),
                           ("patience", patience, patience >= 1), ("holdout", holdout, 0 < holdout < 1)):
        if not ok:
            raise TaskIndexError(f"MODEL2VEC option {key}={value!r} is out of range: alpha_s, lr > 0; "
                                 "weight_decay >= 0; max_steps, patience >= 1; 0 < holdout < 1")
    start = time.perf_counter()
    n = len(task_vectors)
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(holdout * n)))
    if n - n_val < 2:
        raise TaskIndexError(f"holdout={holdout} leaves {n - n_val} of {n} tasks to fit on: lower it (at least 2)")
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    asym = _Asym(torch.as_tensor(np.log(task_vectors), dtype=torch.float32),
                 torch.as_tensor(np.log(prior), dtype=torch.float32), alpha)
    lv = torch.as_tensor(np.log(model_vectors), dtype=torch.float32)
    target = torch.as_tensor(soft_labels(err, alpha_s), dtype=torch.float32)
    d0 = asym(lv)
    gamma0 = _initial_gamma(d0[train].double().numpy(), target[train].double().numpy())
    theta = torch.zeros_like(lv)
    log_gamma = torch.tensor(float(np.log(gamma0)))
    theta.grad, log_gamma.grad = torch.zeros_like(theta), torch.zeros(())
    # decoupled decay (AdamW): Adam's L2 term would pin theta at 0 wherever the loss gradient is small
    opt = Adam([([theta], weight_decay), ([log_gamma], 0.0)], lr=lr, decoupled=True)
    first_train = _loss(d0[train], target[train], log_gamma)[0]
    first_val = _loss(d0[val], target[val], log_gamma)[0]
    best = (first_val, 0, theta.clone(), float(log_gamma))
    d, step = d0, 0
    for step in range(1, max_steps + 1):
        _, g_d, g_lg = _loss(d[train], target[train], log_gamma)
        theta.grad.copy_(asym.grad(torch.as_tensor(train), g_d))
        log_gamma.grad.copy_(g_lg)
        opt.step()
        d = asym(lv + theta)
        v = _loss(d[val], target[val], log_gamma)[0]
        if v < best[0] - 1e-6:
            best = (v, step, theta.clone(), float(log_gamma))
        elif step - best[1] >= patience:
            break
    val_loss, best_step, theta, lg = best
    d_fit = asym(lv + theta)
    summary = {
        "tasks": int(n), "models": len(models), "held_out_tasks": int(n_val), "steps": int(step),
        "best_step": int(best_step), "initial_train_loss": first_train, "initial_val_loss": first_val,
        "train_loss": _loss(d_fit[train], target[train], torch.tensor(lg))[0], "val_loss": val_loss,
        "gamma": float(np.exp(lg)), "top1_before": top1(d0.numpy(), err), "top1_after": top1(d_fit.numpy(), err),
        "held_out_top1_before": top1(d0.numpy()[val], err[val]),
        "held_out_top1_after": top1(d_fit.numpy()[val], err[val]),
        "alpha_s": alpha_s, "lr": lr, "weight_decay": weight_decay, "seed": seed,
        "improved": best_step > 0, "seconds": round(time.perf_counter() - start, 3),
    }
    return Fit(list(models), theta.numpy().astype(np.float32), float(np.exp(lg)), float(alpha), summary)


def improved(summary: dict) -> bool:
    """Whether a fit lowered its held-out loss: one that did not (best step 0) holds theta = 0, d_asym itself."""
    return summary["best_step"] > 0


def top1(scores: np.ndarray, err: np.ndarray) -> float:
    """Share of tasks whose lowest-scored model has the lowest error (a tie with the best counts as a hit)."""
    picked = err[np.arange(len(err)), np.asarray(scores).argmin(1)]
    return float(np.mean(picked <= err.min(1) + 1e-12))


def _initial_gamma(d: np.ndarray, target: np.ndarray) -> float:
    """The gamma that fits the soft labels best with theta = 0 (a 1-D grid): the fit starts at d_asym's optimum.

    Floored where softmax(-gamma d) still tells models apart (gamma * spread of d = 1): where d_asym says
    nothing, the best gamma is ~0, and theta's gradient, proportional to gamma, would vanish with it.
    """
    spread = float(d.std(axis=1).mean())
    floor = 1.0 / spread if spread > 0 else 1.0
    best = (np.inf, floor)
    for g in np.logspace(-1, 3, 81):
        z = -g * d
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        loss = -(target * logp).sum(1).mean()
        if loss < best[0]:
            best = (loss, float(g))
    return max(best[1], floor)
