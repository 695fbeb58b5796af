"""A labelled image-classification task, whatever it was stored as.

Every source (folder, Parquet, CSV, arrays, torch dataset) ends up as the same
`Task`, and every image goes through one resize path in `Task.load`, so an
embedding does not depend on how the user happened to store the data. The
sources are read in `readers`, the pixels held and decoded in `images`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from taskindex.data import readers
from taskindex.data.checks import check_classes, check_indices, check_labels, positive_int
from taskindex.data.images import ArrayImages, Images, as_uint8_nchw, resize
from taskindex.errors import TaskError

# Images resized per interpolate call: bounds the float buffer (256 x 3 x 224 x 224 x 4 B = 154 MB).
_CHUNK = 256


class Task:
    """Images with class labels: the unit that gets embedded, indexed and searched."""

    def __init__(
        self,
        images: Images,
        labels: Any,
        classes: Sequence[str] | None = None,
        *,
        name: str = "task",
        source: str = "",
        rows: np.ndarray | None = None,
    ) -> None:
        labels = check_labels(labels)
        rows = np.arange(len(images), dtype=np.int64) if rows is None else rows
        if len(rows) != len(labels):
            raise TaskError(f"got {len(rows)} images but {len(labels)} labels; pass exactly one label per image")
        if len(labels) == 0:
            raise TaskError("the task has no images; pass at least one image with its label")
        labels.flags.writeable = False
        self.name = name
        self.classes = check_classes(classes, labels)
        self.labels = labels
        self.source = source
        self._images = images
        self._rows = rows
        self._n_classes = len(np.unique(labels))

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"Task(name={self.name!r}, n={len(self)}, n_classes={self.n_classes}, source={self.source!r})"

    @property
    def n_classes(self) -> int:
        """Classes actually present, which can be fewer than len(classes) after a subset."""
        return self._n_classes

    def load(self, indices: Any, size: int, bad: list | None = None) -> torch.Tensor:
        """uint8 (k, 3, size, size) images, resized the same way whatever the source.

        With `bad`, images that cannot be decoded are left out and appended to it as (position in indices,
        where, why) instead of raising at the first, so one pass names them all."""
        rows = self._rows[check_indices(indices, len(self))]
        size = positive_int(size, "size")
        out = torch.empty((len(rows), 3, size, size), dtype=torch.uint8)
        found: list = []
        for start in range(0, len(rows), _CHUNK):
            chunk: list | None = None if bad is None else []
            for positions, batch in self._images.batches(rows[start : start + _CHUNK], chunk):
                out[torch.from_numpy(start + positions)] = resize(batch, size)
            found.extend((start + p, where, why) for p, where, why in chunk or ())
        if not found:
            return out
        bad.extend(found)
        keep = np.ones(len(rows), dtype=bool)
        keep[[p for p, _, _ in found]] = False
        return out[torch.from_numpy(keep)]

    def balanced_indices(self, max_samples: int | None, seed: int) -> np.ndarray:
        """Class-balanced sample order (supplementary 4.1), so big classes do not drown small ones."""
        if max_samples is not None:
            max_samples = positive_int(max_samples, "max_samples")
        return balanced_order(self.labels, max_samples, np.random.default_rng(seed))

    def subset(self, indices: Any, name: str | None = None) -> Task:
        """Same classes and source, fewer samples: label ids keep their meaning."""
        idx = check_indices(indices, len(self))
        return Task(
            self._images,
            self.labels[idx],
            self.classes,
            name=self.name if name is None else name,
            source=self.source,
            rows=self._rows[idx],
        )

    @classmethod
    def from_folder(cls, path: str | os.PathLike, name: str | None = None) -> Task:
        """torchvision ImageFolder layout: <path>/<class>/<image>, classes in sorted folder order."""
        root = Path(path).expanduser().absolute()
        return cls(*readers.read_folder(root), name=root.name if name is None else name, source=str(root))

    @classmethod
    def from_parquet(
        cls,
        path: str | os.PathLike,
        image_column: str = "image",
        label_column: str = "label",
        name: str | None = None,
    ) -> Task:
        """One row per image: a file path, encoded bytes, or the Hugging Face {bytes, path} struct."""
        return cls._from_table(readers.read_parquet, path, image_column, label_column, name)

    @classmethod
    def from_csv(
        cls,
        path: str | os.PathLike,
        image_column: str = "image",
        label_column: str = "label",
        name: str | None = None,
    ) -> Task:
        """One row per image file; relative paths are relative to the CSV, so the folder can move."""
        return cls._from_table(readers.read_csv, path, image_column, label_column, name)

    @classmethod
    def _from_table(cls, read, path: str | os.PathLike, image_column: str, label_column: str,
                    name: str | None) -> Task:
        """A task from a table file through `read` (Parquet or CSV), named after the file unless named."""
        path = Path(path).expanduser().absolute()
        return cls(*read(path, image_column, label_column), name=path.stem if name is None else name, source=str(path))

    @classmethod
    def from_arrays(
        cls,
        images: Any,
        labels: Any,
        classes: Sequence[str] | None = None,
        name: str | None = None,
    ) -> Task:
        """Pixels already in memory (numpy or torch); kept as uint8 so a large task stays small."""
        array = as_uint8_nchw(images, "images")
        return cls(ArrayImages(array), labels, classes, name="arrays" if name is None else name, source="arrays")

    @classmethod
    def from_dataset(cls, dataset: Any, name: str | None = None, classes: Sequence[str] | None = None) -> Task:
        """Any torch-style dataset: labels read once now, images only when loaded."""
        parts = readers.read_dataset(dataset, classes)
        return cls(*parts, name=type(dataset).__name__ if name is None else name, source="torch-dataset")


def balanced_order(labels: np.ndarray, max_samples: int | None, rng: np.random.Generator) -> np.ndarray:
    """Round-robin over classes (random order inside each class) so every class gets min(count, fair share).

    Truncating the round-robin order at any length keeps it as balanced as the counts allow; the order
    of classes within a round is random too, so the last partial round does not favour low class ids.
    """
    labels = np.asarray(labels)
    shuffled = rng.permutation(len(labels))
    by_class = shuffled[np.argsort(labels[shuffled], kind="stable")]
    sorted_labels = labels[by_class]
    present, starts, counts = np.unique(sorted_labels, return_index=True, return_counts=True)
    rank = np.arange(len(labels)) - np.repeat(starts, counts)
    slot = rng.permutation(len(present))[np.searchsorted(present, sorted_labels)]
    order = by_class[np.lexsort((slot, rank))]
    return order if max_samples is None else order[:max_samples]
