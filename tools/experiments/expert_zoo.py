"""Ground truth for the expert-selection benchmark: a zoo of experts and the error of each on each target task.

TASK2VEC's Table 1 (and supp. 4.1) judges a model-selection method by the test error of the expert it picks,
relative to the best expert found by brute force. `tools.experiments.meta_benchmark` asks the selection methods; this module
supplies what they are judged against: the experts, the target tasks, and the error of a linear classifier on each
expert's frozen features for every (target, expert, seed).

* Images: each dataset of `taskindex.data.samples` is split once, per original class and with a fixed seed, into pool A
  (the experts' training images) and pool B (the targets'), so no target image was ever seen by an expert. Inside
  pool B a target's test images are drawn first with a seed of their own, its training images from the rest with
  the benchmark seed: the test set never changes with the seed.
* Experts: the ImageNet EfficientNet-Lite0 fine-tuned on named sample tasks of pool A, strong ones (many images, all
  or related classes) and deliberately weak ones (a binary one-vs-rest task, a handful of images), plus the
  unmodified network as the 'imagenet' expert. BatchNorm stays in eval mode while fine-tuning: this network's
  running statistics move by 1% a step, so after a few hundred train-mode steps they would sit half-way between
  ImageNet and the source task, and the features read later (in eval mode) would not be those it was trained on.
* Targets: the 43 named sample tasks applied to pool B with few training images per class, where the choice of
  expert matters most (paper, Fig. 4).
* Error: multinomial logistic regression on standardised frozen features with class-balanced sampling
  (`taskindex.head.fit_head`), tested on the target's test images.

Experts are cached as EfficientNet state_dicts (`load_probe(..., weights=path)` reads them) with a JSON log beside
each, the table as Parquet; all writes are atomic, and the same inputs give the same table.

    .venv/bin/python -m tools.experiments.expert_zoo [--cache-dir .cache/meta_benchmark] [--seeds 0 1 2] [--quick]
                                                     [--workers N]
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

import taskindex
from taskindex.data import samples
from taskindex.embedding.head import fit_head
from taskindex.select.logme import logme
from taskindex.embedding.pipeline import torch_threads
from taskindex.data.task import Task, balanced_order
from tools import harness
from tools.experiments.finetune import PROBE, finetune, forward

CACHE_DIR = harness.ROOT / ".cache" / "meta_benchmark"  # the experts, error tables and embeddings of the benchmark
POOL_SEED = 20190707  # splits every dataset into pools A and B; changing it changes every expert and target
TEST_SEED = 4100  # draws each target's test images, independently of the benchmark seed
HELDOUT_PER_CLASS = 20  # pool-A images per class, not trained on, for an expert's held-out accuracy
# Intra-op threads while training and tabulating. On 2 cores shared with other work, 1 thread fine-tuned 93 img/s
# and 2 threads 12-19 img/s (their barriers wait on a preempted thread); restored afterwards.
THREADS = 1
QUICK_TARGETS = ("fashion-footwear", "fashion-bag-vs-rest", "mnist-round", "digits-even-odd")
VERSION = 1  # part of every cache key: bump when the recipe changes
TABLE_VERSION = 4  # 2: LogME scores beside the errors; 3: n_test; 4: test images per dataset, 31 experts
# Test images per target class, as many as pool B allows beside 30 training images: a smaller test set cannot tell
# most experts apart (the standard error of an error is sqrt(e(1-e)/n)).
TEST_PER_CLASS = {"fashion-mnist": 200, "mnist": 200, "digits": 55}


@dataclass(frozen=True)
class ExpertSpec:
    """A feature extractor: fine-tuned on `per_class` pool-A images per class of sample task `sample`."""

    name: str
    dataset: str
    sample: str | None
    per_class: int
    epochs: int
    strength: str  # 'strong' | 'weak' | 'imagenet'


@dataclass
class Target:
    """A query task of the benchmark: train and test images of one named sample task, both from pool B."""

    name: str
    dataset: str
    sample: str
    train: Task
    test: Task


IMAGENET = ExpertSpec("imagenet", "imagenet", None, 0, 0, "imagenet")


def _expert(sample: str, per_class: int, epochs: int, strength: str, suffix: str = "") -> ExpertSpec:
    return ExpertSpec(f"expert-{sample}{suffix}", samples.spec(sample).dataset, sample, per_class, epochs, strength)


def experts(quick: bool = False) -> list[ExpertSpec]:
    """The zoo: 30 fine-tuned experts and 'imagenet' (quick: 2 tiny ones, named apart so that a quick run in the
    same cache folder does not replace the full zoo's files, and 'imagenet'). Strong ones (many images, all or
    related classes), deliberately weak ones (one-vs-rest, a handful of images), and the same source task at
    several training budgets."""
    if quick:
        return [_expert("fashion-all", 8, 2, "strong", "-quick"), _expert("mnist-all", 8, 2, "strong", "-quick"),
                IMAGENET]
    return [
        _expert("fashion-all", 300, 3, "strong"),
        _expert("fashion-tops", 500, 3, "strong"),
        _expert("fashion-footwear", 500, 3, "strong"),
        _expert("fashion-clothes-vs-accessories", 600, 2, "strong"),
        _expert("mnist-all", 220, 4, "strong"),
        _expert("mnist-round", 220, 4, "strong"),
        _expert("mnist-even-odd", 1000, 3, "strong"),
        _expert("digits-all", 80, 6, "strong"),
        _expert("digits-round", 80, 6, "strong"),
        _expert("fashion-trouser-vs-rest", 500, 3, "weak"),
        _expert("fashion-bag-vs-rest", 20, 1, "weak"),
        _expert("mnist-1-vs-rest", 200, 3, "weak"),
        _expert("mnist-all", 5, 1, "weak", suffix="-few"),
        _expert("digits-0-vs-rest", 80, 3, "weak"),
        # more source tasks
        _expert("fashion-sneaker-vs-rest", 300, 2, "weak"),
        _expert("fashion-shirt-vs-rest", 300, 2, "weak"),
        _expert("fashion-coat-vs-rest", 300, 2, "weak"),
        _expert("fashion-dress-vs-rest", 300, 2, "weak"),
        _expert("mnist-straight", 220, 3, "strong"),
        _expert("mnist-low-high", 500, 2, "strong"),
        _expert("mnist-7-vs-rest", 200, 3, "weak"),
        _expert("mnist-4-vs-rest", 200, 3, "weak"),
        _expert("digits-straight", 80, 4, "strong"),
        _expert("digits-even-odd", 200, 4, "strong"),
        _expert("digits-5-vs-rest", 80, 3, "weak"),
        # the same source task at smaller training budgets
        _expert("fashion-all", 30, 2, "weak", suffix="-small"),
        _expert("fashion-all", 5, 1, "weak", suffix="-few"),
        _expert("fashion-footwear", 30, 1, "weak", suffix="-small"),
        _expert("mnist-all", 50, 2, "weak", suffix="-small"),
        _expert("digits-all", 20, 3, "weak", suffix="-small"),
        IMAGENET,
    ]


@lru_cache(maxsize=None)
def pools(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """Image indices of pool A and pool B of a dataset: every original class halved once with POOL_SEED."""
    _, labels = samples.arrays(dataset)
    rng = np.random.default_rng(POOL_SEED)
    halves: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = (len(members) + 1) // 2
        halves[0].append(members[:cut])
        halves[1].append(members[cut:])
    a, b = (np.sort(np.concatenate(h)) for h in halves)
    a.flags.writeable = b.flags.writeable = False
    return a, b


def _draw(sample: str, pool: np.ndarray, per_class: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Per task class, up to per_class image indices of pool, drawn evenly over the original classes it merges."""
    s = samples.spec(sample)
    _, labels = samples.arrays(s.dataset)
    chosen = []
    for group in s.groups:
        members = pool[np.isin(labels[pool], group)]
        chosen.append(members[balanced_order(labels[members], per_class, rng)])
    return chosen


def _task(sample: str, chosen: list[np.ndarray], name: str, pool: str) -> Task:
    s = samples.spec(sample)
    images, _ = samples.arrays(s.dataset)
    labels = np.concatenate([np.full(len(c), k, dtype=np.int64) for k, c in enumerate(chosen)])
    task = Task.from_arrays(images[np.concatenate(chosen)], labels, classes=list(s.classes), name=name)
    task.source = f"sample:{sample}:pool-{pool}"
    return task


def _seed(*parts: int | str) -> np.random.Generator:
    """A generator keyed by ints and strings (crc32: stable across processes, unlike hash())."""
    return np.random.default_rng([p if isinstance(p, int) else zlib.crc32(p.encode()) for p in parts])


def _source_draw(spec: ExpertSpec, per_class: int | None, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """An expert's training indices per class, and up to HELDOUT_PER_CLASS other pool-A indices per class."""
    if spec.sample is None:
        raise ValueError(f"expert {spec.name!r} was not trained on a sample task: it has no source task")
    a, _ = pools(spec.dataset)
    train = _draw(spec.sample, a, spec.per_class if per_class is None else per_class, _seed(seed, spec.name))
    rest = np.setdiff1d(a, np.concatenate(train))
    return train, _draw(spec.sample, rest, HELDOUT_PER_CLASS, _seed(seed, spec.name, "held-out"))


def source_task(spec: ExpertSpec, per_class: int | None = None, seed: int = 0) -> Task:
    """The expert's training images (pool A); per_class/seed draw another sample of the same task."""
    train, _ = _source_draw(spec, per_class, seed)
    return _task(spec.sample, train, spec.name, "A")


def targets(seed: int, quick: bool = False, train_per_class: int = 30, test_per_class: int | None = None
            ) -> list[Target]:
    """Every named sample task on pool B (quick: 4): test images fixed (per class: test_per_class, default
    TEST_PER_CLASS of its dataset, 50 when quick), training images drawn with seed."""
    out = []
    for sample in QUICK_TARGETS if quick else samples.names():
        dataset = samples.spec(sample).dataset
        _, b = pools(dataset)
        n_test = test_per_class or (50 if quick else TEST_PER_CLASS[dataset])
        test = _draw(sample, b, n_test, _seed(TEST_SEED, sample))
        train = _draw(sample, np.setdiff1d(b, np.concatenate(test)), train_per_class, _seed(seed, sample))
        out.append(Target(sample, dataset, sample, _task(sample, train, sample, "B"),
                          _task(sample, test, f"{sample}-test", "B")))
    return out


def _task_features(probe: taskindex.Probe, task: Task, image_size: int) -> np.ndarray:
    return forward(probe.backbone, probe, task.load(np.arange(len(task)), image_size)).numpy().astype(np.float32)


def features(weights_path: str | None, images_task: Task, image_size: int = 64) -> np.ndarray:
    """Frozen penultimate (1280-d) float32 features of a task's images under an expert (None: ImageNet)."""
    probe = taskindex.load_probe(PROBE, weights=weights_path or "imagenet", image_size=image_size, device="cpu")
    with torch_threads(THREADS):
        return _task_features(probe, images_task, image_size)


def linear_error(train_feats, train_labels, test_feats, test_labels, n_classes: int, seed: int) -> float:
    """Test error of a class-balanced multinomial logistic regression on standardised features (supp. 4.1)."""
    head = fit_head(torch.as_tensor(train_feats), torch.tensor(train_labels), n_classes, seed=seed)
    with torch.no_grad():
        predicted = head(torch.as_tensor(test_feats)).argmax(1).numpy()
    return float(np.mean(predicted != np.asarray(test_labels)))


def _finetune(spec: ExpertSpec, image_size: int, progress: bool) -> tuple[dict[str, torch.Tensor], dict]:
    """Fine-tune the ImageNet network on the expert's source task: the EfficientNet state_dict and a log."""
    train_idx, held_idx = _source_draw(spec, None, 0)
    train, held = _task(spec.sample, train_idx, spec.name, "A"), _task(spec.sample, held_idx, spec.name, "A")
    state, log = finetune(train, held, spec.epochs, spec.name, image_size, progress)
    return state, {"spec": asdict(spec), **log}


def _atomic(path: Path, write) -> None:
    """write(tmp) then rename: an interrupted run leaves the old file or none, never half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _expert_config(spec: ExpertSpec, image_size: int) -> dict:
    return {"spec": asdict(spec), "image_size": image_size, "version": VERSION, "pool_seed": POOL_SEED}


def parallel(fn, jobs: list[tuple], workers: int, desc: str, progress: bool) -> list:
    """fn(*job) for every job, in `workers` spawned processes of THREADS threads each (1: in this one), in order:
    processes, not threads, for the reason THREADS gives."""
    bar = tqdm(total=len(jobs), desc=desc, unit="job", disable=not progress)
    if workers <= 1 or len(jobs) <= 1:
        out = []
        for job in jobs:
            out.append(fn(*job))
            bar.update()
        bar.close()
        return out
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        for f in futures:
            f.add_done_callback(lambda _: bar.update())
        out = [f.result() for f in futures]
    bar.close()
    return out


def _train_one(spec: ExpertSpec, image_size: int, weights: Path, log_file: Path, config: dict) -> None:
    with torch_threads(THREADS):
        state, log = _finetune(spec, image_size, progress=False)
    _atomic(weights, lambda tmp: torch.save(state, tmp))
    _atomic(log_file, lambda tmp: tmp.write_text(json.dumps({"config": config, **log}, indent=1)))


def train_experts(cache_dir, image_size: int = 64, quick: bool = False, progress=True,
                  workers: int = 1) -> dict[str, str | None]:
    """Expert name -> state_dict path (None for 'imagenet'); trains those missing or made with other settings."""
    folder = Path(cache_dir) / "experts"
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str | None] = {}
    missing = []
    for spec in experts(quick):
        if spec.sample is None:
            paths[spec.name] = None
            continue
        weights, log_file = folder / f"{spec.name}.pt", folder / f"{spec.name}.json"
        config = _expert_config(spec, image_size)
        if not (weights.exists() and log_file.exists() and json.loads(log_file.read_text()).get("config") == config):
            missing.append((spec, image_size, weights, log_file, config))
        paths[spec.name] = str(weights)
    parallel(_train_one, missing, workers, "train experts", progress)
    return paths


def _table_key(seeds, image_size: int, quick: bool) -> str:
    config = {
        "version": VERSION, "table": TABLE_VERSION, "pool_seed": POOL_SEED, "test_seed": TEST_SEED,
        "seeds": [int(s) for s in seeds],
        "image_size": image_size, "quick": quick, "experts": [_expert_config(s, image_size) for s in experts(quick)],
        "targets": [(t.name, len(t.train), len(t.test)) for t in targets(0, quick)],
    }
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def error_table(cache_dir, seeds=(0, 1, 2), image_size=64, quick=False, progress=True,
                workers: int = 1) -> pd.DataFrame:
    """Columns task, model, seed, error, n_test (its test images), feature_seconds, logme, logme_seconds:
    every expert on every target, cached to Parquet.

    feature_seconds is the wall time of the expert's forward pass over the target's training images; logme
    the LogME score of those features (higher: should transfer better) and logme_seconds its cost.
    """
    path = Path(cache_dir) / f"errors-{_table_key(seeds, image_size, quick)}.parquet"
    if path.exists():
        return pd.read_parquet(path)
    weights = train_experts(cache_dir, image_size, quick, progress, workers)
    jobs = [(model, w, tuple(seeds), image_size, quick) for model, w in weights.items()]
    table = pd.DataFrame([row for rows in parallel(_expert_errors, jobs, workers, "error table", progress)
                          for row in rows])
    _atomic(path, lambda tmp: table.to_parquet(tmp, index=False))
    return table


def _expert_errors(model: str, weights_path: str | None, seeds: tuple, image_size: int, quick: bool) -> list[dict]:
    """The rows of error_table for one expert: every target, every seed (the test features computed once)."""
    by_seed = {seed: targets(seed, quick) for seed in seeds}
    rows = []
    with torch_threads(THREADS):
        probe = taskindex.load_probe(PROBE, weights=weights_path or "imagenet", image_size=image_size, device="cpu")
        for i, target in enumerate(by_seed[seeds[0]]):
            test = target.test  # the same images for every seed
            test_feats = _task_features(probe, test, image_size)
            for seed in seeds:
                train = by_seed[seed][i].train
                start = time.perf_counter()
                train_feats = _task_features(probe, train, image_size)
                seconds = time.perf_counter() - start
                error = linear_error(train_feats, train.labels, test_feats, test.labels, len(test.classes), seed)
                start = time.perf_counter()
                score = logme(train_feats, train.labels)
                rows.append({"task": target.name, "model": model, "seed": int(seed), "error": error,
                             "n_test": len(test), "feature_seconds": seconds, "logme": score,
                             "logme_seconds": time.perf_counter() - start})
    return rows


def summary(table: pd.DataFrame, quick: bool = False) -> pd.DataFrame:
    """Per target dataset: mean error of 'imagenet', of the best and worst expert, and of the per-task oracle."""
    errors = table.groupby(["task", "model"])["error"].mean().unstack()
    dataset = pd.Series({t.name: t.dataset for t in targets(0, quick)})
    out = {}
    for name, rows in errors.groupby(dataset[errors.index].values):
        means = rows.mean()
        out[name] = {"tasks": len(rows), "imagenet": means["imagenet"], "best expert": means.min(),
                     "best": means.idxmin(), "worst expert": means.max(), "worst": means.idxmax(),
                     "oracle": rows.min(axis=1).mean(), "spread": (rows.max(axis=1) - rows.min(axis=1)).mean()}
    return pd.DataFrame(out).T


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser("tools.experiments.expert_zoo", __doc__.splitlines()[0], raw=False)
    parser.add_argument("--cache-dir", default=str(CACHE_DIR))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--image-size", type=int, default=None, help="default 64, quick 32")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="processes (default: one per core)")
    args = parser.parse_args(argv)
    size = args.image_size or (32 if args.quick else 64)
    start = time.perf_counter()
    table = error_table(args.cache_dir, tuple(args.seeds), size, args.quick, workers=args.workers)
    print(f"{len(table)} rows in {time.perf_counter() - start:.0f} s")
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_rows", 100):
        print((table.groupby(["task", "model"])["error"].mean().unstack() * 100).round(1))
        print(summary(table, args.quick))


if __name__ == "__main__":
    sys.exit(main())
