"""The neighbours selector on the expert-selection benchmark's per-seed errors, with its setting chosen on a
development half of the targets and scored on the other half, LogME on the same halves.

    .venv/bin/python -m tools.experiments.neighbors_per_seed [--cache-dir .cache/meta_benchmark]

Reads what `python -m tools.experiments.meta_benchmark` left in its cache (the error table with LogME beside
each error, and its index: every seed's targets and the experts). Per seed, each target's ground truth is its
own errors under that seed's training images and its neighbours' results are the other targets' errors of
the same seed; the expert trained on the target is never a candidate. Nested validation as in
tools.experiments.neighbors_sweep: SPLITS random halvings, the grid's best setting on one half, scored on the
other.
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pandas as pd

from taskindex import TaskIndex, distance
from taskindex.select import neighbors
from tools import harness
from tools.experiments import expert_zoo, meta_benchmark
from tools.experiments.neighbors_sweep import GRID_D, GRID_K, GRID_TAU, SPLITS


def wide(table: pd.DataFrame, seed: int, column: str, names: list[str], models: list[str]) -> np.ndarray:
    rows = table[table["seed"] == seed]
    return rows.pivot(index="task", columns="model", values=column).reindex(index=names, columns=models).to_numpy()


def grid_picks(idx: TaskIndex, err: np.ndarray, allowed: np.ndarray, names: list[str], models: list[str],
               seed: int) -> dict:
    """(k, tau, fallback_d) -> the error of each target's pick, leave-one-out over the seed's targets."""
    tv, mv = idx.vectors([f"{t}@{seed}" for t in names]), idx.vectors(models)
    d = distance.pairwise(tv)
    asym = np.stack([distance.asym_to_target(mv, v, idx.alpha, idx.prior) for v in tv])
    n, out = len(names), {}
    for setting in [(k, t, f) for k in GRID_K for t in GRID_TAU for f in GRID_D]:
        picked = []
        for i in range(n):
            others = np.array([j for j in range(n) if j != i])
            score = np.where(allowed[i], neighbors.scores(d[i, others], err[others], asym[i], *setting)[0], np.inf)
            picked.append(err[i, int(np.argmin(score))])
        out[setting] = np.array(picked)
    return out


def relative(picks: dict, optimal: dict, rows: np.ndarray) -> float:
    """Mean over seeds of the relative error increase over the best allowed expert, on `rows`."""
    return float(np.mean([picks[s][rows].mean() / optimal[s][rows].mean() - 1 for s in picks]))


def main(argv: list[str] | None = None) -> int:
    ap = harness.parser("tools.experiments.neighbors_per_seed", __doc__)
    ap.add_argument("--cache-dir", default=str(expert_zoo.CACHE_DIR))
    ap.add_argument("--splits", type=int, default=SPLITS)
    args = ap.parse_args(argv)
    table = pd.read_parquet(sorted(glob.glob(f"{args.cache_dir}/errors-*.parquet"))[-1])
    specs = {s.name: s for s in expert_zoo.experts()}
    models, names, seeds = sorted(specs), sorted(table["task"].unique()), sorted(table["seed"].unique())
    allowed = np.array([[specs[m].sample != t for m in models] for t in names])
    path = meta_benchmark.index_path(Path(args.cache_dir), "trimmed:0.1", 64, False)
    by_setting, optimal, logme = {}, {}, {}
    with TaskIndex.open(path, readonly=True) as idx:
        for s in seeds:
            err = wide(table, s, "error", names, models)
            for setting, picked in grid_picks(idx, err, allowed, names, models, s).items():
                by_setting.setdefault(setting, {})[s] = picked
            optimal[s] = np.where(allowed, err, np.inf).min(axis=1)
            best = np.argmax(np.where(allowed, wide(table, s, "logme", names, models), -np.inf), axis=1)
            logme[s] = err[np.arange(len(names)), best]
    every = np.arange(len(names))
    default = (neighbors.K, neighbors.TAU, neighbors.FALLBACK_D)
    print(f"{len(names)} targets x {len(models)} experts x {len(seeds)} seeds; all targets: neighbours with the "
          f"library's setting {default} {relative(by_setting[default], optimal, every):+.1%}, "
          f"LogME {relative(logme, optimal, every):+.1%}")
    held, held_logme = [], []
    for r in range(args.splits):
        order = np.random.default_rng(r).permutation(len(names))
        dev, other = order[: len(names) // 2], order[len(names) // 2:]
        chosen = min(by_setting, key=lambda key: relative(by_setting[key], optimal, dev))
        held.append(relative(by_setting[chosen], optimal, other))
        held_logme.append(relative(logme, optimal, other))
    held, held_logme = np.array(held), np.array(held_logme)
    print(f"{args.splits} halvings, held-out half: neighbours chosen on the other half {held.mean():+.1%} "
          f"(10th-90th pct {np.percentile(held, 10):+.1%} to {np.percentile(held, 90):+.1%}), LogME "
          f"{held_logme.mean():+.1%}; ratio of the means {held.mean() / held_logme.mean():.2f}; "
          f"halvings where the neighbours are at most 0.8x LogME: {np.mean(held <= 0.8 * held_logme):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
