"""Choose the neighbours selector's K and TAU on a development split of the benchmark's targets, report the
held-out split beside it, with the baselines a sceptic tries first.

    .venv/bin/python -m tools.experiments.neighbors_sweep [--json out.json]
    .venv/bin/python -m tools.experiments.neighbors_sweep --index BENCHMARK_INDEX --errors ERRORS_CSV --rows @0

Data: by default the shipped index (its task rows and 15 experts, each with its source task) and the shipped
error table (taskindex/package_data/expert_errors.csv: 43 targets x 15 experts, errors averaged over the
benchmark's 3 seeds); or the benchmark's own index and --errors-out table (--rows: the suffix of the index row
that embeds each target, "@0" for the first seed's training images). Leave-one-out as `evaluate_selection`: a target's own errors are never used for it, and the expert
trained on the target itself is never a candidate.

Choosing K, TAU and FALLBACK_D is judged by nested validation: the targets are halved at random SPLITS times;
each time the setting with the lowest error on one half (development) is scored on the other (held out).
The held-out column is the mean over the halvings, with its 10th-90th percentiles, the baselines scored on
the same halves. The library's defaults are the setting this procedure picks on all the targets.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

import taskindex as ti
from taskindex import distance
from taskindex.select import neighbors
from taskindex.shipped import EXPERT_ERRORS
from tools import harness

GRID_K = (1, 2, 3, 5, 8, 13, 42)
GRID_TAU = (0.01, 0.02, 0.05, 0.1)
GRID_D = (0.05, 0.1, 0.2, 0.3, 0.5)


def inputs(index, errors=EXPERT_ERRORS, rows: str = "") -> dict:
    """The error matrix, task vectors, asym scores, allowed experts and datasets of a benchmark: each target is
    the index row named target + rows."""
    table = pd.read_csv(errors)
    wide = table.pivot(index="task", columns="model", values="error")
    tasks, models = list(wide.index), list(wide.columns)
    meta = index.to_pandas().set_index("name")
    sources = [meta.loc[m, "source_task"] for m in models]
    allowed = np.array([[s != t for s in sources] for t in tasks])
    tv, mv = index.vectors([t + rows for t in tasks]), index.vectors(models)
    asym = np.stack([distance.asym_to_target(mv, tv[i], index.alpha, index.prior) for i in range(len(tasks))])
    return {"tasks": tasks, "models": models, "err": wide.to_numpy(np.float64), "allowed": allowed,
            "d": distance.pairwise(tv), "asym": asym, "dataset": [meta.loc[t + rows, "dataset"] for t in tasks]}


def picks(data: dict, method: str, k: int = neighbors.K, tau: float = neighbors.TAU,
          fallback_d: float = neighbors.FALLBACK_D) -> np.ndarray:
    """Per target, the error of the expert `method` picks among the allowed ones."""
    chosen = picked_experts(data, method, k, tau, fallback_d)
    return data["err"][np.arange(len(chosen)), chosen]


def picked_experts(data: dict, method: str, k: int = neighbors.K, tau: float = neighbors.TAU,
                   fallback_d: float = neighbors.FALLBACK_D) -> np.ndarray:
    """Per target, the expert (column) `method` picks among the allowed ones."""
    err, n = data["err"], len(data["tasks"])
    out = np.empty(n, np.int64)
    for i in range(n):
        others = np.array([t for t in range(n) if t != i])
        if method == "dataset":
            others = np.array([t for t in others if data["dataset"][t] == data["dataset"][i]]) if any(
                data["dataset"][t] == data["dataset"][i] for t in others) else others
        if method == "neighbors":
            score = neighbors.scores(data["d"][i, others], err[others], data["asym"][i], k, tau, fallback_d)[0]
        elif method in ("static", "dataset"):
            score = neighbors.scores(np.zeros(len(others)), err[others], k=len(others), tau=float("inf"))[0]
        elif method == "asym":
            score = data["asym"][i]
        else:
            score = err[i]  # optimal
        score = np.where(data["allowed"][i], score, np.inf)
        out[i] = int(np.argmin(score))
    return out


SPLITS = 50


def relative(picked: np.ndarray, optimal: np.ndarray, rows: np.ndarray) -> float:
    return float(picked[rows].mean() / optimal[rows].mean() - 1)


def nested(picked: dict, baselines: dict, optimal: np.ndarray, splits: int) -> dict:
    """Per halving: the grid's best setting on the development half, and every selector on the other half."""
    n = len(optimal)
    held = {name: [] for name in ("neighbors, chosen on the development half", *baselines)}
    for seed in range(splits):
        order = np.random.default_rng(seed).permutation(n)
        dev, other = order[: n // 2], order[n // 2:]
        best = min(picked, key=lambda kt: relative(picked[kt], optimal, dev))
        held["neighbors, chosen on the development half"].append(relative(picked[best], optimal, other))
        for name, errs in baselines.items():
            held[name].append(relative(errs, optimal, other))
    return held


def cost_per_query(index, rounds: int = 3) -> dict:
    """Median seconds of select_model given each target's embedding, per way of ranking, timed in turns."""
    embeddings = [index.get(t)[0] for t in index.results()["task"].unique()]
    calls = {by: (lambda r, by=by: [harness.timed(index.select_model, e, k=5, by=by)[1] for e in embeddings])
             for by in ("asym", "model2vec", "neighbors")}
    return {by: float(np.median(np.concatenate(runs))) for by, runs in harness.alternate(calls, rounds, True).items()}


def main(argv: list[str] | None = None) -> int:
    ap = harness.parser("tools.experiments.neighbors_sweep", __doc__)
    ap.add_argument("--splits", type=int, default=SPLITS, help="random halvings of the targets")
    ap.add_argument("--json", default=None, help="write the grid and the table here")
    ap.add_argument("--timing", action="store_true", help="also time select_model per way of ranking")
    ap.add_argument("--index", default=None, help="another benchmark's index (default: the shipped one)")
    ap.add_argument("--errors", default=EXPERT_ERRORS, help="its error table: task, model, error")
    ap.add_argument("--rows", default="", help="the suffix of the index row that embeds each target")
    args = ap.parse_args(argv)
    with (ti.default_index() if args.index is None else ti.TaskIndex.open(args.index, readonly=True)) as index:
        data = inputs(index, args.errors, args.rows)
        cost = cost_per_query(index) if args.timing else None
    optimal = picks(data, "optimal")
    picked = {(k, tau, d0): picks(data, "neighbors", k, tau, d0) for k in GRID_K for tau in GRID_TAU for d0 in GRID_D}
    everyone = np.arange(len(optimal))
    final = min(picked, key=lambda kt: (relative(picked[kt], optimal, everyone), kt))
    baselines = {"asym (d_asym)": picks(data, "asym"), "static prior (best on average)": picks(data, "static"),
                 "same-dataset prior (needs a dataset label)": picks(data, "dataset"),
                 "neighbors, library defaults (picked on all targets)": picks(data, "neighbors"),
                 "neighbors, defaults without fallback": picks(data, "neighbors", fallback_d=float("inf"))}
    held = nested(picked, baselines, optimal, args.splits)
    print(f"{len(optimal)} targets x {len(data['models'])} experts, {args.splits} random halvings")
    print(f"picked on all targets: k={final[0]}, tau={final[1]:g}, fallback_d={final[2]:g} (library: k={neighbors.K}, "
          f"tau={neighbors.TAU:g}, fallback_d={neighbors.FALLBACK_D:g})")
    print(f"| selector | held-out half, mean | 10th-90th pct | all {len(optimal)} targets |\n|---|---:|---:|---:|")
    table = {}
    for name, values in held.items():
        whole = relative(baselines[name], optimal, everyone) if name in baselines else None  # chosen per half
        cells = (float(np.mean(values)), *np.percentile(values, [10, 90]), whole)
        table[name] = cells
        print(f"| {name} | {cells[0]:+.1%} | {cells[1]:+.1%} to {cells[2]:+.1%} | "
              f"{'-' if whole is None else f'{whole:+.1%}'} |")
    if cost:
        print(f"select_model given the target's embedding, median of {3 * len(optimal)} calls each, in turns "
              f"(load {harness.load_text()}): " + ", ".join(f"{by} {sec * 1000:.2f} ms" for by, sec in cost.items()))
    if args.json:
        harness.write_report(args.json, json.dumps({"final": final, "table": table, "cost": cost, "grid": {
            f"{k},{tau},{d0}": relative(v, optimal, everyone) for (k, tau, d0), v in picked.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
