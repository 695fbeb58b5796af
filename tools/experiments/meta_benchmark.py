"""The paper's Table 1 (model selection) on images that install offline, with LogME beside it.

A zoo of EfficientNet-Lite0 experts fine-tuned on Fashion-MNIST, MNIST and digits tasks (tools.experiments.expert_zoo),
the ImageNet network as the generic expert, and every named sample task as a target on images no expert saw.
Ground truth: the test error of a linear classifier on each expert's frozen features. Each selection method
picks one expert per target, never one fine-tuned on the target's own classes (the paper's leave-one-out);
MODEL2VEC is fitted leave-one-out, never on the target's own row. Reported: mean error of the best expert
(Optimal), the relative error increase of each method, the rank correlation of its scores with the true
errors, and its wall time per query.

    python -m tools.experiments.meta_benchmark            # 14 experts + ImageNet, 43 targets, 3 seeds
    python -m tools.experiments.meta_benchmark --quick    # a minute: 2 tiny experts, 4 targets (a test runs it)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from taskindex import Embedding, TaskIndex, embed
from taskindex.distance import one_to_many
from taskindex.embedding.estimators import DEFAULT_ESTIMATOR, estimator_id, parse_estimator
from taskindex.select.noise import indistinct_targets, standard_error
from tools import harness
from tools.experiments import expert_zoo, selection_cost
from tools.experiments.finetune import PROBE, imagenet_file

SOURCE_PER_CLASS = 100  # images per class of an expert's source task that TASK2VEC sees (as the shipped index)
METHODS = ("chance", "imagenet", "task2vec", "asym", "model2vec", "static", "same_dataset", "neighbors",
           "neighbors_mean", "neighbors_logme", "logme", "floor")
LABELS = {"chance": "Chance", "imagenet": "ImageNet", "task2vec": "TASK2VEC", "asym": "Asym. TASK2VEC",
          "model2vec": "MODEL2VEC", "static": "best on average", "same_dataset": "same-dataset prior",
          "neighbors": "neighbours", "neighbors_mean": "neighbours, results over seeds",
          "neighbors_logme": "neighbours + LogME@3", "logme": "LogME", "floor": "another seed's errors"}
SHORTLIST = 3  # experts LogME checks after the neighbours (select_model(..., verify="logme", shortlist=3))


def _embedding(root: Path, idx: TaskIndex, task, name: str) -> Embedding:
    """The task's embedding in the index's space, cached as an .emb file under root (checked against the space)."""
    cache = root / "embeddings" / f"{idx.space['estimator'].replace(':', '_')}-{idx.space['image_size']}"
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{name}.emb"
    if path.exists():
        emb = Embedding.load(path)
        if emb.space == {k: idx.space.get(k) for k in emb.space}:
            return emb
    emb = embed(task, idx.probe(), progress=False, **idx.embed_options())
    emb.save(path)
    return emb


def expert_rows(root: Path, idx: TaskIndex, quick: bool = False, progress: bool = False,
                workers: int = 1) -> list[tuple]:
    """(name, embedding of its source task or None, metadata) per expert, in the index's space.

    The experts' weights are trained (or found in the cache) first: a row names only what exists.
    """
    from tqdm.auto import tqdm

    weights = expert_zoo.train_experts(root, idx.space["image_size"], quick, progress, workers)
    rows = []
    for s in tqdm(expert_zoo.experts(quick), desc="expert sources", disable=not progress):
        meta = {"strength": s.strength, "dataset": s.dataset, "weights": weights.get(s.name) or "imagenet",
                "architecture": PROBE, "weights_file": weights.get(s.name) or imagenet_file(),  # verify="logme"
                "image_size": idx.space["image_size"],
                "source_task": s.sample or "imagenet", "source_per_class": s.per_class}
        per_class = min(s.per_class, SOURCE_PER_CLASS)
        emb = None if s.sample is None else _embedding(
            root, idx, expert_zoo.source_task(s, per_class=per_class), f"source_{s.name}_{per_class}")
        rows.append((s.name, emb, meta))
    return rows


def index_path(root: Path, estimator: str, image_size: int, quick: bool) -> Path:
    return root / f"index-{estimator.replace(':', '_')}-{image_size}{'-quick' if quick else ''}"


def build_index(root: Path, estimator: str, image_size: int, quick: bool, seeds, progress: bool):
    """A fresh index: expert source tasks, the experts as model rows, every seed's targets as task rows."""
    from tqdm.auto import tqdm

    name, trim = parse_estimator(estimator)
    path = index_path(root, estimator, image_size, quick)
    shutil.rmtree(path, ignore_errors=True)
    idx = TaskIndex.create(path, probe="efficientnet_lite0", image_size=image_size, estimator=name,
                           trim=trim if name != "mean" else None)
    experts = expert_rows(root, idx, quick, progress)
    items = []
    jobs = [(t, seed) for seed in seeds for t in expert_zoo.targets(seed, quick)]
    for t, seed in tqdm(jobs, desc=f"embed targets ({estimator})", disable=not progress):
        emb = _embedding(root, idx, t.train, f"{t.name}_s{seed}")
        items.append((f"{t.name}@{seed}", emb, "task", {"target": t.name, "seed": int(seed), "dataset": t.dataset}))
    idx.add_many(items)
    for model, emb, meta in experts:  # black boxes (ImageNet) sit at t0; the others at their source task
        idx.add_model(model, emb, metadata=meta)
    return idx


def _rank_stats(err: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """Spearman and weighted Kendall tau between true errors and a score (both: lower is better)."""
    from scipy import stats

    if np.ptp(err) == 0 or np.ptp(score) == 0:
        return float("nan"), float("nan")
    return float(stats.spearmanr(err, score)[0]), float(stats.weightedtau(-err, -score)[0])


def evaluate(idx: TaskIndex, table: pd.DataFrame, seed: int, quick: bool, progress: bool) -> dict:
    """One seed: every method's pick, error and rank correlation per target."""
    specs = {s.name: s for s in expert_zoo.experts(quick)}
    rows = table[table["seed"] == seed].assign(task=lambda d: d["task"] + f"@{seed}")
    models = sorted(specs)
    tasks = sorted(rows["task"].unique())
    wide = rows.pivot(index="task", columns="model", values="error").reindex(index=tasks, columns=models)
    err = wide.to_numpy()
    target_of = {t: t.rsplit("@", 1)[0] for t in tasks}
    # never an expert fine-tuned on the target's own classes (other images of the same task)
    exclude = {t: [m for m in models if specs[m].sample == target_of[t]] for t in tasks}
    start = time.perf_counter()
    report = idx.evaluate_selection(rows[["task", "model", "error"]], seed=seed, exclude=exclude, progress=progress)
    loo_seconds = time.perf_counter() - start
    per_task = report.per_task.set_index("task").reindex(tasks)
    vectors = idx.vectors(models)
    logme = rows.pivot(index="task", columns="model", values="logme").reindex(index=tasks, columns=models).to_numpy()
    other = _other_seed_errors(table, seed, tasks, models, target_of)
    prior = _priors(table, seed, tasks, models, target_of, idx)
    out = {m: {"error": [], "spearman": [], "wtau": []} for m in METHODS}
    optimal = []
    for i, t in enumerate(tasks):
        allowed = np.array([m not in exclude[t] for m in models])
        e = err[i, allowed]
        optimal.append(e.min())
        q = idx.get(t)[0]
        candidates = {
            "task2vec": one_to_many(q.vector, vectors[allowed]),
            "asym": report.scores["asym"][i, allowed],
            "model2vec": report.scores["model2vec"][i, allowed],
            "static": report.scores["static"][i, allowed],  # the best expert on average over the other targets
            "neighbors": report.scores["neighbors"][i, allowed],  # by the results of the nearest other targets
            "neighbors_mean": prior["neighbors_mean"][i, allowed],
            "neighbors_logme": _shortlisted(report.scores["neighbors"][i, allowed], logme[i, allowed]),
            "logme": -logme[i, allowed],
            "same_dataset": prior["same_dataset"][i, allowed],
        }
        if other is not None:
            candidates["floor"] = other[i, allowed]
        out["chance"]["error"].append(e.mean())
        out["imagenet"]["error"].append(err[i, models.index("imagenet")])
        for method, sc in candidates.items():
            out[method]["error"].append(e[int(np.argmin(sc))])
            rho, wtau = _rank_stats(e, sc)
            out[method]["spearman"].append(rho)
            out[method]["wtau"].append(wtau)
    assert np.allclose(per_task["optimal_error"], optimal)  # the library's leave-one-out agrees on what is allowed
    opt = float(np.mean(optimal))
    result = {"seed": seed, "tasks": len(tasks), "models": len(models), "optimal": opt,
              "loo_seconds": loo_seconds, "model2vec_summary": report.summary}
    for method, v in out.items():
        if not v["error"]:  # the noise floor with one seed
            continue
        mean = float(np.mean(v["error"]))
        result[method] = {"error": mean, "relative_increase": mean / opt - 1,
                          "spearman": float(np.nanmean(v["spearman"])) if v["spearman"] else None,
                          "wtau": float(np.nanmean(v["wtau"])) if v["wtau"] else None}
    return result


def _evaluate_at(path: str, table: pd.DataFrame, seed: int, quick: bool) -> dict:
    with TaskIndex.open(path, readonly=True) as idx:
        return evaluate(idx, table, seed, quick, progress=False)


def _shortlisted(score: np.ndarray, logme: np.ndarray, m: int = SHORTLIST) -> np.ndarray:
    """Ranks as verify="logme" orders them: the score's first m by LogME (higher first), then the rest by score."""
    order = np.argsort(score, kind="stable")
    head = order[:m][np.argsort(-logme[order[:m]], kind="stable")]
    out = np.empty(len(score))
    out[np.concatenate([head, order[m:]])] = np.arange(len(score))
    return out


def _other_seed_errors(table: pd.DataFrame, seed: int, tasks: list[str], models: list[str], target_of: dict):
    """The noise floor: each target's errors under the next seed's training images (None with one seed)."""
    seeds = sorted(table["seed"].unique())
    if len(seeds) < 2:
        return None
    nxt = seeds[(seeds.index(seed) + 1) % len(seeds)]
    wide = table[table["seed"] == nxt].pivot(index="task", columns="model", values="error")
    return wide.reindex(index=[target_of[t] for t in tasks], columns=models).to_numpy()


def _priors(table: pd.DataFrame, seed: int, tasks: list[str], models: list[str], target_of: dict, idx) -> dict:
    """Two selectors that read the other targets' errors averaged over every seed (the target's own never): the
    best expert on average over the other targets of its dataset, and the neighbours selector on those means."""
    from taskindex import distance
    from taskindex.select import neighbors

    mean = table.groupby(["task", "model"])["error"].mean().unstack().reindex(columns=models)
    names = [target_of[t] for t in tasks]
    err = mean.reindex(index=names).to_numpy()
    dataset = np.array([idx.get(t)[1]["dataset"] for t in tasks])
    vectors = idx.vectors(tasks)
    d = distance.pairwise(vectors)
    model_vectors = idx.vectors(models)
    cx = distance.complexity(model_vectors, idx.prior)
    out = {"same_dataset": np.full(err.shape, np.nan), "neighbors_mean": np.full(err.shape, np.nan)}
    for i in range(len(tasks)):
        others = np.array([j for j in range(len(tasks)) if j != i])
        same = others[dataset[others] == dataset[i]]
        same = same if len(same) else others  # the only target of its dataset: the best on average
        out["same_dataset"][i] = neighbors.scores(np.zeros(len(same)), err[same], k=len(same), tau=np.inf)[0]
        fallback = distance.one_to_many(vectors[i], model_vectors) - idx.alpha * cx
        out["neighbors_mean"][i] = neighbors.scores(d[i, others], err[others], fallback)[0]
    return out


def mean_errors(table: pd.DataFrame) -> pd.DataFrame:
    """The error of each (task, model) averaged over seeds, with the test images behind it and the binomial
    standard error those images leave on it (se)."""
    out = table.groupby(["task", "model"], as_index=False).agg(error=("error", "mean"), n_test=("n_test", "first"))
    return out.assign(se=standard_error(out["error"].to_numpy(), out["n_test"].to_numpy()))


def markdown(results: dict) -> str:
    """One block of rows per estimator: mean over seeds (sd over seeds)."""
    lines = [harness.md_row(["estimator", "", "Optimal", *(LABELS[m] for m in METHODS)]),
             harness.md_rule("l" * (3 + len(METHODS)))]
    for est, runs in ((e, r) for e, r in results.items() if r):  # --timing-only: nothing evaluated
        def cell(method, key, fmt):
            vals = [r[method][key] for r in runs if r.get(method, {}).get(key) is not None]
            if not vals:
                return ""
            sd = f" ({fmt.format(np.std(vals))})" if len(vals) > 1 else ""
            return fmt.format(np.mean(vals)) + sd

        opt = np.mean([r["optimal"] for r in runs])
        lines.append(harness.md_row([est, "error / relative increase", f"{opt:.3f}",
                                     *(cell(m, "relative_increase", "{:+.1%}") for m in METHODS)]))
        lines.append(harness.md_row([est, "Spearman / weighted tau", "", "", "",
                                     *(f"{cell(m, 'spearman', '{:.2f}')} / {cell(m, 'wtau', '{:.2f}')}"
                                       for m in METHODS[2:])]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser("tools.experiments.meta_benchmark", __doc__.splitlines()[0], raw=False)
    parser.add_argument("--cache-dir", default=str(expert_zoo.CACHE_DIR))
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (quick: 0)")
    parser.add_argument("--estimators", nargs="+", default=None,
                        help=f"default {estimator_id(DEFAULT_ESTIMATOR)} and the paper's mean (quick: the default only)")
    parser.add_argument("--image-size", type=int, default=None, help="default 64 (quick: 32)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="processes that train the experts and fill the error table (default: one per core)")
    parser.add_argument("--timing", type=int, default=None, metavar="N",
                        help="also time N queries side by side (default 8; quick 2); 0: no timing")
    parser.add_argument("--timing-only", action="store_true", help="time the queries, skip the leave-one-out")
    parser.add_argument("--errors-out", default=None,
                        help="write the mean error over seeds per (task, model) here, as CSV (the shipped one: "
                             "taskindex/package_data/expert_errors.csv)")
    parser.add_argument("--json", dest="json_out", default=None, help="Also write the results here.")
    args = parser.parse_args(argv)
    quick = args.quick
    seeds = tuple(args.seeds or ((0,) if quick else (0, 1, 2)))
    default = estimator_id(DEFAULT_ESTIMATOR)
    estimators = args.estimators or ([default] if quick else [default, "mean"])
    size = args.image_size or (32 if quick else 64)
    root = Path(args.cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    progress = sys.stderr.isatty()
    start = time.perf_counter()
    print(f"load average at start: {harness.load_text()}")
    table = expert_zoo.error_table(root, seeds, size, quick, progress, args.workers)
    print(f"error table: {len(table)} (target, expert, seed) rows, {time.perf_counter() - start:.0f} s so far")
    averaged = mean_errors(table)
    if args.errors_out:
        averaged.to_csv(args.errors_out, index=False)
    noise = indistinct_targets(averaged)
    print(f"targets whose best expert is within one standard error of the second: {int(noise['within_noise'].sum())} "
          f"of {len(noise)} (binomial, on each target's test images)")
    results, timings = {}, {}
    for est in estimators:
        idx = build_index(root, est, size, quick, seeds, progress)
        with idx:
            jobs = [(str(index_path(root, est, size, quick)), table, seed, quick) for seed in seeds]  # a process each
            results[est] = [] if args.timing_only else expert_zoo.parallel(_evaluate_at, jobs, args.workers, "seeds",
                                                                           progress)
            n = args.timing if args.timing is not None else (2 if quick else 8)
            if n and est == estimators[0]:
                print(f"timing {n} queries; load average {harness.load_text()}")
                timings = selection_cost.timing(root, idx, table, size, quick, n)
    print(markdown(results))
    if timings:
        print(selection_cost.summary(timings))
    results = {**results, "timing": timings}
    print(f"run time {time.perf_counter() - start:.0f} s; load average at end: {harness.load_text()}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
