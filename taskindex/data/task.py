"""A labelled image-classification task, whatever it was stored as.

Every source (folder, Parquet, CSV, arrays, torch dataset) ends up as the same
`Task`, and every image goes through one resize path in `Task.load`, so an
embedding does not depend on how the user happened to store the data.
"""

from __future__ import annotations

import csv
import io
import json
import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from taskindex.errors import TaskError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# Images resized per interpolate call: bounds the float buffer (256 x 3 x 224 x 224 x 4 B = 154 MB).
_CHUNK = 256

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


class _Images(Protocol):
    """Where a task's pixels live; rows index the source, not the task."""

    def __len__(self) -> int: ...

    def batches(self, rows: np.ndarray) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield (positions in rows, uint8 (b, C, H, W) with C in {1, 3}) groups of equal shape."""
        ...


class _ArrayImages:
    """In-memory uint8 (N, C, H, W): one gather, one batched resize."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = torch.from_numpy(array)

    def __len__(self) -> int:
        return self.array.shape[0]

    def batches(self, rows: np.ndarray) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        yield np.arange(len(rows)), self.array[torch.from_numpy(rows)]


class _EncodedImages:
    """Image files or encoded bytes, decoded only when loaded so large tasks stay cheap to hold."""

    def __init__(self, items: list[Path | bytes], origin: str) -> None:
        self.items = items
        self.origin = origin

    def __len__(self) -> int:
        return len(self.items)

    def where(self, row: int) -> str:
        item = self.items[row]
        return str(item) if isinstance(item, Path) else f"row {row} of {self.origin}"

    def batches(self, rows: np.ndarray) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        yield from _group_by_shape([_decode(self.items[r], self.where(r)) for r in rows])


class _DatasetImages:
    """A torch-style dataset read item by item, so its own transforms and storage are used as they are."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, rows: np.ndarray) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        images = [_item_image(_dataset_item(self.dataset, int(r))[0], f"dataset item {r}") for r in rows]
        yield from _group_by_shape(images)


class Task:
    """Images with class labels: the unit that gets embedded, indexed and searched."""

    def __init__(
        self,
        images: _Images,
        labels: Any,
        classes: Sequence[str] | None = None,
        *,
        name: str = "task",
        source: str = "",
        rows: np.ndarray | None = None,
    ) -> None:
        labels = _check_labels(labels)
        rows = np.arange(len(images), dtype=np.int64) if rows is None else rows
        if len(rows) != len(labels):
            raise TaskError(f"got {len(rows)} images but {len(labels)} labels; pass exactly one label per image")
        if len(labels) == 0:
            raise TaskError("the task has no images; pass at least one image with its label")
        labels.flags.writeable = False
        self.name = name
        self.classes = _check_classes(classes, labels)
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

    def load(self, indices: Any, size: int) -> torch.Tensor:
        """uint8 (k, 3, size, size) images, resized the same way whatever the source."""
        rows = self._rows[_check_indices(indices, len(self))]
        size = _positive_int(size, "size")
        out = torch.empty((len(rows), 3, size, size), dtype=torch.uint8)
        for start in range(0, len(rows), _CHUNK):
            for positions, batch in self._images.batches(rows[start : start + _CHUNK]):
                out[torch.from_numpy(start + positions)] = _resize(batch, size)
        return out

    def balanced_indices(self, max_samples: int | None, seed: int) -> np.ndarray:
        """Class-balanced sample order (supplementary 4.1), so big classes do not drown small ones."""
        if max_samples is not None:
            max_samples = _positive_int(max_samples, "max_samples")
        return balanced_order(self.labels, max_samples, np.random.default_rng(seed))

    def subset(self, indices: Any, name: str | None = None) -> Task:
        """Same classes and source, fewer samples: label ids keep their meaning."""
        idx = _check_indices(indices, len(self))
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
        if not root.is_dir():
            raise TaskError(f"{root} is not a folder; from_folder expects <folder>/<class name>/<image files>")
        class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not class_dirs:
            raise TaskError(
                f"no class sub-folders in {root}; put each class's images in its own folder, e.g. {root}/cat/1.png"
            )
        items: list[Path | bytes] = []
        labels: list[int] = []
        for label, class_dir in enumerate(class_dirs):
            files = _image_files(class_dir)
            items.extend(files)
            labels.extend([label] * len(files))
        if not items:
            raise TaskError(
                f"the task has no images; found no {'/'.join(IMAGE_EXTENSIONS)} files in the class folders of {root}"
            )
        return cls(
            _EncodedImages(items, str(root)),
            np.array(labels, dtype=np.int64),
            [d.name for d in class_dirs],
            name=root.name if name is None else name,
            source=str(root),
        )

    @classmethod
    def from_parquet(
        cls,
        path: str | os.PathLike,
        image_column: str = "image",
        label_column: str = "label",
        name: str | None = None,
    ) -> Task:
        """One row per image: a file path, encoded bytes, or the Hugging Face {bytes, path} struct."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path).expanduser().absolute()
        try:
            schema = pq.read_schema(path)
            _check_columns(path, schema.names, image_column, label_column)
            table = pq.read_table(path, columns=list(dict.fromkeys([image_column, label_column])))
        except (OSError, pa.ArrowException) as err:
            raise TaskError(f"cannot read Parquet file {path}: {_one_line(err)}") from err
        images = _parquet_images(table.column(image_column), image_column, path)
        labels, classes = _parquet_labels(table.column(label_column), label_column, path)
        hf_names = _hf_class_names(schema.metadata, label_column)
        if classes is None and hf_names is not None and len(hf_names) > labels.max(initial=-1):
            classes = hf_names
        return cls(
            _EncodedImages(images, str(path)),
            labels,
            classes,
            name=path.stem if name is None else name,
            source=str(path),
        )

    @classmethod
    def from_csv(
        cls,
        path: str | os.PathLike,
        image_column: str = "image",
        label_column: str = "label",
        name: str | None = None,
    ) -> Task:
        """One row per image file; relative paths are relative to the CSV, so the folder can move."""
        path = Path(path).expanduser().absolute()
        try:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                _check_columns(path, reader.fieldnames or [], image_column, label_column)
                rows = list(reader)
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise TaskError(f"cannot read CSV file {path}: {_one_line(err)}") from err
        items: list[Path | bytes] = []
        for i, row in enumerate(rows):
            if not row[image_column]:
                raise TaskError(
                    f"column {image_column!r} is empty in data row {i + 1} of {path}; every row needs an image path"
                )
            items.append(_resolve(row[image_column], path.parent))
        labels, classes = _labels_from_values([row[label_column] for row in rows], label_column, path)
        return cls(
            _EncodedImages(items, str(path)),
            labels,
            classes,
            name=path.stem if name is None else name,
            source=str(path),
        )

    @classmethod
    def from_arrays(
        cls,
        images: Any,
        labels: Any,
        classes: Sequence[str] | None = None,
        name: str | None = None,
    ) -> Task:
        """Pixels already in memory (numpy or torch); kept as uint8 so a large task stays small."""
        array = _as_uint8_nchw(images, "images")
        return cls(_ArrayImages(array), labels, classes, name="arrays" if name is None else name, source="arrays")

    @classmethod
    def from_dataset(cls, dataset: Any, name: str | None = None, classes: Sequence[str] | None = None) -> Task:
        """Any torch-style dataset: labels read once now, images only when loaded."""
        n = len(dataset)
        targets = getattr(dataset, "targets", None)
        if targets is None:
            labels = _check_labels([_scalar(_dataset_item(dataset, i)[1], i) for i in range(n)])
        else:
            labels = _check_labels(targets)
            if len(labels) != n:
                raise TaskError(
                    f"dataset.targets has {len(labels)} labels but len(dataset) is {n}; "
                    "fix the dataset or delete its targets attribute"
                )
        if classes is None:
            names = getattr(dataset, "classes", None)
            if isinstance(names, Sequence) and len(names) > labels.max(initial=-1):
                classes = [str(c) for c in names]
        return cls(
            _DatasetImages(dataset),
            labels,
            classes,
            name=type(dataset).__name__ if name is None else name,
            source="torch-dataset",
        )


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


def _resize(batch: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision Resize((size, size), antialias=True) on uint8: float bilinear, then round and clamp."""
    if batch.shape[-2:] != (size, size):
        resized = F.interpolate(batch.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        batch = resized.round_().clamp_(0, 255).to(torch.uint8)
    return batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch


def _group_by_shape(images: list[torch.Tensor]) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Stack images of equal shape so each shape is resized in one call."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(i)
    for positions in groups.values():
        yield np.array(positions, dtype=np.int64), torch.stack([images[i] for i in positions])


def _decode(item: Path | bytes, where: str) -> torch.Tensor:
    try:
        with Image.open(item if isinstance(item, Path) else io.BytesIO(item)) as image:
            rgb = np.array(image.convert("RGB"))
    except _DECODE_ERRORS as err:
        raise TaskError(f"cannot read image {where}: {_one_line(err)}; replace or remove that file") from err
    return torch.from_numpy(rgb).permute(2, 0, 1)


def _item_image(image: Any, where: str) -> torch.Tensor:
    """One dataset image (PIL, HWC/CHW array or CHW tensor) as uint8 (C, H, W)."""
    if isinstance(image, Image.Image):
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
    if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim in (2, 3):
        return torch.from_numpy(_as_uint8_nchw(image[None], f"the image of {where}")[0])
    shape = f" of shape {tuple(image.shape)}" if hasattr(image, "shape") else ""
    raise TaskError(
        f"the image of {where} is a {type(image).__name__}{shape}; return a PIL image, an HWC/CHW uint8 array "
        "or a CHW tensor from __getitem__"
    )


def _as_uint8_nchw(images: Any, what: str) -> np.ndarray:
    """Validate pixels and store them as uint8 (N, C, H, W), C in {1, 3}: one layout for every array."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu()
        array = (images.float() if images.dtype == torch.bfloat16 else images).numpy()
    else:
        array = np.asarray(images)
    shape = array.shape
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and shape[1] in (1, 3) and shape[-1] not in (1, 3, 4):
        pass
    elif array.ndim == 4 and shape[-1] in (1, 3, 4):
        array = array[..., :3].transpose(0, 3, 1, 2)
    else:
        raise TaskError(
            f"{what}: shape {shape} is not (N, H, W), (N, H, W, C) with C in 1/3/4 or (N, C, H, W) with C in 1/3"
        )
    if 0 in array.shape[2:]:
        raise TaskError(f"{what}: shape {shape} has an empty side; every image needs at least 1x1 pixels")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype.kind in "iu":
        low, high = (array.min(), array.max()) if array.size else (0, 0)
        if low < 0 or high > 255:
            raise TaskError(
                f"{what}: integer pixels must be within 0..255; got range [{low}, {high}]. "
                "Scale to 0..255 and cast to uint8, or pass floats in [0, 1]"
            )
        return np.ascontiguousarray(array, dtype=np.uint8)
    if array.dtype.kind != "f":
        raise TaskError(
            f"{what}: dtype {array.dtype} is not a pixel type; pass uint8 pixels (0..255) or floats in [0, 1]"
        )
    finite = np.isfinite(array)
    if not finite.all():
        first = int(np.flatnonzero(~finite.reshape(len(array), -1).all(axis=1))[0])
        raise TaskError(f"{what}: NaN or inf pixels (first in image {first}); drop or repair those images")
    if array.size and (array.min() < 0 or array.max() > 1):
        raise TaskError(
            f"{what}: float pixels must be within [0, 1]; got range [{array.min():.4g}, {array.max():.4g}]. "
            "Divide 0..255 pixels by 255 (or by their max), and pass them before any mean/std normalisation"
        )
    return np.ascontiguousarray(np.rint(array * 255), dtype=np.uint8)


def _check_labels(labels: Any) -> np.ndarray:
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


def _check_classes(classes: Sequence[str] | None, labels: np.ndarray) -> list[str]:
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


def _check_indices(indices: Any, n: int) -> np.ndarray:
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


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise TaskError(f"{what} must be a positive integer; got {value!r}")
    return int(value)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _image_files(folder: Path) -> list[Path]:
    """Image files under a class folder, recursively, like ImageFolder; hidden files and folders skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(
            Path(dirpath) / f
            for f in filenames
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        )
    return sorted(found)


def _resolve(path: str, base: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p


def _check_columns(path: Path, available: Sequence[str], *wanted: str) -> None:
    for column in wanted:
        if column not in available:
            what = f"column {column!r} not found in {path}; available columns: {', '.join(available)}"
            raise TaskError(f"{what}. Pass image_column=/label_column= to pick others",
                            cli=f"{what}. pass --image-column/--label-column to pick others")


def _parquet_images(column: Any, name: str, path: Path) -> list[Path | bytes]:
    """Paths, raw bytes or the Hugging Face {bytes, path} struct, as decodable items."""
    import pyarrow as pa

    kind = column.type
    fields = {kind.field(i).name for i in range(kind.num_fields)} if pa.types.is_struct(kind) else set()
    accepted = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary,
                pa.types.is_fixed_size_binary)
    if not (any(test(kind) for test in accepted) or fields & {"bytes", "path"}):
        raise TaskError(
            f"column {name!r} of {path} has type {kind}; it must hold image file paths, encoded image bytes "
            "or {bytes, path} structs"
        )
    items: list[Path | bytes] = []
    for row, value in enumerate(column.to_pylist()):
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        if not value:
            raise TaskError(f"column {name!r} is empty at row {row} of {path}; every row needs an image")
        items.append(_resolve(value, path.parent) if isinstance(value, str) else bytes(value))
    return items


def _parquet_labels(column: Any, name: str, path: Path) -> tuple[np.ndarray, list[str] | None]:
    import pyarrow as pa

    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_dictionary(kind):
        return _labels_from_values(column.to_pylist(), name, path)
    if column.null_count:
        raise TaskError(f"column {name!r} of {path} has {column.null_count} missing labels; fill or drop those rows")
    return _file_labels(column.to_numpy(), name, path), None


def _file_labels(values: np.ndarray, name: str, path: Path) -> np.ndarray:
    """A file's numeric label column as class ids; the fix for bad ones is in the file, so the error says so."""
    if values.dtype.kind == "b" or (values.dtype.kind in "iu" and not (values < 0).any()):
        return _check_labels(values)
    bad = next((v for v in values.tolist() if not (isinstance(v, int) and v >= 0)), values[0])
    raise TaskError(f"column {name!r} of {path} has {values.dtype} labels that are not class ids 0..K-1 "
                    f"(e.g. {bad!r}): store class ids 0..K-1, or class names as text")


def _labels_from_values(values: list[Any], name: str, path: Path) -> tuple[np.ndarray, list[str] | None]:
    """Text labels: integers if every value is one, otherwise class names in sorted order."""
    missing = [i for i, v in enumerate(values) if v is None or v == ""]
    if missing:
        raise TaskError(
            f"column {name!r} of {path} has {len(missing)} missing labels (first at row {missing[0]}); "
            "fill or drop those rows"
        )
    text = [str(v).strip() for v in values]
    if all(t.isdigit() for t in text):  # class ids 0..K-1; anything else (e.g. -1) is a class name
        return _check_labels(np.array([int(t) for t in text], dtype=np.int64)), None
    classes, labels = np.unique(np.array(text, dtype=object), return_inverse=True)
    return labels.astype(np.int64), [str(c) for c in classes]


def _hf_class_names(metadata: dict[bytes, bytes] | None, column: str) -> list[str] | None:
    """ClassLabel names that Hugging Face datasets writes into the Parquet schema metadata."""
    try:
        info = json.loads((metadata or {})[b"huggingface"])
        names = info["info"]["features"][column]["names"]
    except (KeyError, TypeError, ValueError):
        return None
    return [str(n) for n in names] if isinstance(names, list) else None


def _dataset_item(dataset: Any, i: int) -> Sequence[Any]:
    item = dataset[i]
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise TaskError(f"dataset[{i}] is a {type(item).__name__}; a dataset must return (image, label) pairs")
    return item


def _scalar(label: Any, i: int) -> Any:
    if isinstance(label, torch.Tensor):
        label = label.detach().cpu().numpy()
    if isinstance(label, np.ndarray):
        if label.size != 1:
            raise TaskError(f"the label of dataset item {i} has shape {label.shape}; return one class id per item")
        return label.item()
    return label
