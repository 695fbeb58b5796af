"""Does a fresh sample of a task find that task first? Task identification by estimator and label mode.

    .venv/bin/python -m tools.bench_quality [--per-class 100 50 25] [--labels exact:2 sample]
        [--image-size 64] [--heldout-per-dataset 8] [--json results.json]

For every task, two independent samples (disjoint images where the dataset has
enough; other seeds for the head and the label draws) are embedded with the
pretrained EfficientNet-Lite0. Each second sample is looked up among all first
samples by d_sym: P@1, P@3 and MRR of finding its own task, the mean same-task
d_sym and the mean d_sym to the nearest other task.

One Fisher pass per sample and label mode records every image's per-filter
contribution (what embed's estimator receives); each estimator is then applied to
the same contributions, so estimators are compared on identical images, heads and
labels. Task sets, reported separately:
  development  the 43 named sample tasks (taskindex.data.samples), on which the default
               estimator and its trim were chosen;
  held-out     random subsets of 2 to 5 original classes of each dataset (fixed seed,
               none equal to a named task's classes).
Also: the Spearman correlation between complexity and the test error of a linear
classifier on the probe's features (trained on sample A, tested on sample B), and
the mean complexity and Fisher norm per images-per-class (supplementary 1.2).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from tqdm import tqdm

from taskindex import Embedding, Task, load_probe
from taskindex.data import samples
from taskindex.data.task import balanced_order
from taskindex.distance import complexity, pairwise
from taskindex.embedding import pipeline as task2vec
from taskindex.embedding.estimators import FilterEstimator
from taskindex.embedding.fisher import weights_per_filter
from tools import harness

ESTIMATORS = ["mean", "trimmed:0.02", "trimmed:0.05", "trimmed:0.1", "trimmed:0.2", "winsorized:0.05",
              "winsorized:0.1", "median"]


class Recorder(FilterEstimator):
    """embed's estimator, also keeping every image's contribution for the offline comparison."""

    last: "Recorder | None" = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.blocks: list[torch.Tensor] = []
        Recorder.last = self

    def update(self, block):
        self.blocks.append(block.detach().float().cpu().clone())
        super().update(block)


def named_tasks() -> list[tuple[str, str, tuple]]:
    return [(n, samples.spec(n).dataset, samples.spec(n).groups) for n in samples.names()]


def heldout_tasks(per_dataset: int, seed: int) -> list[tuple[str, str, tuple]]:
    """Random subsets of 2-5 original classes, each class its own task class; none equals a named task."""
    taken = {(samples.spec(n).dataset, tuple(sorted(samples.spec(n).groups))) for n in samples.names()}
    rng = np.random.default_rng(seed)
    out = []
    for dataset in samples.DATASETS:
        made = 0
        while made < per_dataset:
            k = int(rng.integers(2, 6))
            classes = tuple(sorted(int(c) for c in rng.choice(10, size=k, replace=False)))
            groups = tuple((c,) for c in classes)
            key = (dataset, tuple(sorted(groups)))
            if key in taken:
                continue
            taken.add(key)
            out.append((f"{dataset}:{'-'.join(map(str, classes))}", dataset, groups))
            made += 1
    return out


def task_pair(name: str, dataset: str, groups: tuple, per_class: int, seed: int) -> tuple[Task, Task, float]:
    """Two samples of per_class images per task class, disjoint where the pools allow; returns the overlap."""
    images, labels = samples.arrays(dataset)
    rng = np.random.default_rng(seed)
    a, b, shared = [], [], 0
    for group in groups:
        pool = np.flatnonzero(np.isin(labels, group))
        order = pool[balanced_order(labels[pool], None, rng)]  # round-robin over the merged classes
        if len(order) >= 2 * per_class:
            a.append(order[0:2 * per_class:2])
            b.append(order[1:2 * per_class:2])
        else:
            a.append(order[:per_class])
            b.append(order[-per_class:])
            shared += len(np.intersect1d(a[-1], b[-1]))
    tasks = []
    for part in (a, b):
        y = np.concatenate([np.full(len(p), k) for k, p in enumerate(part)])
        tasks.append(Task.from_arrays(images[np.concatenate(part)], y, name=name))
    return tasks[0], tasks[1], shared / sum(len(p) for p in a)


def contributions(task: Task, probe, labels: str, seed: int) -> tuple[Embedding, np.ndarray, float]:
    """embed() with the plain mean, and the per-image contributions its estimator received."""
    task2vec.FilterEstimator = Recorder
    try:
        start = time.perf_counter()
        expectation, _, passes = labels.partition(":")
        emb = task2vec.embed(task, probe, max_samples=None, seed=seed, expectation=expectation, estimator="mean",
                             label_passes=int(passes) if passes else None, progress=False)
        seconds = time.perf_counter() - start
    finally:
        task2vec.FilterEstimator = FilterEstimator
    return emb, torch.cat(Recorder.last.blocks).numpy(), seconds


def aggregate(per_image: np.ndarray, estimator: str, batch: int = 64) -> tuple[np.ndarray, float]:
    """The library's streaming estimator fed in embed's batches (numpy's median for comparison only)."""
    start = time.perf_counter()
    if estimator == "median":
        value = np.median(per_image, axis=0).astype(np.float64)
    else:
        est = FilterEstimator(estimator, len(per_image), per_image.shape[1])
        for i in range(0, len(per_image), batch):
            est.update(torch.from_numpy(per_image[i:i + batch]))
        value = est.result().numpy()
    return value, time.perf_counter() - start


def linear_error(probe, a: Task, b: Task) -> float:
    """Test error on sample B of a logistic regression on the probe's features of sample A."""
    def feats(t: Task) -> np.ndarray:
        x = t.load(np.arange(len(t)), probe.image_size)
        with torch.no_grad():
            return torch.cat([probe.backbone(probe.normalize(x[i:i + 128], probe.device)).float()
                              for i in range(0, len(x), 128)]).numpy()
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(feats(a), a.labels)
    return float((clf.predict(feats(b)) != b.labels).mean())


def identification(first: list[Embedding], second: list[Embedding]) -> dict:
    d = pairwise(second, first)  # row i: second sample of task i against every first sample
    n = len(first)
    own = d[np.arange(n), np.arange(n)]
    rank = (d < own[:, None]).sum(1) + 1
    other = d + np.diag(np.full(n, np.inf))
    return {"P@1": float((rank == 1).mean()), "P@3": float((rank <= 3).mean()), "MRR": float((1 / rank).mean()),
            "same": float(own.mean()), "nearest_other": float(other.min(1).mean()),
            "worst": [(int(i), int(rank[i])) for i in np.argsort(-rank)[:3] if rank[i] > 1]}


def run(args) -> dict:
    probe = load_probe("efficientnet_lite0", image_size=args.image_size, device="cpu")
    m = weights_per_filter(probe.backbone)
    sets = {"development": named_tasks(), "held-out": heldout_tasks(args.heldout_per_dataset, args.seed)}
    sets = {k: v for k, v in sets.items() if k in args.sets}
    if args.limit:
        sets = {k: v[:args.limit] for k, v in sets.items()}
    results = {"sets": {k: [t[0] for t in v] for k, v in sets.items()}, "configs": []}
    for per_class in args.per_class:
        for labels in args.labels:
            for set_name, tasks in sets.items():
                vecs = {e: ([], []) for e in ESTIMATORS}
                seconds, agg_seconds, errors, overlap = [], {e: 0.0 for e in ESTIMATORS}, [], []
                bar = tqdm(tasks, desc=f"{set_name} {labels} {per_class}/class", unit="task")
                for i, (name, dataset, groups) in enumerate(bar):
                    a, b, shared = task_pair(name, dataset, groups, per_class, args.seed + 1000 * i)
                    overlap.append(shared)
                    if labels == args.labels[0]:
                        errors.append(linear_error(probe, a, b))
                    for side, task, seed in ((0, a, args.seed), (1, b, args.seed + 1)):
                        emb, per_image, sec = contributions(task, probe, labels, seed)
                        seconds.append(sec)
                        for e in ESTIMATORS:
                            value, s = aggregate(per_image, e)
                            agg_seconds[e] += s
                            meta = dict(emb.meta, estimator=e)
                            vecs[e][side].append(Embedding(value / m + emb.prior, emb.prior, emb.layout, meta))
                for e in ESTIMATORS:
                    row = identification(*vecs[e])
                    first = vecs[e][0]
                    c = np.array([complexity(x) for x in first])
                    row.update({
                        "set": set_name, "labels": labels, "per_class": per_class, "estimator": e,
                        "tasks": len(tasks), "seconds_per_embedding": float(np.mean(seconds)),
                        "estimator_seconds_per_embedding": agg_seconds[e] / (2 * len(tasks)),
                        "mean_complexity": float(c.mean()),
                        "mean_fisher_norm": float(np.mean([np.linalg.norm(x.fisher) for x in first])),
                        "overlap": float(np.mean(overlap)),
                        "worst": [(tasks[i][0], r) for i, r in row["worst"]],
                    })
                    if errors:
                        row["spearman_complexity_error"] = float(spearmanr(c, errors).statistic)
                    results["configs"].append(row)
                    print(json.dumps(row), flush=True)
                if errors:
                    results.setdefault("linear_error", {})[f"{set_name}/{per_class}"] = errors
    return results


def against_index(path: str, per_class: int, seed: int) -> dict:
    """A fresh sample of every named task queried against an index that holds the task: its rank.

    Rows named NAME@N (tools.experiments.build_default_index) are the same task at N images per class: the
    rank of the task counts the first row of it under either name; the rank of the row NAME alone
    is reported beside it."""
    from taskindex import TaskIndex

    ranks, exact_ranks, found, seconds = {}, {}, {}, []
    with TaskIndex.open(path, readonly=True) as index:
        probe = index.probe()
        for name in tqdm(samples.names(), desc=f"fresh samples against {path}", unit="task"):
            task = samples.load(name, max_per_class=per_class, seed=seed)
            start = time.perf_counter()
            emb = task2vec.embed(task, probe, progress=False, **index.embed_options())
            seconds.append(time.perf_counter() - start)
            names = [h.name for h in index.query(emb, k=len(index), exact=True)]
            ranks[name] = next(i for i, n in enumerate(names, 1) if n.partition("@")[0] == name)
            exact_ranks[name] = names.index(name) + 1
            found[name] = names[0]
    r, e = np.array(list(ranks.values())), np.array(list(exact_ranks.values()))
    return {"index": path, "per_class": per_class, "seed": seed, "tasks": len(r), "first": int((r == 1).sum()),
            "P@1": float((r == 1).mean()), "P@5": float((r <= 5).mean()), "MRR": float((1 / r).mean()),
            "row_first": int((e == 1).sum()), "row_MRR": float((1 / e).mean()),
            "seconds_per_embedding": float(np.mean(seconds)),
            "missed": {k: {"rank": v, "first": found[k]} for k, v in ranks.items() if v > 1},
            "row_missed": {k: {"rank": v, "first": found[k]} for k, v in exact_ranks.items() if v > 1}}


TIMED = {"sample, mean (the paper's; before)": dict(expectation="sample", estimator="mean"),
         "exact, 2 label passes, trimmed (default)": dict(),
         "exact, all C-1 passes, trimmed": dict(label_passes=None)}
SLOW = {"variational, 10 epochs (2 classes only, one run)": dict(method="variational")}


def timing(per_class: int, repeats: int = 2) -> list[dict]:
    """Seconds per embedding by number of classes, each setting timed side by side (best of `repeats`)."""
    probe = load_probe("efficientnet_lite0", image_size=64, device="cpu")
    images, labels = samples.arrays("fashion-mnist")
    rows = []
    for classes in (2, 3, 5, 10):
        keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(classes)])
        task = Task.from_arrays(images[keep], labels[keep], name=f"{classes} classes")
        task2vec.embed(task, probe, max_samples=None, progress=False)  # warm-up
        row = {"classes": classes, "images": len(keep)}
        for name, kw in {**TIMED, **(SLOW if classes == 2 else {})}.items():
            row[name] = harness.best_of(lambda: task2vec.embed(task, probe, max_samples=None, progress=False, **kw),
                                        1 if name in SLOW else repeats, warm=False)[0]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(results: dict) -> str:
    lines = [harness.md_row(["set", "labels", "img/class", "estimator", "P@1", "P@3", "MRR", "same-task d_sym",
                             "nearest-other d_sym", "ratio", "complexity vs error (Spearman)", "mean complexity",
                             "s/embedding"]),
             harness.md_rule("llrlrrrrrrrrr")]
    for r in results["configs"]:
        rho = r.get("spearman_complexity_error")
        lines.append(harness.md_row([
            f"{r['set']} ({r['tasks']})", r["labels"], r["per_class"], r["estimator"], f"{r['P@1']:.2f}",
            f"{r['P@3']:.2f}", f"{r['MRR']:.3f}", f"{r['same']:.3f}", f"{r['nearest_other']:.3f}",
            f"{r['same'] / r['nearest_other']:.2f}", "" if rho is None else f"{rho:.2f}", f"{r['mean_complexity']:.3f}",
            f"{r['seconds_per_embedding']:.2f}"]))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = harness.parser("tools.bench_quality", __doc__)
    ap.add_argument("--per-class", type=int, nargs="+", default=[100])
    ap.add_argument("--labels", nargs="+", default=["exact:2", "sample"],
                    help="exact (all C-1 label directions), exact:N (the N leading ones) or sample")
    ap.add_argument("--sets", nargs="+", default=["development", "held-out"], choices=["development", "held-out"])
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--heldout-per-dataset", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0, help="first N tasks of each set (a quick look)")
    ap.add_argument("--json", help="write every figure to this file")
    ap.add_argument("--index", help="instead: query a fresh sample (seed 123) of every named task against "
                                    "this index, which must hold them under their names (e.g. the shipped "
                                    "taskindex/package_data/default.index)")
    ap.add_argument("--timing", action="store_true",
                    help="instead: seconds per embedding by number of classes for the label/estimator settings")
    args = ap.parse_args(argv)
    torch.set_num_threads(task2vec.available_cores())
    if args.timing:
        rows = timing(args.per_class[0])
        base = next(iter(TIMED))
        cols = [*TIMED, *SLOW]
        print(harness.md_row(["classes", "images", *cols]))
        print(harness.md_rule("r" * (2 + len(cols))))
        for r in rows:
            print(harness.md_row([r["classes"], r["images"], *(f"{r[k]:.2f} s ({r[k] / r[base]:.2f}x)" if k in r else ""
                                                                for k in cols)]))
        print(f"load average {harness.loads()}; {harness.cpu_name()}; torch {torch.__version__}")
        return 0
    if args.index:
        print(json.dumps(against_index(args.index, args.per_class[0], 123), indent=1))
        return 0
    start = time.perf_counter()
    results = run(args)
    load = harness.loads()
    results["machine"] = {"cpu": harness.cpu_name(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                          "load_average_1_5_15": load, "wall_seconds": time.perf_counter() - start}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print(table(results))
    print(f"\nwall {results['machine']['wall_seconds']:.0f} s; load average at the end {load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
