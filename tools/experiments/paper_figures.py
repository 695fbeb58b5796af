"""The paper's claims about what the embedding captures, measured on the shipped index and on the toy tasks.

    .venv/bin/python -m tools.experiments.paper_figures [--index DIR] [--out docs/figures] [--permutations 1000]
        [--sizes 32 64 128 256 512 1000] [--seeds 0 1 2] [--json results.json]

Claim 1, semantic structure (paper Fig. 2 left and centre): hierarchical clustering of d_sym between
the task rows recovers their known grouping (the dataset; the semantic family inside it), scored by
the adjusted Rand index against the same score for randomly permuted labels; and the semantic
distance of a task's k nearest tasks by d_sym stays below that of k random tasks. The semantic
distance of two tasks: 0 in the same family of the same dataset, 1 same dataset only, 2 otherwise.
Rows NAME@N (another sample size of task NAME) are left out, so no task meets its own copy.

Claim 2, domain vs task (Fig. 1): class-vs-rest tasks of one dataset, on independent draws of its images,
are told apart by TASK2VEC but not by a domain embedding (the mean of the probe's features).
Claim 3, difficulty (Fig. 2 right): complexity and the norm of the Fisher correlate with the test error
of a linear classifier on the probe's features (Spearman).
Claim 4, sample size (supp. 1.2): the norm and the complexity of one task embedded from n of its images.
Claim 5, invariances: renamed classes give the same embedding; another number of classes the same size.
Claim 6, the toy setting of supp. 5 (tools.experiments.toy_tasks): the library against the closed-form Fisher.
--index defaults to the shipped index (taskindex/package_data/default.index).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from taskindex import TaskIndex, distance, plots
from taskindex.shipped import DEFAULT_INDEX
from taskindex.shipped import EXPERT_ERRORS as ERRORS
from tools import harness
from tools.experiments import toy_tasks


# the semantic families of the named sample tasks (taskindex.data.samples), after the classes they are about:
# footwear and upper-body garments; digits drawn with loops (0 6 8 9) and with straight strokes (1 4 7)
FAMILIES = {
    "fashion-mnist": {"footwear": ("fashion-footwear", "fashion-sandal-vs-rest", "fashion-sneaker-vs-rest",
                                   "fashion-ankle-boot-vs-rest"),
                      "tops": ("fashion-tops", "fashion-tshirt-vs-rest", "fashion-pullover-vs-rest",
                               "fashion-coat-vs-rest", "fashion-shirt-vs-rest")},
    **{dataset: {"round": (f"{dataset}-round", *(f"{dataset}-{d}-vs-rest" for d in (0, 6, 8, 9))),
                 "straight": (f"{dataset}-straight", *(f"{dataset}-{d}-vs-rest" for d in (1, 4, 7)))}
       for dataset in ("mnist", "digits")},
}


def family(name: str, dataset: str) -> str:
    for fam, members in FAMILIES.get(dataset, {}).items():
        if name in members:
            return f"{dataset}/{fam}"
    return f"{dataset}/other"


def semantic_structure(index: TaskIndex, permutations: int = 1000, seed: int = 0) -> dict:
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform
    from sklearn.metrics import adjusted_rand_score

    frame = index.to_pandas()
    frame = frame[(frame["kind"] == "task") & ~frame["name"].str.contains("@")].reset_index(drop=True)
    names = frame["name"].tolist()
    datasets = frame["dataset"].astype(str).to_numpy()
    families = np.array([family(n, d) for n, d in zip(names, datasets)])
    d = plots.distance_matrix(index.vectors(names))
    tree = linkage(squareform(d, checks=False), method="average")
    rng = np.random.default_rng(seed)
    out = {"tasks": len(names)}
    for label, truth in (("dataset", datasets), ("family", families)):
        k = len(set(truth))
        found = fcluster(tree, k, criterion="maxclust")
        ari = adjusted_rand_score(truth, found)
        null = np.array([adjusted_rand_score(rng.permutation(truth), found) for _ in range(permutations)])
        out[label] = {"groups": k, "ari": float(ari), "random_mean": float(null.mean()),
                      "random_p95": float(np.quantile(null, 0.95)), "p_value": float((null >= ari).mean())}
    sem = np.where(families[:, None] == families[None, :], 0, np.where(datasets[:, None] == datasets[None, :], 1, 2))
    order = np.argsort(d + np.eye(len(d)) * 9, axis=1)[:, :-1]  # nearest first, itself last (dropped)
    ks = list(range(1, min(16, len(names) - 1) + 1))
    near = [float(np.mean([sem[i, order[i, :k]].mean() for i in range(len(d))])) for k in ks]
    off = sem[~np.eye(len(d), dtype=bool)].reshape(len(d), -1)
    random = float(off.mean())  # the expected semantic distance of a random other task, for every k
    out["neighbours"] = {"k": ks, "nearest": near, "random": random}
    return out


def difficulty(index: TaskIndex, errors: Path = ERRORS) -> dict:
    """Claim 3 (Fig. 2 right): complexity and the Fisher norm against the test error of a linear classifier
    on the probe's own features (the 'imagenet' expert of the selection benchmark: the same network and
    image size), over the named tasks. The errors come from other images of the same tasks (pool B)."""
    import pandas as pd
    from scipy.stats import spearmanr

    err = pd.read_csv(errors)
    err = err[err["model"] == "imagenet"].set_index("task")["error"]
    frame = index.to_pandas().set_index("name")
    names = [n for n in err.index if n in frame.index and frame.at[n, "kind"] == "task"]
    cx = frame.loc[names, "complexity"].to_numpy(np.float64)
    norm = np.array([np.linalg.norm(index.get(n)[0].fisher) for n in names])
    e = err[names].to_numpy(np.float64)
    return {"tasks": len(names), "spearman_complexity": float(spearmanr(cx, e)[0]),
            "spearman_norm": float(spearmanr(norm, e)[0]), "names": names, "complexity": cx.tolist(),
            "error": e.tolist()}


def difficulty_figure(result: dict):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.2))
    ax = fig.add_subplot()
    ax.scatter(result["error"], result["complexity"], s=30, edgecolors="0.2", linewidths=0.4)
    ax.set_xlabel("test error of a linear classifier on the probe's features")
    ax.set_ylabel("complexity  d_sym(t, t0)")
    ax.set_title(f"{result['tasks']} tasks: Spearman {result['spearman_complexity']:.2f}", fontsize=10)
    fig.tight_layout()
    return fig


def vs_rest_tasks(dataset: str, n: int, seed: int) -> list:
    """Class-vs-rest tasks of one dataset, each on its own uniform draw of n images: one image
    distribution (the domain) for all of them, only the labels differ."""
    from taskindex import Task
    from taskindex.data import samples

    images, labels = samples.arrays(dataset)
    rng = np.random.default_rng(seed)
    tasks = []
    for c in np.unique(labels):
        pick = rng.choice(len(labels), n, replace=False)
        tasks.append(Task.from_arrays(images[pick], (labels[pick] == c).astype(int), name=f"{dataset}-{c}-vs-rest"))
    return tasks


def domain_vs_task(probe, dataset: str = "fashion-mnist", n: int = 200, seed: int = 0, **embed_options) -> dict:
    """Claim 2 (Fig. 1): class-vs-rest tasks share their images' domain. Two independent samples of each;
    each second sample is looked up among the first samples by d_sym of TASK2VEC and by the cosine distance
    of a domain embedding (the mean of the probe's features over the images). P@1 1.0 = every task found."""
    import torch

    from taskindex import embed

    first, second = vs_rest_tasks(dataset, n, 2 * seed), vs_rest_tasks(dataset, n, 2 * seed + 1)

    def domain(task):
        with torch.no_grad():
            x = probe.normalize(task.load(np.arange(len(task)), probe.image_size))
            return probe.backbone(x).mean(0).double().numpy()

    t2v = [[embed(t, probe, progress=False, **embed_options).vector for t in group] for group in (first, second)]
    dom = [[domain(t) for t in group] for group in (first, second)]
    d_t2v = distance.pairwise(np.stack(t2v[1]), np.stack(t2v[0]))
    a, b = np.stack(dom[1]), np.stack(dom[0])
    d_dom = 1 - (a @ b.T) / np.outer(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1))
    out = {"dataset": dataset, "tasks": len(first), "images": n, "seed": seed}
    for label, d in (("task2vec", d_t2v), ("domain", d_dom)):
        off = d[~np.eye(len(d), dtype=bool)]
        out[label] = {"p_at_1": float(np.mean(d.argmin(1) == np.arange(len(d)))),
                      "same_over_other": float(np.diag(d).mean() / off.mean())}
    return out


def invariances(probe, **embed_options) -> dict:
    """Claim 5: renaming the classes leaves the embedding bit-identical; another number of classes keeps
    its dimension (one value per filter, whatever the task)."""
    from taskindex import Task, embed
    from taskindex.data import samples

    task = samples.load("mnist-round", max_per_class=25)
    perm = np.array([2, 0, 3, 1])
    images = task.load(np.arange(len(task)), 28)
    renamed = Task.from_arrays(images, perm[task.labels], name="renamed")
    merged = Task.from_arrays(images, (task.labels >= 2).astype(int), name="merged")
    a, b, c = (embed(t, probe, progress=False, **embed_options) for t in (task, renamed, merged))
    return {"max_abs_difference_renamed": float(np.abs(a.vector - b.vector).max()),
            "dims": [a.dim, c.dim], "classes": [task.n_classes, merged.n_classes],
            "d_sym_merged": distance.d_sym(a, c)}


SIZES = (32, 64, 128, 256, 512, 1000)
SIZE_TASKS = ("fashion-footwear", "fashion-sandal-vs-rest", "mnist-round", "digits-straight")


def sample_size(probe, tasks=SIZE_TASKS, sizes=SIZES, seeds=(0, 1, 2), estimators=("trimmed", "mean"),
                **embed_options) -> dict:
    """Claim 4 (supp. 1.2): the norm of the Fisher and the complexity of one task embedded from n of its
    images, n over `sizes`, each seed an independent draw of the images (and of the head's training)."""
    from taskindex import embed
    from taskindex.data import samples

    out = {"sizes": list(sizes), "seeds": list(seeds), "tasks": {}}
    for name in tasks:
        classes = samples.load(name, max_per_class=1).n_classes
        per = {}
        for est in estimators:
            options = {**embed_options, "estimator": est}
            if est == "mean":
                options.pop("trim", None)
            rows = {"n": [], "norm": [], "complexity": []}
            for n in sizes:
                norms, cxs, counts = [], [], []
                for seed in seeds:
                    task = samples.load(name, max_per_class=max(1, n // classes), seed=seed)
                    e = embed(task, probe, seed=seed, max_samples=None, progress=False, **options)
                    norms.append(float(np.linalg.norm(e.fisher)))
                    cxs.append(distance.complexity(e))
                    counts.append(len(task))
                rows["n"].append(int(np.median(counts)))
                rows["norm"].append(norms)
                rows["complexity"].append(cxs)
            per[est] = rows
        out["tasks"][name] = per
    return out


def sample_size_figure(result: dict):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2)
    for i, (name, per) in enumerate(result["tasks"].items()):
        for est, style in (("trimmed", "-"), ("mean", ":")):
            if est not in per:
                continue
            r = per[est]
            cx = np.asarray(r["complexity"])
            axes[0].errorbar(r["n"], cx.mean(1), yerr=cx.std(1), fmt="o" + style, color=f"C{i}", ms=3, capsize=2,
                             label=f"{name} ({est})")
            axes[1].plot(r["n"], np.median(r["norm"], axis=1), "o" + style, color=f"C{i}", ms=3)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("images in the task (n)")
    axes[0].set_ylabel("complexity  d_sym(t, t0)  (mean, sd over seeds)")
    axes[1].set_ylabel("norm of the Fisher (median over seeds)")
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7, frameon=False)
    fig.suptitle("The same task embedded from n images", fontsize=10)
    fig.tight_layout()
    return fig


def neighbour_figure(result: dict):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.2))
    ax = fig.add_subplot()
    nb = result["neighbours"]
    ax.plot(nb["k"], nb["nearest"], "o-", label="k nearest by d_sym")
    ax.axhline(nb["random"], color="0.4", ls="--", label="k random tasks (expected)")
    ax.set_xlabel("k")
    ax.set_ylabel("mean semantic distance (0 same family, 1 same dataset, 2 other)")
    ax.set_title(f"{result['tasks']} shipped tasks: neighbours by d_sym are semantically close", fontsize=10)
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    ap = harness.parser("tools.experiments.paper_figures", __doc__.splitlines()[0], raw=False)
    ap.add_argument("--index", default=str(DEFAULT_INDEX))
    ap.add_argument("--out", default=None, help="folder for the PNG figures (none: numbers only)")
    ap.add_argument("--permutations", type=int, default=1000)
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="claim 4's task sizes")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="claim 4's draws per size")
    ap.add_argument("--json", default=None, help="also write every number (and the toy d_sym matrices) here")
    args = ap.parse_args(argv)
    start, seconds = time.perf_counter(), {}

    def timed(label, fn, *a, **kw):
        value, seconds[label] = harness.timed(fn, *a, **kw)
        seconds[label] = round(seconds[label], 1)
        return value

    with TaskIndex.open(args.index, readonly=True) as index:
        probe, options = index.probe(), index.embed_options()
        result = {"semantic_structure": timed("semantic_structure", semantic_structure, index, args.permutations),
                  "difficulty": timed("difficulty", difficulty, index),
                  "domain_vs_task": timed("domain_vs_task", domain_vs_task, probe, **options),
                  "invariances": timed("invariances", invariances, probe, **options),
                  "sample_size": timed("sample_size", sample_size, probe, sizes=args.sizes, seeds=args.seeds,
                                       **options),
                  "toy": timed("toy", toy_tasks.measure)}
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            plots.save(neighbour_figure(result["semantic_structure"]), out / "neighbours.png")
            plots.save(difficulty_figure(result["difficulty"]), out / "difficulty.png")
            plots.save(sample_size_figure(result["sample_size"]), out / "sample_size.png")
            plots.save(toy_tasks.map_figure(result["toy"]), out / "toy.png")
            plots.save(plots.plot_matrix(index, color_by="dataset"), out / "matrix.png")
            plots.save(plots.plot_map(index, color_by="dataset"), out / "map.png")
    result["seconds"] = {**seconds, "total": round(time.perf_counter() - start, 1)}
    if args.json:
        Path(args.json).write_text(json.dumps(result))
    print(json.dumps(summary(result), indent=1))
    return 0


def summary(result: dict) -> dict:
    """The numbers README quotes, without the per-task lists and matrices."""
    out = harness.without(result, {"d_sym", "complexity", "probe_error", "names", "error", "norm"})
    for name, per in result["sample_size"]["tasks"].items():
        out["sample_size"]["tasks"][name] = {
            est: {"n": r["n"], "complexity_mean": [round(float(np.mean(c)), 4) for c in r["complexity"]],
                  "complexity_sd": [round(float(np.std(c)), 4) for c in r["complexity"]],
                  "norm_median": [round(float(np.median(x)), 3) for x in r["norm"]]}
            for est, r in per.items()}
    return out


if __name__ == "__main__":
    sys.exit(main())
