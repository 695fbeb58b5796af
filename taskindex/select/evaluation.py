"""Expert selection (paper sec. 3.3, 3.4, 4.2): rank model rows for a task, and judge the ranking.

A model row's vector is the embedding of the task it was trained on (the prior t0 for a black box).
It is ranked by d_asym(source -> query) = d_sym - alpha c(source); once MODEL2VEC is fitted, by the
same distance from m_j = v_j exp(theta_j). Only a few hundred models ever compete, so ranking is
exact and brute force, no candidate search. `evaluate` is the paper's leave-one-out test: a
task's own errors never train the fit that picks its model, and a model trained on the task
itself is never picked for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from taskindex import distance
from taskindex.select import model2vec, neighbors
from taskindex.errors import TaskIndexError


def fitted_vectors(vectors: np.ndarray, names: list[str], ids: np.ndarray, fit: dict | None,
                   theta: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """m_j for the models a fit covers (same name and row id as when fitted), v_j for the rest; and which."""
    out = np.asarray(vectors, np.float64).copy()
    used = np.zeros(len(names), dtype=bool)
    if fit is None or theta is None:
        return out, used
    where = {(n, int(i)): k for k, (n, i) in enumerate(zip(fit["models"], fit["ids"]))}
    for j, key in enumerate(zip(names, (int(i) for i in ids))):
        k = where.get(key)
        if k is not None:
            out[j] *= np.exp(theta[k].astype(np.float64))
            used[j] = True
    return out, used


METHODS = ("asym", "model2vec", "static", "neighbors")


@dataclass
class SelectionReport:
    """Leave-one-out expert selection on an errors table: per task, what each method picked and its error."""

    per_task: pd.DataFrame
    summary: dict
    scores: dict = field(default_factory=dict)  # method -> (tasks, models) scores, NaN where excluded

    def to_dict(self) -> dict:
        return {"summary": self.summary, "per_task": self.per_task.to_dict(orient="records")}


def evaluate(tasks: list[str], models: list[str], err: np.ndarray, task_vectors: np.ndarray,
             model_vectors: np.ndarray, prior: np.ndarray, alpha: float, source_tasks: list[str | None],
             seed: int = 0, fit_options: dict | None = None, exclude: dict | None = None,
             progress: bool | None = None, neighbors_kt: tuple = (neighbors.K, neighbors.TAU)) -> SelectionReport:
    """Leave-one-out: for each task, d_asym, a MODEL2VEC fit on the other tasks, the best expert on average over
    the other tasks (static) and the neighbours selector (its k and tau) pick among the allowed models.

    A model is never picked for the task it was trained on (its source_task), nor for a task that
    `exclude` maps to it ({task: [models]}: e.g. experts trained on other images of the same classes).
    """
    from tqdm.auto import tqdm

    n, k = err.shape
    sc = {m: np.full((n, k), np.nan) for m in METHODS}
    d = distance.pairwise(task_vectors)
    records = []
    for i in tqdm(range(n), desc="leave-one-out", disable=progress is False or n < 2, leave=False):
        banned = set((exclude or {}).get(tasks[i], ()))
        allowed = np.array([s != tasks[i] and m not in banned for s, m in zip(source_tasks, models)])
        if not allowed.any():
            raise TaskIndexError(f"every model is excluded for task {tasks[i]!r}: leave at least one to choose")
        others = np.array([t for t in range(n) if t != i])
        sc["asym"][i, allowed] = distance.asym_to_target(model_vectors[allowed], task_vectors[i], alpha, prior)
        f = model2vec.fit(task_vectors[others], model_vectors, err[others], prior, alpha, models, seed=seed,
                          **(fit_options or {}))
        m = model_vectors.astype(np.float64) * np.exp(f.theta.astype(np.float64))
        sc["model2vec"][i, allowed] = distance.asym_to_target(m[allowed], task_vectors[i], alpha, prior)
        sc["static"][i, allowed] = neighbors.scores(np.zeros(n - 1), err[others], k=n, tau=np.inf)[0][allowed]
        sc["neighbors"][i, allowed] = neighbors.scores(d[i, others], err[others], sc["asym"][i], *neighbors_kt
                                                       )[0][allowed]
        row = {"task": tasks[i], "optimal_model": models[int(np.nanargmin(np.where(allowed, err[i], np.nan)))],
               "optimal_error": float(err[i, allowed].min()), "chance_error": float(err[i, allowed].mean())}
        for method, s in sc.items():
            j = int(np.nanargmin(s[i]))
            row[f"{method}_model"], row[f"{method}_error"] = models[j], float(err[i, j])
            row[f"{method}_best"] = bool(err[i, j] <= row["optimal_error"] + 1e-12)  # ties with the best count
        records.append(row)
    per_task = pd.DataFrame(records)
    opt = per_task["optimal_error"].mean()
    summary = {"tasks": n, "models": k, "alpha": alpha, "optimal_error": float(opt)}
    for method in ("chance", *METHODS):
        mean = float(per_task[f"{method}_error"].mean())
        summary[f"{method}_error"] = mean
        summary[f"{method}_relative_increase"] = float(mean / opt - 1) if opt > 0 else float("nan")
        if method != "chance":
            summary[f"{method}_top1"] = float(per_task[f"{method}_best"].mean())
    return SelectionReport(per_task, summary, sc)
