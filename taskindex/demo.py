"""`make demo`: embed bundled sample tasks with the pretrained probe and compare them."""

from __future__ import annotations

import time

import numpy as np

from . import distance, samples
from .task2vec import embed
from .probes import load_probe

DEMO_TASKS = ("fashion-footwear", "fashion-tops", "mnist-round")


def main(image_size: int = 64, per_class: int = 100) -> None:
    probe = load_probe("efficientnet_lite0", image_size=image_size)
    print(f"probe: {probe}")
    embs = []
    for name in DEMO_TASKS:
        task = samples.load(name, max_per_class=per_class)
        start = time.perf_counter()
        embs.append(embed(task, probe))
        print(f"  embedded {name:18s} {len(task):4d} images, {task.n_classes} classes "
              f"in {time.perf_counter() - start:5.1f} s")
    d = distance.pairwise(embs)
    width = max(len(n) for n in DEMO_TASKS)
    print("\nd_sym (symmetric TASK2VEC distance)")
    print(" " * width + "".join(f"  {n:>{width}}" for n in DEMO_TASKS))
    for name, row in zip(DEMO_TASKS, d):
        print(f"{name:>{width}}" + "".join(f"  {v:>{width}.4f}" for v in row))
    print("\ncomplexity (distance from the trivial embedding)")
    for name, c in zip(DEMO_TASKS, np.atleast_1d(distance.complexity(embs))):
        print(f"  {name:18s} {c:.4f}")


if __name__ == "__main__":
    main()
