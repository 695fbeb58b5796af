"""Readers of tasks stored as an image folder, a Parquet or CSV table or a torch dataset: (images, labels, classes)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from taskindex.data.checks import check_labels, one_line
from taskindex.data.images import DatasetImages, EncodedImages, dataset_item
from taskindex.errors import TaskError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def read_folder(root: Path) -> tuple[EncodedImages, np.ndarray, list[str] | None]:
    """torchvision ImageFolder layout: <root>/<class>/<image>, classes in sorted folder order."""
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
    return EncodedImages(items, str(root)), np.array(labels, dtype=np.int64), [d.name for d in class_dirs]


def read_parquet(
    path: Path, image_column: str, label_column: str
) -> tuple[EncodedImages, np.ndarray, list[str] | None]:
    """One row per image: a file path, encoded bytes, or the Hugging Face {bytes, path} struct."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        _check_columns(path, schema.names, image_column, label_column)
        table = pq.read_table(path, columns=list(dict.fromkeys([image_column, label_column])))
    except (OSError, pa.ArrowException) as err:
        raise TaskError(f"cannot read Parquet file {path}: {one_line(err)}") from err
    images = _parquet_images(table.column(image_column), image_column, path)
    labels, classes = _parquet_labels(table.column(label_column), label_column, path)
    hf_names = _hf_class_names(schema.metadata, label_column)
    if classes is None and hf_names is not None and len(hf_names) > labels.max(initial=-1):
        classes = hf_names
    return EncodedImages(images, str(path)), labels, classes


def read_csv(path: Path, image_column: str, label_column: str) -> tuple[EncodedImages, np.ndarray, list[str] | None]:
    """One row per image file; relative paths are relative to the CSV, so the folder can move."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            _check_columns(path, reader.fieldnames or [], image_column, label_column)
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise TaskError(f"cannot read CSV file {path}: {one_line(err)}") from err
    items: list[Path | bytes] = []
    for i, row in enumerate(rows):
        if not row[image_column]:
            raise TaskError(
                f"column {image_column!r} is empty in data row {i + 1} of {path}; every row needs an image path"
            )
        items.append(_resolve(row[image_column], path.parent))
    labels, classes = _labels_from_values([row[label_column] for row in rows], label_column, path)
    return EncodedImages(items, str(path)), labels, classes


def read_dataset(dataset: Any, classes: Sequence[str] | None) -> tuple[DatasetImages, np.ndarray, Sequence[str] | None]:
    """Any torch-style dataset: labels read once now (its targets if it has them), images only when loaded."""
    n = len(dataset)
    targets = getattr(dataset, "targets", None)
    if targets is None:
        labels = check_labels([_scalar(dataset_item(dataset, i)[1], i) for i in range(n)])
    else:
        labels = check_labels(targets)
        if len(labels) != n:
            raise TaskError(
                f"dataset.targets has {len(labels)} labels but len(dataset) is {n}; "
                "fix the dataset or delete its targets attribute"
            )
    if classes is None:
        names = getattr(dataset, "classes", None)
        if isinstance(names, Sequence) and len(names) > labels.max(initial=-1):
            classes = [str(c) for c in names]
    return DatasetImages(dataset), labels, classes


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
        return check_labels(values)
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
        return check_labels(np.array([int(t) for t in text], dtype=np.int64)), None
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


def _scalar(label: Any, i: int) -> Any:
    if isinstance(label, torch.Tensor):
        label = label.detach().cpu().numpy()
    if isinstance(label, np.ndarray):
        if label.size != 1:
            raise TaskError(f"the label of dataset item {i} has shape {label.shape}; return one class id per item")
        return label.item()
    return label
