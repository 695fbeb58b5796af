"""A task from a data source string: the one place that knows folder / .parquet / .csv / sample:NAME."""

from __future__ import annotations

import os

from taskindex.data import samples
from taskindex.errors import TaskError, TaskIndexError
from taskindex.data.task import Task

SOURCE_HELP = "an image folder (one sub-folder per class), a .parquet or .csv file, or sample:NAME"


def load_task(data: str, image_column: str = "image", label_column: str = "label",
              per_class: int | None = None, seed: int = 0) -> Task:
    """`per_class` and `seed` apply to sample:NAME (images drawn per task class); files are read whole."""
    if data.startswith("sample:"):
        name = data.split(":", 1)[1]
        return samples.load(name) if per_class is None else samples.load(name, max_per_class=per_class, seed=seed)
    if os.path.isdir(data):
        return Task.from_folder(data)
    lower = data.lower()
    if lower.endswith(".parquet"):
        return Task.from_parquet(data, image_column=image_column, label_column=label_column)
    if lower.endswith(".csv"):
        return Task.from_csv(data, image_column=image_column, label_column=label_column)
    if not os.path.exists(data):
        raise TaskError(f"{data!r} does not exist: pass {SOURCE_HELP} (see `taskindex samples`)")
    raise TaskError(f"cannot read a task from {data!r}: pass {SOURCE_HELP}")


def as_task(task, image_column: str = "image", label_column: str = "label") -> Task:
    """A Task as given, or read from where one is stored (a folder, .parquet, .csv or sample:NAME)."""
    if isinstance(task, (str, os.PathLike)):
        return load_task(os.fspath(task), image_column, label_column)
    if not isinstance(task, Task):
        raise TaskIndexError(f"task must be a taskindex.Task or the path of its images; got {type(task).__name__}")
    return task


def check_source(data: str) -> str | None:
    """Why `data` cannot be a source, without reading it (None when it may be one)."""
    if data.startswith("sample:"):
        name = data.split(":", 1)[1]
        return None if name in samples.names() else f"unknown sample task {name!r} (see `taskindex samples`)"
    if not os.path.exists(data):
        return f"{data!r} does not exist"
    if os.path.isdir(data) or data.lower().endswith((".parquet", ".csv")):
        return None
    return f"cannot read a task from {data!r}: use {SOURCE_HELP}"
