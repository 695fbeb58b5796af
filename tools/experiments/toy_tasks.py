"""The toy task space of supplementary 5 (claim 6 of tools.experiments.paper_figures).

    .venv/bin/python -m tools.experiments.toy_tasks [--tasks 64] [--seed 0] [--json results.json]

Tasks: a uniform 32 x 32 grid of the square [-1, 1]^2, clustered by k-means into k = 3..16 clusters,
half of the clusters (a random half) labelled 1. Every task has the same inputs (the grid): only the
labels differ, so no domain embedding can tell them apart.

Probes: the paper names two feature maps, degree-3 polynomials of (x, y) (10 monomials) and 10 random
ReLU features max(0, a x + b y + c), a, b ~ U[-1/2, 1/2], c ~ U[-1, 1]; it does not say which weights
the Fisher is taken over. We put a frozen layer of 16 sigmoid units on each feature map, z = sigmoid(U phi),
which is exactly the network of its analytic derivation: the Fisher of U is then known in closed form
(taskindex._testing.reference.two_layer_fisher) given the head the library fits.

Each point is a 3 x 8 x 8 uint8 image whose first two channels hold its coordinates (grid coordinates are
uint8 levels, so decoding is exact): the library embeds the tasks with its own pipeline, unchanged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from taskindex import Probe, Task, distance, embed
from taskindex.embedding.head import fit_head
from taskindex.data.task import balanced_order
from taskindex._testing.reference import two_layer_fisher
from tools import harness

GRID = 32
HIDDEN = 16
FEATURE_MAPS = ("polynomial", "relu")


def grid_levels() -> np.ndarray:
    """The grid's uint8 levels, one per column (and row) of the grid."""
    return np.round(np.linspace(0, 255, GRID)).astype(np.uint8)


def grid_images() -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 8, 8) uint8, points (N, 2) in [-1, 1]) of the grid, the same for every task."""
    lv = grid_levels()
    gx, gy = np.meshgrid(lv, lv, indexing="xy")
    codes = np.stack([gx.ravel(), gy.ravel()], 1)
    images = np.zeros((len(codes), 3, 8, 8), dtype=np.uint8)
    images[:, :2] = codes[:, :, None, None]
    return images, decode(codes)


def decode(codes) -> np.ndarray:
    return np.asarray(codes, dtype=np.float64) / 255.0 * 2.0 - 1.0


def boundary_length(task: Task) -> int:
    """Grid neighbours (4-connected) with different labels: the length of the task's decision boundary."""
    g = task.labels.reshape(GRID, GRID)
    return int((g[1:] != g[:-1]).sum() + (g[:, 1:] != g[:, :-1]).sum())


def probe_error(task: Task, probe: Probe) -> float:
    """Training error on the grid of a logistic regression on the probe's features: how hard the task is
    for this probe (the toy counterpart of claim 3's linear-probe error)."""
    from sklearn.linear_model import LogisticRegression

    with torch.no_grad():
        z = probe.backbone(probe.normalize(task.load(np.arange(len(task)), probe.image_size), torch.device("cpu")))
    fit = LogisticRegression(C=10.0, max_iter=2000).fit(z.double().numpy(), task.labels)
    return float(1.0 - fit.score(z.double().numpy(), task.labels))


def toy_tasks(n_tasks: int = 64, seed: int = 0) -> list[tuple[Task, int]]:
    """(task, k) for k = 3..16 in turn, each k-means on its own seed and its own random half of the clusters."""
    from sklearn.cluster import KMeans

    images, points = grid_images()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_tasks):
        k = 3 + i % 14
        clusters = KMeans(k, n_init=1, random_state=seed * 1000 + i).fit_predict(points)
        positive = rng.choice(k, k // 2, replace=False)
        labels = np.isin(clusters, positive).astype(np.int64)
        out.append((Task.from_arrays(images, labels, name=f"toy-{i:02d}-k{k}"), k))
    return out


class FeatureMap(nn.Module):
    """Pixels -> the point (x, y) -> fixed features phi, as a (N, d, 1, 1) map for the hidden 1x1 conv."""

    def __init__(self, kind: str, seed: int):
        super().__init__()
        if kind not in FEATURE_MAPS:
            raise ValueError(f"unknown feature map {kind!r}: use one of {', '.join(FEATURE_MAPS)}")
        self.kind = kind
        g = torch.Generator().manual_seed(seed)
        # the random ReLU features' (a, b, c); unused by the polynomial map
        ab = torch.rand(10, 2, generator=g, dtype=torch.float64) - 0.5
        c = torch.rand(10, generator=g, dtype=torch.float64) * 2 - 1
        self.register_buffer("ab", ab.float())
        self.register_buffer("c", c.float())

    @property
    def dim(self) -> int:
        return 10

    def forward(self, images):
        xy = images[:, :2, 0, 0] * 2.0 - 1.0  # the probe's normalisation is the identity: images / 255
        x, y = xy[:, 0], xy[:, 1]
        if self.kind == "polynomial":
            phi = torch.stack([x ** a * y ** b for d in range(4) for a, b in ((d - j, j) for j in range(d + 1))], 1)
        else:
            phi = torch.relu(xy @ self.ab.T + self.c)
        return phi[:, :, None, None]


class ToyNet(nn.Module):
    def __init__(self, kind: str, seed: int = 0):
        super().__init__()
        self.features = FeatureMap(kind, seed)
        self.hidden = nn.Conv2d(self.features.dim, HIDDEN, 1, bias=False)
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():  # unit-variance pre-activations on the grid: sigmoids neither flat nor saturated
            self.hidden.weight.copy_(torch.randn(HIDDEN, self.features.dim, 1, 1, generator=g) * 1.5
                                     / np.sqrt(self.features.dim))

    def forward(self, images):
        return torch.sigmoid(self.hidden(self.features(images))).flatten(1)


def toy_probe(kind: str, seed: int = 0) -> Probe:
    return Probe.from_module(ToyNet(kind, seed), HIDDEN, name=f"toy-{kind}", weights=f"seed{seed}", image_size=8,
                             mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def analytic(task: Task, probe: Probe, seed: int = 0) -> np.ndarray:
    """The closed-form Fisher of the hidden layer (supp. 5), with the head the library fits for this task:
    the same images in the same class-balanced order, the same features, fit_head with the same seed."""
    labels = task.labels
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    canonical = np.argsort(np.argsort(first))[inverse]  # as embed numbers classes
    idx = balanced_order(canonical, None, np.random.default_rng(seed))
    images = task.load(idx, probe.image_size)
    net = probe.backbone
    with torch.no_grad():
        x = probe.normalize(images, torch.device("cpu"))
        features = net(x).float()
        phi = net.features(x).flatten(1).double().numpy()
    head = fit_head(features, torch.as_tensor(canonical[idx]), 2, seed=seed)
    w = (head.weight[1] - head.weight[0]).double().numpy()
    b = float(head.bias[1] - head.bias[0])
    return two_layer_fisher(phi, net.hidden.weight.flatten(1).double().numpy(), w, b)


def _upper(d: np.ndarray) -> np.ndarray:
    return d[np.triu_indices(len(d), 1)]


def measure(n_tasks: int = 64, seed: int = 0, estimators=("trimmed", "mean"), feature_maps=FEATURE_MAPS) -> dict:
    """Per feature map: the library's embedding against the analytic Fisher (per-task correlation over the 16
    units; the d_sym matrices), and how complexity follows the number of clusters k, the length of the
    decision boundary and the error of a logistic regression on the probe's features."""
    from scipy.stats import pearsonr, spearmanr

    tasks = toy_tasks(n_tasks, seed)
    ks = np.array([k for _, k in tasks])
    boundary = np.array([boundary_length(t) for t, _ in tasks])
    out = {"tasks": len(tasks), "grid": GRID, "hidden_units": HIDDEN, "feature_maps": {}}
    for kind in feature_maps:
        probe = toy_probe(kind, seed)
        ref = np.stack([analytic(t, probe, seed) for t, _ in tasks])
        errors = np.array([probe_error(t, probe) for t, _ in tasks])
        result = {"probe_error": errors.tolist()}
        for est in estimators:
            embs = [embed(t, probe, max_samples=None, seed=seed, estimator=est, progress=False, threads=1)
                    for t, _ in tasks]
            ours = np.stack([e.fisher for e in embs]).astype(np.float64)
            prior = embs[0].prior.astype(np.float64)
            d_ours = distance.pairwise(np.stack([e.vector for e in embs]))
            d_ref = distance.pairwise(ref + prior)
            per_task = [pearsonr(a, b)[0] for a, b in zip(ours, ref)]
            cx = distance.complexity(np.stack([e.vector for e in embs]), prior)
            cx_ref = distance.complexity(ref + prior, prior)
            result[est] = {
                "median_task_pearson": float(np.median(per_task)),
                "min_task_pearson": float(np.min(per_task)),
                "max_relative_error": float(np.max(np.abs(ours - ref) / ref.max(1, keepdims=True))),
                "d_sym_pearson": float(pearsonr(_upper(d_ours), _upper(d_ref))[0]),
                "d_sym_spearman": float(spearmanr(_upper(d_ours), _upper(d_ref))[0]),
                "complexity_spearman_with_analytic": float(spearmanr(cx, cx_ref)[0]),
                "complexity_spearman_with_k": float(spearmanr(cx, ks)[0]),
                "complexity_spearman_with_boundary": float(spearmanr(cx, boundary)[0]),
                "complexity_spearman_with_probe_error": float(spearmanr(cx, errors)[0]),
                "neighbours": neighbour_gap(d_ours, boundary),
                "complexity": cx.tolist(),
                "d_sym": d_ours.tolist(),
            }
        result["analytic_complexity_spearman_with_boundary"] = float(spearmanr(cx_ref, boundary)[0])
        out["feature_maps"][kind] = result
    out["k"] = ks.tolist()
    out["boundary"] = boundary.tolist()
    return out


def neighbour_gap(d: np.ndarray, ks: np.ndarray, near: int = 3) -> dict:
    """How far in `ks` (e.g. the boundary length) a task's `near` nearest tasks by d_sym are, against any
    other task: a map that groups tasks by their complexity places tasks with similar values together."""
    d = (d + d.T) / 2
    np.fill_diagonal(d, np.inf)
    nearest = np.argsort(d, axis=1)[:, :near]
    gap = np.abs(ks[:, None] - ks[None, :]).astype(np.float64)
    off = gap[~np.eye(len(ks), dtype=bool)]
    return {"near": near, "nearest_mean_gap": float(gap[np.arange(len(ks))[:, None], nearest].mean()),
            "random_mean_gap": float(off.mean())}


def map_figure(result: dict, seed: int = 0):
    """The paper's toy figure: a t-SNE map of d_sym, one icon per task (its labels on the grid), per feature map,
    the icon's frame coloured by complexity."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage
    from sklearn.manifold import TSNE

    tasks = toy_tasks(result["tasks"], seed)
    fig = Figure(figsize=(13, 6.2))
    for i, kind in enumerate(FEATURE_MAPS):
        r = result["feature_maps"][kind]["trimmed"]
        d = np.asarray(r["d_sym"])
        d = (d + d.T) / 2
        np.fill_diagonal(d, 0)
        xy = TSNE(2, metric="precomputed", init="random", perplexity=10, random_state=seed).fit_transform(d)
        ax = fig.add_subplot(1, 2, i + 1)
        cx = np.asarray(r["complexity"])
        colour = colormaps["viridis"]
        norm = Normalize(cx.min(), cx.max())
        ax.scatter(xy[:, 0], xy[:, 1], c=cx, cmap=colour, norm=norm, s=0)
        for (task, _), (px, py), c in zip(tasks, xy, cx):
            icon = task.labels.reshape(GRID, GRID)[::-1]
            image = OffsetImage(icon, zoom=0.7, cmap="gray_r", norm=Normalize(0, 1))
            box = AnnotationBbox(image, (px, py), frameon=True, pad=0.1,
                                 bboxprops={"edgecolor": colour(norm(c)), "linewidth": 2})
            ax.add_artist(box)
        name = "degree-3 polynomial" if kind == "polynomial" else "10 random ReLU"
        ax.set_title(f"{name} features; Spearman of complexity with the boundary length "
                     f"{r['complexity_spearman_with_boundary']:.2f}", fontsize=10)
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
        fig.colorbar(ax.collections[0], ax=ax, label="complexity", fraction=0.04)
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    """measure() on its own: the agreement figures per feature map and estimator, without the per-task lists."""
    ap = harness.parser("tools.experiments.toy_tasks", __doc__.splitlines()[0], raw=False)
    ap.add_argument("--tasks", type=int, default=64, help="toy tasks (k = 3..16 in turn)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write every number (and the d_sym matrices) here")
    args = ap.parse_args(argv)
    result = measure(args.tasks, args.seed)
    if args.json:
        Path(args.json).write_text(json.dumps(result))
    print(json.dumps(harness.without(result, {"d_sym", "complexity", "probe_error", "k", "boundary"}), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
