"""Rebuild manifests: the rows an index should hold, as CSV, Parquet or YAML, checked before any work.

One row per index row: `name`, `kind` (task or model), `source` (anything `taskindex embed`
takes: a folder, a .parquet or .csv file, sample:NAME) or, for a model, `source_task` (the name
of the task row it was trained on, whose embedding it takes), its options (`image_column`,
`label_column`, `per_class` images per class for sample:NAME, `max_samples`, `seed`) and
metadata (`meta.KEY` columns in CSV and Parquet, a `metadata:` mapping in YAML). A relative
`source` path is relative to the manifest's folder, as image paths are to a CSV's. Every
problem is reported with the file and line (the data line of a CSV, 1-based row of a
Parquet file, the line of the item in YAML) before anything is embedded.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from taskindex import validation
from taskindex.errors import ManifestError
from taskindex.data.sources import check_source

KINDS = ("task", "model")
DEFAULTS = {"kind": "task", "image_column": "image", "label_column": "label", "per_class": None,
            "max_samples": 1000, "seed": 0}
INTEGERS = {"per_class": 1, "max_samples": 2, "seed": 0}  # smallest value allowed
FIELDS = ("name", "source", "source_task", *DEFAULTS)


@dataclass(frozen=True)
class ManifestRow:
    name: str
    source: str | None = None
    source_task: str | None = None
    kind: str = "task"
    image_column: str = "image"
    label_column: str = "label"
    per_class: int | None = None
    max_samples: int = 1000
    seed: int = 0
    metadata: dict = field(default_factory=dict)
    line: int = 0

    def digest(self) -> str:
        """What the row's embedding depends on: a finished row is reused on resume only if this is unchanged."""
        d = asdict(self)
        d.pop("line")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    """Read and check a manifest: .csv, .parquet, .yaml/.yml."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist: pass a .csv, .parquet or .yaml file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        items = _csv_items(path)
    elif suffix == ".parquet":
        items = _parquet_items(path)
    elif suffix in (".yaml", ".yml"):
        items = _yaml_items(path)
    else:
        raise ManifestError(f"manifest {path}: unknown format {suffix or '(no suffix)'!r}; use .csv, .parquet or .yaml")
    rows, seen = [], {}
    for where, line, item in items:
        row = _row(path, where, line, item)
        if row.name in seen:
            raise ManifestError(f"{path}, {where}: name {row.name!r} repeats {seen[row.name]}; names must be unique")
        seen[row.name] = where
        rows.append(row)
    if not rows:
        raise ManifestError(f"manifest {path} has no rows")
    tasks = {r.name for r in rows if r.kind == "task"}
    for r in rows:
        if r.source_task is not None and r.source_task not in tasks:
            raise ManifestError(f"{path}, line {r.line}: source_task {r.source_task!r} is not a task row of this "
                                "manifest: add that task, or give the model a source")
    _check_metadata_types(path, rows)
    return rows


def _check_metadata_types(path: Path, rows: list[ManifestRow]) -> None:
    """One type per metadata key, as the index requires: found here, not after every row is embedded."""
    def kind(v):
        return "boolean" if isinstance(v, bool) else "number" if isinstance(v, (int, float)) else "string"

    first: dict[str, tuple[str, int]] = {}
    for row in rows:
        for k, v in row.metadata.items():
            t, line = first.setdefault(k, (kind(v), row.line))
            if kind(v) != t:
                raise ManifestError(f"{path}, line {row.line}: metadata {k!r} is a {kind(v)} but line {line} has "
                                    f"a {t}: use one type per key")


def _row(path: Path, where: str, line: int, item: dict) -> ManifestRow:
    def fail(msg: str) -> ManifestError:
        return ManifestError(f"{path}, {where}: {msg}")

    item = dict(item)
    metadata = item.pop("metadata", None) or {}
    if not isinstance(metadata, dict):
        raise fail(f"metadata must be a mapping of keys to values; got {type(metadata).__name__}")
    for key in [k for k in item if isinstance(k, str) and k.startswith("meta.")]:
        metadata[key[5:]] = item.pop(key)
    unknown = [k for k in item if k not in FIELDS]
    if unknown:
        raise fail(f"unknown column {unknown[0]!r}: use {', '.join(FIELDS)}, and meta.KEY (YAML: metadata:) "
                   "for metadata")
    values = {k: v for k, v in item.items() if not _missing(v)}
    if not isinstance(values.get("name"), str) or not values["name"].strip():
        raise fail("name is missing or not text")
    if values.get("kind", "task") not in KINDS:
        raise fail(f"unknown kind {values['kind']!r}: use task or model")
    if "source_task" in values:
        if values.get("kind") != "model" or "source" in values:
            raise fail("source_task is for a model row, in place of source: give one or the other")
        if not isinstance(values["source_task"], str):
            raise fail(f"source_task must name a task row; got {values['source_task']!r}")
    elif not isinstance(values.get("source"), str) or not values["source"].strip():
        raise fail("source is missing or not text")
    for key in ("image_column", "label_column"):
        if key in values and not isinstance(values[key], str):
            raise fail(f"{key} must be a column name; got {values[key]!r}")
    for key, low in INTEGERS.items():
        if key in values:
            values[key] = _integer(values[key], key, low, fail)
    if "source" in values:
        given, values["source"] = values["source"], _resolved(values["source"], path.parent)
        why = check_source(values["source"])
        if why:
            read = values["source"]
            moved = f" (read relative to the manifest's folder: {read})" if given != read else ""
            raise fail(f"source: {why.replace(repr(read), repr(given))}{moved}")
    meta = {}
    for k, v in metadata.items():
        if _missing(v):
            continue
        if not isinstance(v, (str, int, float, bool)):
            raise fail(f"metadata {k!r} must be a string, number or boolean; got {type(v).__name__}")
        meta[str(k)] = v
    return ManifestRow(metadata=meta, line=line, **{k: values.get(k, DEFAULTS.get(k)) for k in FIELDS})


def _resolved(source: str, folder: Path) -> str:
    """A source path as the worker will read it: relative to the manifest's folder, so the two can move together."""
    if source.startswith("sample:"):
        return source
    expanded = os.path.expanduser(source)
    return expanded if os.path.isabs(expanded) else os.path.normpath(os.path.join(os.path.abspath(folder), expanded))


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip())


def _integer(v: Any, key: str, low: int, fail) -> int:
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        v = int(v)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return validation.integer(v, key, low, error=fail)


def _typed(text: str) -> Any:
    """A CSV metadata cell: a number where it reads as one, otherwise the text."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.strip().lower(), text)


def _csv_items(path: Path):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        for i, rec in enumerate(reader):
            if None in rec:
                raise ManifestError(f"{path}, line {reader.line_num}: more cells than the header has columns")
            yield f"line {reader.line_num}", reader.line_num, {
                k: (_typed(v) if k.startswith("meta.") and v.strip() else v) for k, v in rec.items()}


def _parquet_items(path: Path):
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise ManifestError(f"manifest {path} is not a readable Parquet file ({exc})") from None
    for i, rec in enumerate(table.to_pylist()):
        yield f"row {i + 1}", i + 1, rec


def _yaml_items(path: Path):
    import yaml

    text = path.read_text(encoding="utf-8")
    try:
        doc = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        why = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ManifestError(f"manifest {path} is not valid YAML{where}: {why}") from None
    if isinstance(doc, dict) and set(doc) == {"rows"}:
        doc = doc["rows"]
        node = next(v for k, v in node.value if k.value == "rows")
    if not isinstance(doc, list):
        raise ManifestError(f"manifest {path}: expected a list of rows (or `rows:` holding one)")
    for item, item_node in zip(doc, node.value):
        line = item_node.start_mark.line + 1
        if not isinstance(item, dict):
            raise ManifestError(f"{path}, line {line}: a row must be a mapping of name, source, ...")
        yield f"line {line}", line, item
