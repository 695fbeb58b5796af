"""TASK2VEC: embed a task with a probe, and the embedding's file format.

Pipeline: load a class-balanced subset once (uint8, probe resolution) -> probe
features once -> fit the linear head on cached features -> per-filter Fisher
(montecarlo) or precision (variational) -> Embedding.

File format (`.emb`): a ZIP archive (stored, not compressed) holding
`embedding.json` ({"format": "taskindex-embedding", "version": 1, "layout",
"meta"}), `vector.npy` and `prior.npy` (little-endian float32, read with
allow_pickle=False). Written to a temporary file and renamed, so a crash never
leaves a half-written embedding.
"""

from __future__ import annotations

import copy
import io
import json
import os
import tempfile
import time
import zipfile
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .errors import EmbeddingFileError, TaskError, TaskIndexError
from .fisher import fisher_pass, variational_precision, weight_scale_prior, weights_per_filter
from .head import fit_head
from .probes import Probe, resolve_device
from .tasks import Task, balanced_order

FORMAT = "taskindex-embedding"
FORMAT_VERSION = 1
METHODS = ("montecarlo", "variational")
EXPECTATIONS = ("sample", "exact")
# t0 = PRIOR_SCALE / mean(w_layer^2): about 1e-3 of a typical filter's Fisher on the
# shipped probe (tools/bench_embed.py), so it floors dead filters without hiding live ones.
PRIOR_SCALE = 1e-8
# Identity keys that must agree for two embeddings to be comparable.
SPACE_KEYS = ("probe", "fingerprint", "image_size", "method", "prior_scale")


@dataclass
class Embedding:
    """A task's TASK2VEC vector: per-filter Fisher plus the prior t0, with its provenance.

    `vector` always includes the prior, so every entry is > 0 and distances are
    finite; `prior` is the trivial embedding (what a task without information
    embeds to); `fisher` is the estimate without the prior.
    """

    vector: np.ndarray
    prior: np.ndarray
    layout: list[tuple[str, int]]
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.vector = np.ascontiguousarray(self.vector, dtype=np.float32)
        self.prior = np.ascontiguousarray(self.prior, dtype=np.float32)
        self.layout = [(str(n), int(c)) for n, c in self.layout]
        if self.vector.ndim != 1 or self.vector.shape != self.prior.shape:
            raise EmbeddingFileError(
                f"vector and prior must be 1-D of the same length; got {self.vector.shape} and {self.prior.shape}")
        if sum(c for _, c in self.layout) != self.vector.size:
            raise EmbeddingFileError(
                f"layout counts {sum(c for _, c in self.layout)} filters but the vector has {self.vector.size}")

    @property
    def dim(self) -> int:
        return int(self.vector.size)

    @property
    def fisher(self) -> np.ndarray:
        return np.maximum(self.vector - self.prior, 0.0)

    @property
    def space(self) -> dict:
        """What must agree for two embeddings to be compared (probe identity + method)."""
        return {k: self.meta.get(k) for k in SPACE_KEYS}

    def by_layer(self) -> dict[str, np.ndarray]:
        out, start = {}, 0
        for name, count in self.layout:
            out[name] = self.vector[start:start + count]
            start += count
        return out

    def __repr__(self) -> str:
        return (f"Embedding(task={self.meta.get('task')!r}, probe={self.meta.get('probe')!r}, "
                f"method={self.meta.get('method')!r}, dim={self.dim})")

    def save(self, path: str | os.PathLike) -> None:
        path = os.fspath(path)
        header = {"format": FORMAT, "version": FORMAT_VERSION, "layout": self.layout, "meta": self.meta}
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".emb-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as z:
                    z.writestr("embedding.json", json.dumps(header, indent=1, sort_keys=True))
                    for member, arr in (("vector.npy", self.vector), ("prior.npy", self.prior)):
                        buf = io.BytesIO()
                        np.save(buf, arr.astype("<f4"), allow_pickle=False)
                        z.writestr(member, buf.getvalue())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Embedding":
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise EmbeddingFileError(f"embedding file {path!r} does not exist")
        try:
            with zipfile.ZipFile(path) as z:
                header = json.loads(z.read("embedding.json"))
                arrays = {m: np.load(io.BytesIO(z.read(m)), allow_pickle=False)
                          for m in ("vector.npy", "prior.npy")}
        except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as exc:
            raise EmbeddingFileError(
                f"{path!r} is not a taskindex embedding ({type(exc).__name__}): "
                "create one with `taskindex embed DATA -o FILE.emb`") from exc
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise EmbeddingFileError(f"{path!r} is not a taskindex embedding (format {header.get('format')!r})")
        if header.get("version", 0) > FORMAT_VERSION:
            raise EmbeddingFileError(
                f"{path!r} has format version {header['version']}; this taskindex reads up to "
                f"{FORMAT_VERSION}: upgrade taskindex")
        vec, prior = arrays["vector.npy"], arrays["prior.npy"]
        if not (np.all(np.isfinite(vec)) and np.all(np.isfinite(prior))) or (vec <= 0).any() or (prior <= 0).any():
            raise EmbeddingFileError(f"{path!r} holds non-finite or non-positive values: the file is damaged")
        return cls(vec, prior, [tuple(x) for x in header["layout"]], header.get("meta", {}))


def _check_options(method, expectation, max_samples, batch_size, seed):
    if method not in METHODS:
        raise TaskIndexError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    if expectation not in EXPECTATIONS:
        raise TaskIndexError(f"unknown expectation {expectation!r}: use 'sample' (a label drawn per image) "
                             "or 'exact' (sum over labels)")
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 2):
        raise TaskIndexError(f"max_samples must be an integer >= 2 or None; got {max_samples!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise TaskIndexError(f"batch_size must be a positive integer; got {batch_size!r}")
    if not isinstance(seed, int):
        raise TaskIndexError(f"seed must be an integer; got {seed!r}")


def embed(
    task: Task,
    probe: Probe,
    method: str = "montecarlo",
    *,
    max_samples: int | None = 1000,
    seed: int = 0,
    batch_size: int = 64,
    expectation: str = "sample",
    prior_scale: float = PRIOR_SCALE,
    epochs: int = 10,
    lr: float = 0.05,
    beta: float = 1.0,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> Embedding:
    """Embed `task` with `probe`.

    montecarlo: F_k = mean_n mean_{w in k} (d log p(y_n|x_n)/dw)^2, squares per
    sample, y_n drawn from the head's predictive distribution (or the exact
    expectation over labels with expectation='exact'). variational: the robust
    estimator of the paper (sec. 3.1): starting from the montecarlo estimate,
    `epochs` passes of SGVB at learning rate `lr` with weight noise scale beta/N.
    Both return Fisher + t0, t0 = prior_scale / mean(w_layer^2).
    """
    if not isinstance(task, Task):
        raise TaskIndexError(f"task must be a taskindex.Task; got {type(task).__name__} "
                             "(build one with Task.from_folder / from_arrays / from_dataset)")
    if not isinstance(probe, Probe):
        raise TaskIndexError(f"probe must be a taskindex.Probe; got {type(probe).__name__} "
                             "(use taskindex.load_probe(name))")
    _check_options(method, expectation, max_samples, batch_size, seed)
    if len(task) == 0:
        raise TaskError(f"task {task.name!r} has no images")
    present, first, inverse = np.unique(task.labels, return_index=True, return_inverse=True)
    # classes numbered by first appearance, so renaming or permuting labels changes nothing
    canonical = np.argsort(np.argsort(first))[inverse]
    if present.size < 2:
        raise TaskError(f"task {task.name!r} has only one class ({task.classes[int(present[0])]!r}): "
                        "a classification task needs at least two classes")
    start = time.perf_counter()
    dev = resolve_device(device) if device is not None else probe.device
    backbone = probe.backbone
    if dev != probe.device:  # never move the caller's probe: work on a copy
        backbone = copy.deepcopy(probe.backbone).to(dev)
        if dev.type == "cpu":
            backbone = backbone.to(memory_format=torch.channels_last)
    was_training = backbone.training
    backbone.eval()
    try:
        idx = balanced_order(canonical, max_samples, np.random.default_rng(seed))
        labels = torch.as_tensor(canonical[idx], dtype=torch.long)
        n_classes = int(present.size)
        if torch.unique(labels).numel() < 2:
            raise TaskError(f"max_samples={max_samples} leaves a single class of task {task.name!r}: raise it")
        with tqdm(total=len(idx) * (3 if method == "montecarlo" else 3 + epochs), disable=_quiet(progress),
                  desc=f"embed {task.name}", unit="img", leave=False) as bar:
            images = torch.cat([task.load(idx[i:i + 256], probe.image_size) for i in range(0, len(idx), 256)])
            bar.update(len(idx))

            def norm(batch):
                return probe.normalize(batch, dev)

            feats = []
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                for i in range(0, len(idx), batch_size):
                    feats.append(backbone(norm(images[i:i + batch_size])).float().cpu())
                    bar.update(min(batch_size, len(idx) - i))
            features = torch.cat(feats)
            if not torch.isfinite(features).all():
                raise TaskError(f"the probe produced non-finite features on task {task.name!r}: check the images")
            head = fit_head(features, labels, n_classes, seed=seed).to(dev)
            gen = torch.Generator().manual_seed(seed)
            prior = weight_scale_prior(backbone, prior_scale)
            m = weights_per_filter(backbone)
            draws = None
            if expectation == "sample":
                with torch.no_grad():
                    probs = torch.softmax(head(features.to(dev)).float(), 1).cpu()
                draws = torch.multinomial(probs, 1, generator=gen).flatten()
            batches = ((norm(images[i:i + batch_size]), None if draws is None else draws[i:i + batch_size].to(dev))
                       for i in range(0, len(idx), batch_size))
            vector = fisher_pass(backbone, head, batches, on_batch=bar.update) / (len(idx) * m) + prior
            if method == "variational":
                order_gen = torch.Generator().manual_seed(seed + 1)

                def shuffled():
                    perm = torch.randperm(len(idx), generator=order_gen)
                    for i in range(0, len(idx), batch_size):
                        sel = perm[i:i + batch_size]
                        yield norm(images[sel]), labels[sel].to(dev)

                vector = variational_precision(backbone, head, shuffled, prior, epochs, lr, seed, nu=beta / len(idx),
                                               init=vector, on_batch=bar.update)
    finally:
        backbone.train(was_training)
    if not np.all(np.isfinite(vector)):
        raise TaskError(f"the Fisher of task {task.name!r} is not finite: check the images for extreme values")
    meta = dict(probe.identity)
    meta.update({
        "method": method,
        "prior_scale": float(prior_scale),
        "expectation": expectation if method == "montecarlo" else None,
        "epochs": epochs if method == "variational" else None,
        "beta": beta if method == "variational" else None,
        "task": task.name,
        "source": task.source,
        "n_samples": int(len(idx)),
        "n_classes": n_classes,
        "seed": seed,
        "device": str(dev),
        "seconds": round(time.perf_counter() - start, 3),
        "version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    return Embedding(vector, prior, probe.layout, meta)


def _quiet(progress: bool | None) -> bool | None:
    return None if progress is None else not progress

