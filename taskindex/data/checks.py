"""Checks of labels, class names, indices and sizes, failing with one-line errors that say how to fix them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from taskindex import validation
from taskindex.errors import TaskError


def check_labels(labels: Any) -> np.ndarray:
    """Class ids as int64 (n,), with one-line errors that say how to get there."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1:
        raise TaskError(
            f"labels must be a 1-D sequence of class ids; got shape {array.shape}. Flatten them, e.g. labels.ravel()"
        )
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.dtype.kind == "b":
        return array.astype(np.int64)
    if array.dtype.kind in "US" or (array.dtype.kind == "O" and isinstance(array[0], str)):
        raise TaskError(
            f"labels must be integer class ids; got strings (e.g. {array[0]!r}). "
            "Map class names to 0..K-1 first, e.g. classes, labels = np.unique(names, return_inverse=True)"
        )
    if array.dtype.kind == "f":
        whole = bool(np.all(np.isfinite(array)) and np.all(array == np.round(array)))
        fix = "cast them with labels.astype(np.int64)" if whole else "map each class to an id 0..K-1"
        raise TaskError(f"labels must be integer class ids; got {array.dtype} values (e.g. {array[0]!r}); {fix}")
    if array.dtype.kind not in "iu":
        raise TaskError(
            f"labels must be integer class ids; got dtype {array.dtype}. "
            "Pass an int array such as np.array(labels, dtype=np.int64)"
        )
    negative = np.flatnonzero(array < 0)
    if len(negative):
        raise TaskError(
            f"labels must be non-negative integers; got {array[negative[0]]} at position {negative[0]}. "
            "Map class names to 0..K-1 first, e.g. np.unique(labels, return_inverse=True)"
        )
    return array.astype(np.int64)


def check_classes(classes: Sequence[str] | None, labels: np.ndarray) -> list[str]:
    n = int(labels.max()) + 1
    if classes is None:
        return [str(i) for i in range(n)]
    names = [str(c) for c in classes]
    if len(names) < n:
        raise TaskError(
            f"classes has {len(names)} names but labels go up to {n - 1}; pass one name per class id 0..{n - 1}"
        )
    if len(set(names)) != len(names):
        duplicate = next(c for c in names if names.count(c) > 1)
        raise TaskError(f"class names must be unique; {duplicate!r} appears more than once")
    return names


def check_indices(indices: Any, n: int) -> np.ndarray:
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    array = np.asarray(indices)
    if array.dtype.kind == "b" and array.shape == (n,):
        return np.flatnonzero(array)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise TaskError(f"indices must be a 1-D array of integers; got dtype {array.dtype} and shape {array.shape}")
    bad = np.flatnonzero((array < 0) | (array >= n))
    if len(bad):
        raise TaskError(f"indices must be in 0..{n - 1}; got {array[bad[0]]} at position {bad[0]}")
    return array.astype(np.int64)


def positive_int(value: Any, what: str) -> int:
    return validation.integer(value, what, error=TaskError)


def one_line(err: BaseException) -> str:
    """An exception's message on one line, for errors that quote it."""
    return " ".join(str(err).split()) or type(err).__name__
