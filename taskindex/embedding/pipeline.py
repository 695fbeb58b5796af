"""TASK2VEC: embed a task with a probe.

Pipeline: load a class-balanced subset once (uint8, probe resolution) -> probe
features once -> fit the linear head on cached features -> per-filter Fisher
(montecarlo) or precision (variational) -> Embedding.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from taskindex import __version__
from taskindex import validation
from taskindex.cores import idle_cores
from taskindex.embedding.vector import PRIOR_SCALE, Embedding
from taskindex.errors import TaskError, TaskIndexError
from taskindex.embedding.estimators import DEFAULT_ESTIMATOR, FilterEstimator, estimator_id
from taskindex.embedding.fisher import fisher_pass, variational_precision, weight_scale_prior, weights_per_filter
from taskindex.embedding.head import fit_head
from taskindex.embedding.probes import Probe, resolve_device
from taskindex.data.task import Task, balanced_order

METHODS = ("montecarlo", "variational")
EXPECTATIONS = ("sample", "exact")
ON_ERROR = ("raise", "skip")
LABEL_PASSES = 2
NAMED_BAD_IMAGES = 20  # an error lists this many unreadable images, then counts the rest
_CHUNK = 256  # images loaded per call while drawing the sample


def check_on_error(on_error: str) -> None:
    """on_error checked before any work, also by the callers that read a task or load a probe first."""
    validation.choice(on_error, "on_error", ON_ERROR, fix="'skip' embeds the readable images and lists the rest")


def _check_options(method, expectation, max_samples, batch_size, seed, label_passes, threads, on_error):
    validation.choice(method, "method", METHODS)
    check_on_error(on_error)
    validation.choice(expectation, "expectation", EXPECTATIONS,
                      fix="'sample' draws a label per image, 'exact' sums over labels")
    validation.integer(max_samples, "max_samples", 2, none="every image")
    validation.integer(batch_size, "batch_size")
    validation.integer(seed, "seed", None)
    validation.integer(label_passes, "label_passes", none="all C - 1")
    validation.integer(threads, "threads", none="the idle cores")


def embed(
    task: Task,
    probe: Probe,
    method: str = "montecarlo",
    *,
    max_samples: int | None = 1000,
    seed: int = 0,
    batch_size: int = 64,
    expectation: str = "exact",
    estimator: str = DEFAULT_ESTIMATOR,
    trim: float | None = None,
    label_passes: int | None = LABEL_PASSES,
    prior_scale: float = PRIOR_SCALE,
    epochs: int = 10,
    lr: float = 0.05,
    beta: float = 1.0,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    threads: int | None = None,
    on_error: str = "raise",
) -> Embedding:
    """Embed `task` with `probe`.

    montecarlo: F_k = mean_n mean_{w in k} (d log p(y_n|x_n)/dw)^2, squares per
    sample, y_n drawn from the head's predictive distribution (or the exact
    expectation over labels with expectation='exact'). variational: the robust
    estimator of the paper (sec. 3.1): starting from the montecarlo estimate,
    `epochs` passes of SGVB at learning rate `lr` with weight noise scale beta/N.
    Both return Fisher + t0, t0 = prior_scale / mean(w_layer^2).
    on_error 'raise' names every unreadable image of the sample; 'skip' embeds the others (meta lists them).
    """
    _check_task_and_probe(task, probe)
    _check_options(method, expectation, max_samples, batch_size, seed, label_passes, threads, on_error)
    estimator = estimator_id(estimator, trim)
    canonical, n_classes = _canonical_labels(task)
    start = time.perf_counter()
    dev, backbone = _backbone_on(probe, device)
    passes = 3 if method == "montecarlo" else 3 + epochs
    with _eval_mode(backbone), _strict_fp32(dev), thread_rule(dev, threads), tqdm(
            total=_sample_size(task, max_samples) * passes, disable=_quiet(progress), desc=f"embed {task.name}",
            unit="img", leave=False) as bar:
        sample, skipped = _Sample.load(task, canonical, max_samples, seed, on_error, probe, dev, batch_size)
        bar.total = len(sample) * passes
        bar.update(len(sample))
        features = _features(backbone, sample, task.name, bar.update)
        head = fit_head(features, sample.labels, n_classes, seed=seed).to(dev)
        draws = _drawn_labels(head, features, dev, seed) if expectation == "sample" else None
        prior = weight_scale_prior(backbone, prior_scale)
        vector = _montecarlo(backbone, head, sample, draws, estimator, prior, label_passes, bar.update)
        if method == "variational":
            vector = variational_precision(backbone, head, sample.shuffled(seed + 1), prior, epochs, lr, seed,
                                           nu=beta / len(sample), init=vector, on_batch=bar.update)
    if not np.all(np.isfinite(vector)):
        raise TaskError(f"the Fisher of task {task.name!r} is not finite: check the images for extreme values")
    meta = _meta(probe, task, method=method, prior_scale=prior_scale, estimator=estimator, expectation=expectation,
                 label_passes=label_passes, epochs=epochs, beta=beta, n_samples=len(sample), n_classes=n_classes,
                 seed=seed, dev=dev, start=start, skipped=skipped if on_error == "skip" else None)
    return Embedding(vector, prior, probe.layout, meta)


def _check_task_and_probe(task, probe) -> None:
    if not isinstance(task, Task):
        raise TaskIndexError(f"task must be a taskindex.Task; got {type(task).__name__} "
                             "(build one with Task.from_folder / from_arrays / from_dataset)")
    if not isinstance(probe, Probe):
        raise TaskIndexError(f"probe must be a taskindex.Probe; got {type(probe).__name__} "
                             "(use taskindex.load_probe(name))")


def _canonical_labels(task: Task) -> tuple[np.ndarray, int]:
    """Class ids numbered by first appearance, so renaming or permuting labels changes nothing; and their count."""
    if len(task) == 0:
        raise TaskError(f"task {task.name!r} has no images")
    present, first, inverse = np.unique(task.labels, return_index=True, return_inverse=True)
    canonical = np.argsort(np.argsort(first))[inverse]
    if present.size < 2:
        raise TaskError(f"task {task.name!r} has only one class ({task.classes[int(present[0])]!r}): "
                        "a classification task needs at least two classes")
    return canonical, int(present.size)


def _backbone_on(probe: Probe, device: str | torch.device | None) -> tuple[torch.device, torch.nn.Module]:
    """The device to work on and the probe's backbone there; never moves the caller's probe: works on a copy."""
    dev = resolve_device(device) if device is not None else probe.device
    backbone = probe.backbone
    if dev != probe.device:
        backbone = copy.deepcopy(probe.backbone).to(dev)
        if dev.type == "cpu":
            backbone = backbone.to(memory_format=torch.channels_last)
    return dev, backbone


def _sample_size(task: Task, max_samples: int | None) -> int:
    return len(task) if max_samples is None else min(max_samples, len(task))


def _readable_sample(task: Task, canonical: np.ndarray, max_samples: int | None, seed: int, on_error: str,
                     size: int) -> tuple[np.ndarray, torch.Tensor, list]:
    """The rows to embed in class-balanced order, their images at `size`, and the unreadable images met.

    'skip' goes on down the balanced order past unreadable images until the sample is full; 'raise' reads the
    whole sample first, so that its error names every bad image at once."""
    order = balanced_order(canonical, None, np.random.default_rng(seed))
    want, skip = _sample_size(task, max_samples), on_error == "skip"
    parts, rows, bad, start = [], [], [], 0
    while start < len(order) and (len(rows) < want if skip else start < want):
        chunk = order[start:start + min(_CHUNK, want - (len(rows) if skip else start))]
        found: list = []
        parts.append(task.load(chunk, size, bad=found))
        dropped = {position for position, _, _ in found}
        rows.extend(row for position, row in enumerate(chunk) if position not in dropped)
        bad.extend((int(chunk[position]), where, why) for position, where, why in found)
        start += len(chunk)
    bad.sort()
    if bad and not skip:
        _raise_bad_images(task, bad, start)
    idx = np.array(rows, dtype=np.int64)
    if len(np.unique(canonical[idx])) < 2:
        if bad:
            raise TaskError(f"after skipping {len(bad)} unreadable images (first: {bad[0][1]}), the readable ones "
                            f"of task {task.name!r} hold fewer than two classes: replace or remove the bad files")
        what = f"max_samples={max_samples} leaves a single class of task {task.name!r}"
        raise TaskError(f"{what}: raise it", cli=f"{what}: raise --max-samples")
    return idx, torch.cat(parts), bad


def _raise_bad_images(task: Task, bad: list, tried: int) -> None:
    named = "; ".join(f"{where} ({why})" for _, where, why in bad[:NAMED_BAD_IMAGES])
    more = f"; and {len(bad) - NAMED_BAD_IMAGES} more" if len(bad) > NAMED_BAD_IMAGES else ""
    what = (f"cannot read image{'s' if len(bad) > 1 else ''} of task {task.name!r} ({len(bad)} of the {tried} "
            f"sampled): {named}{more}")
    raise TaskError(f"{what}. Replace or remove them, or pass on_error='skip' to embed the readable ones",
                    cli=f"{what}. Replace or remove them, or pass --skip-bad-images to embed the readable ones")


@dataclasses.dataclass
class _Sample:
    """The sampled images, loaded once at probe resolution (uint8), normalised batch by batch on the device."""

    rows: np.ndarray
    images: torch.Tensor
    labels: torch.Tensor
    probe: Probe
    dev: torch.device
    batch_size: int

    @classmethod
    def load(cls, task: Task, canonical: np.ndarray, max_samples: int | None, seed: int, on_error: str,
             probe: Probe, dev: torch.device, batch_size: int) -> tuple[_Sample, list]:
        """The class-balanced sample with its canonical labels, and the unreadable images it skipped."""
        idx, images, skipped = _readable_sample(task, canonical, max_samples, seed, on_error, probe.image_size)
        labels = torch.as_tensor(canonical[idx], dtype=torch.long)
        return cls(idx, images, labels, probe, dev, batch_size), skipped

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, order: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(positions in the sample, normalised images on the device) for `order` in batches."""
        for i in range(0, len(order), self.batch_size):
            sel = order[i:i + self.batch_size]
            yield sel, self.probe.normalize(self.images[sel], self.dev)

    def in_order(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches(torch.arange(len(self)))

    def shuffled(self, seed: int) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
        """A fresh shuffle of (images, labels) batches per call, from one generator: one epoch of SGVB each."""
        order = torch.Generator().manual_seed(seed)

        def epoch():
            for sel, x in self.batches(torch.randperm(len(self), generator=order)):
                yield x, self.labels[sel].to(self.dev)

        return epoch


def _features(backbone: torch.nn.Module, sample: _Sample, name: str, on_done: Callable[[int], object]) -> torch.Tensor:
    """The probe's features of every sampled image, computed once: the head is fitted on them."""
    with torch.no_grad():
        features = torch.cat([backbone(x).float().cpu() for _, x in sample.in_order()])
    on_done(len(sample))
    if not torch.isfinite(features).all():
        raise TaskError(f"the probe produced non-finite features on task {name!r}: check the images")
    return features


def _drawn_labels(head: torch.nn.Module, features: torch.Tensor, dev: torch.device, seed: int) -> torch.Tensor:
    """One label per image drawn from the head's prediction, from the cached features: independent of the batch size."""
    with torch.no_grad():
        probs = torch.softmax(head(features.to(dev)).float(), 1).cpu()
    return torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed)).flatten()


def _montecarlo(backbone: torch.nn.Module, head: torch.nn.Module, sample: _Sample, draws: torch.Tensor | None,
                estimator: str, prior: np.ndarray, label_passes: int | None,
                on_batch: Callable[[int], object]) -> np.ndarray:
    """The montecarlo estimate: each filter's Fisher over the images (combined by `estimator`), per weight, plus t0."""
    per_image = FilterEstimator(estimator, len(sample), len(prior), device=sample.dev)
    fisher_pass(backbone, head, ((x, None if draws is None else draws[sel].to(sample.dev))
                                 for sel, x in sample.in_order()),
                on_batch=on_batch, estimator=per_image, label_passes=label_passes)
    return per_image.result().cpu().numpy() / weights_per_filter(backbone) + prior


def _meta(probe: Probe, task: Task, *, method: str, prior_scale: float, estimator: str, expectation: str,
          label_passes: int | None, epochs: int, beta: float, n_samples: int, n_classes: int, seed: int,
          dev: torch.device, start: float, skipped: list | None) -> dict:
    """The probe's identity and how the embedding was made: what makes two embeddings comparable."""
    meta = dict(probe.identity)
    meta.update({
        "method": method,
        "prior_scale": float(prior_scale),
        "estimator": estimator,
        "expectation": expectation,
        "label_passes": label_passes if expectation == "exact" else None,
        "epochs": epochs if method == "variational" else None,
        "beta": beta if method == "variational" else None,
        "task": task.name,
        "source": task.source,
        "n_samples": int(n_samples),
        "n_classes": n_classes,
        "seed": seed,
        "device": str(dev),
        "seconds": round(time.perf_counter() - start, 3),
        "version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    if skipped is not None:  # on_error='skip': which images the embedding leaves out, and why
        meta.update(skipped_images=len(skipped), skipped_files=[{"image": where, "error": why}
                                                                 for _, where, why in skipped])
    return meta


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module):
    """BatchNorm with its running statistics; the caller's train/eval flag is restored after."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _strict_fp32(dev: torch.device):
    """cuDNN's TF32 convolutions (on by default) and bf16 features moved the head and the sampled labels
    enough to change the embedding (d_sym 0.28 between CPU and H200 runs, tools/gpu_check.py): use fp32."""
    if dev.type != "cuda":
        return contextlib.nullcontext()
    c = torch.backends.cudnn
    return c.flags(enabled=c.enabled, benchmark=c.benchmark, deterministic=c.deterministic, allow_tf32=False)


def thread_rule(dev: torch.device, threads: int | None):
    """CPU threads for torch: by default one per core that other processes leave idle (at least one).

    torch's OpenMP threads spin-wait for each other: with every core in use and another
    process holding one, an embedding slowed 10-80x on a 2-core machine, while one thread
    per idle core stays steady (taskindex.cores).
    """
    if dev.type != "cpu":
        return contextlib.nullcontext()
    return torch_threads(idle_cores(torch.get_num_threads()) if threads is None else threads)


@contextlib.contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _quiet(progress: bool | None) -> bool | None:
    return None if progress is None else not progress

