"""The rows and queries of the benchmark: real TASK2VEC embeddings (the seeds) and their perturbations."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import taskindex
from taskindex.embedding.vector import Embedding
from taskindex.index.task_index import TaskIndex
from taskindex.shipped import DEFAULT_INDEX
from tools.bench_query import log

SEED_TASKS = ("fashion-all", "mnist-all", "digits-all", "fashion-footwear")
SEED_IMAGE_SIZE = 48
SHIPPED = "taskindex/package_data/default.index"  # DEFAULT_INDEX, as the report names it


def load_seeds(args) -> tuple[list[Embedding], str]:
    """Real embeddings to perturb, and a sentence saying where they came from."""
    shipped = DEFAULT_INDEX
    if (shipped / "CURRENT").is_file() and not args.embed_seeds:
        with TaskIndex.open(shipped, readonly=True) as idx:
            seeds = [idx.get(name)[0] for name in idx.names()]
            size = idx.space["image_size"]
        return seeds, f"{len(seeds)} rows of the shipped index {SHIPPED} (image size {size})"
    cache = Path(args.workdir) / "seeds"
    cache.mkdir(parents=True, exist_ok=True)
    probe = None
    seeds = []
    cached = 0
    for name in args.seed_tasks:
        path = cache / f"{name}@{args.seed_image_size}px-{args.seed_per_class}pc.emb"
        if path.is_file():
            seeds.append(Embedding.load(path))
            cached += 1
            continue
        if probe is None:
            probe = taskindex.load_probe("efficientnet_lite0", image_size=args.seed_image_size)
        log(f"embedding seed task {name} ({args.seed_per_class} images per class, {args.seed_image_size} px)")
        t = time.perf_counter()
        emb = taskindex.embed(taskindex.samples.load(name, max_per_class=args.seed_per_class), probe, progress=False)
        log(f"  {time.perf_counter() - t:.0f} s")
        emb.save(path)
        seeds.append(emb)
    where = f"{SHIPPED} has no index, so " if not args.embed_seeds else ""
    return seeds, (f"{where}{len(seeds)} sample tasks embedded with efficientnet_lite0 at {args.seed_image_size} px, "
                   f"{args.seed_per_class} images per class ({', '.join(args.seed_tasks)}; "
                   f"{cached} read from the cache {cache})")


class Perturber:
    """Synthetic embeddings: F_seed * exp(N(0, s)) per filter + prior, s log-uniform in [lo, hi] per row."""

    def __init__(self, seeds: list[Embedding], spread: tuple[float, float], seed: int):
        self.seeds = seeds
        self.fisher = np.stack([e.fisher for e in seeds]).astype(np.float32)
        self.prior = seeds[0].prior.astype(np.float32)
        self.lo, self.hi = np.log(spread[0]), np.log(spread[1])
        self.rng = np.random.default_rng(seed)
        self.dim = self.fisher.shape[1]

    def draw(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, dim) float32 vectors and the seed index of each."""
        which = self.rng.integers(len(self.seeds), size=n)
        s = np.exp(self.rng.uniform(self.lo, self.hi, size=n)).astype(np.float32)
        noise = self.rng.standard_normal((n, self.dim), dtype=np.float32)
        noise *= s[:, None]
        np.exp(noise, out=noise)
        noise *= self.fisher[which]
        noise += self.prior
        return noise, which

    def embeddings(self, n: int) -> list[tuple[Embedding, int]]:
        vecs, which = self.draw(n)
        return [(Embedding(v, self.seeds[j].prior, self.seeds[j].layout, self.seeds[j].meta), int(j))
                for v, j in zip(vecs, which)]
