"""TaskIndex: a directory of task and model embeddings with atomic commits and fast search.

Rows live in append-only segments (raw vectors, projected vectors, Parquet
metadata); a commit adds a segment and/or deletion marks, so adding k rows writes
O(k) bytes. Queries go through FAISS candidates over the projected rows and are
re-ranked with the exact distance on the memory-mapped raw vectors.

Small segments also keep their rows as JSON records (what a query returns), so
a small index opened read-only, as the CLI's `query` does, loads and answers
without importing pandas or pyarrow (a third of a second); the Parquet file
stays the metadata table that filters, pandas, polars and DuckDB read.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np

from taskindex import distance
from taskindex.index import filters
from taskindex.index import candidates
from taskindex.embedding.vector import PRIOR_SCALE, SPACE_DEFAULTS, SPACE_KEYS, Embedding
from taskindex.embedding.estimators import DEFAULT_ESTIMATOR, estimator_id, parse_estimator
from taskindex.errors import IncompatibleEmbeddingsError, IndexUsageError, TaskIndexError
from taskindex.index.storage import (HASH_ON_OPEN_BYTES, VECTOR_TYPES, Store, all_refs, decode_vectors, encode_vectors,
                      read_rows, sha256_file, warm)

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

KINDS = ("task", "model")
ROW_GROUP = 4096  # metadata rows per Parquet row group: `get` decodes one group, not a whole segment
LIGHT_ROWS = 10_000  # segments up to this size also store JSON records; indexes up to it open read-only from them
RERANK_TIE = 2e-5  # float32 re-rank scores this close to the k-th are settled in float64 (its error: 1e-5)
RERANK_ROWS = 2048  # rows read and re-ranked at once (an exact query's scan goes block by block)
PAIR_BLOCK = 1024  # candidate rows read at once, and (query, row) pairs on a torch device, in query_many
BATCH_PAIRS = 1 << 21  # candidate pairs of the queries query_many ranks together (~150 MB of bookkeeping)
LAZY = ("embedding_meta",)  # per-row columns left on disk until `get` or `compact` needs them
RESERVED = ("id", "name", "kind", "complexity", "created", "task", "source", "n_samples", "n_classes", "method",
            "embedding_meta")


@dataclass
class Hit:
    """One query result."""

    name: str
    kind: str
    distance: float
    complexity: float
    metadata: dict = field(default_factory=dict)
    ranked_by: str = "sym"  # sym, asym or model2vec: the score in `distance`

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "distance": self.distance, "complexity": self.complexity,
                "ranked_by": self.ranked_by, "metadata": self.metadata}


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _arrow_records(table: "pa.Table") -> list[dict]:
    """Metadata rows as plain JSON-able dicts, missing values (null, NaN) left out: what a Hit carries."""
    return [{k: v for k, v in rec.items() if v is not None and v == v} for rec in table.to_pylist()]


def _frame_table(frame: "pd.DataFrame") -> "pa.Table":
    """A metadata frame as Arrow (zero-copy for its Arrow columns), without pandas' schema metadata."""
    import pyarrow as pa

    return pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)


def _read_frame(source) -> "pd.DataFrame":
    """A segment's metadata rows, the columns kept on disk (LAZY) left out."""
    import pandas as pd
    import pyarrow.parquet as pq

    file = pq.ParquetFile(source)
    columns = [c for c in file.schema_arrow.names if c not in LAZY]
    return file.read(columns=columns).to_pandas(types_mapper=pd.ArrowDtype)


def _segment_rows(store: Store, frame: "pd.DataFrame") -> dict:
    """Write a segment's metadata (all columns) as Parquet and, for a small segment, its records as JSON too;
    returns the manifest entries."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=ROW_GROUP)
    data = sink.getvalue().to_pybytes()
    entries = {"rows": store.new_file(".parquet", data)}
    if len(frame) <= LIGHT_ROWS:  # the records as the Parquet file reads back, so both paths give one answer
        written = _read_frame(io.BytesIO(data))
        entries["records"] = store.new_file(".json", json.dumps(_arrow_records(_frame_table(written))).encode())
    return entries


_ITEM_FORM = "(name, embedding), (name, embedding, kind), (name, embedding, kind, metadata) or a dict with those keys"


def _unpack(item) -> tuple:
    """One add_many item -> (name, embedding, kind, metadata), the README's tuple order."""
    if isinstance(item, dict):
        extra = set(item) - {"name", "embedding", "kind", "metadata"}
        if extra or "name" not in item or "embedding" not in item:
            raise TaskIndexError(f"add_many item has keys {sorted(item)}: use {_ITEM_FORM}")
        meta = item.get("metadata")
        return item["name"], item["embedding"], item.get("kind", "task"), {} if meta is None else meta
    if not isinstance(item, (tuple, list)) or not 2 <= len(item) <= 4:
        raise TaskIndexError(f"add_many items must be {_ITEM_FORM}; got {type(item).__name__}"
                             + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else ""))
    kind = item[2] if len(item) > 2 else "task"
    meta = item[3] if len(item) > 3 else None
    if isinstance(kind, dict):
        raise TaskIndexError(f"row {item[0]!r}: the third item is the kind ('task' or 'model') and metadata "
                             "comes fourth: (name, embedding, kind, metadata)")
    return item[0], item[1], kind, {} if meta is None else meta


def _value_type(value) -> str | None:
    if value is None:
        return None
    return "boolean" if isinstance(value, bool) else "string" if isinstance(value, str) else "number"


class TaskIndex:
    """A vector database of TASK2VEC embeddings. Open with TaskIndex.open, make with TaskIndex.create."""

    def __init__(self, store: Store, readonly: bool):
        self._store = store
        self.readonly = readonly
        self._load(store.read_manifest())

    # --- life cycle ----------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        probe="efficientnet_lite0",
        method: str = "montecarlo",
        *,
        weights: str | None = "imagenet",
        image_size: int | None = None,
        prior_scale: float = PRIOR_SCALE,
        estimator: str = DEFAULT_ESTIMATOR,
        trim: float | None = None,
        vectors: str = "float32",
    ) -> "TaskIndex":
        """A new, empty index for embeddings of one probe (a Probe or a registered name), method and estimator.

        vectors="bfloat16" stores the raw vectors in half the disk (a million rows of 21,008 filters in 42 GB
        instead of 84); d_sym then moves by at most ~1e-3 (README, "Scale") and `get` returns the rounded vector.
        """
        from taskindex.embedding.fisher import weight_scale_prior
        from taskindex.embedding.probes import load_probe

        root = Path(path)
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            what = f"{str(root)!r} already exists and is not empty: choose a new path"
            raise IndexUsageError(f"{what} or open it with TaskIndex.open", cli=f"{what} or add rows to it with `taskindex add`")
        if method not in ("montecarlo", "variational"):
            raise TaskIndexError(f"unknown method {method!r}: use montecarlo or variational")
        _check_vector_type(vectors)
        if isinstance(probe, str):
            probe = load_probe(probe, weights=weights, image_size=image_size, device="cpu")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise IndexUsageError(f"cannot create {str(root)!r}: {exc.strerror}") from None
        store = Store(root)
        store.acquire()
        try:
            prior = weight_scale_prior(probe.backbone, prior_scale).astype(np.float32)
            manifest = {
                "version": 1,
                "space": {**probe.identity, "method": method, "prior_scale": float(prior_scale),
                          "estimator": estimator_id(estimator, trim)},
                "dim": probe.dim,
                "layout": probe.layout,
                "prior": store.new_file(".npy", _npy_bytes(prior)),
                "vectors": vectors,
                "projection": None,
                "projection_rows": 0,
                "segments": [],
                "deleted": [],
                "next_id": 0,
                "row_count": 0,
                "model2vec": None,
                "alpha": distance.ALPHA,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            store.commit(manifest)
        except BaseException:
            store.release()
            raise
        return cls(store, readonly=False)

    @classmethod
    def open(cls, path: str | os.PathLike, readonly: bool = False) -> "TaskIndex":
        store = Store(path)
        if not readonly:
            store.read_manifest()  # a clear error for a missing or non-index directory comes first
            store.acquire()
        try:
            return cls(store, readonly)
        except BaseException:
            store.release()
            raise

    def close(self) -> None:
        self._store.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return (f"TaskIndex({str(self._store.root)!r}, rows={len(self)}, probe={self.space['probe']!r}, "
                f"method={self.space['method']!r}, version={self.version})")

    # --- loading -------------------------------------------------------------------------------

    def _load(self, manifest: dict) -> None:
        """Read a committed version from disk, checking its files."""
        store = self._store
        vector_bytes = sum(s["vectors"]["size"] for s in manifest["segments"])
        for ref in all_refs(manifest):  # .npy files are hashed as load_npy reads them (MODEL2VEC's on first use)
            is_vectors = ref["name"].endswith((".f32", ".bf16")) and not ref["name"].endswith(".proj.f32")
            store.check(ref, full=not ref["name"].endswith(".npy") and (not is_vectors
                                                                        or vector_bytes <= HASH_ON_OPEN_BYTES))
        self.manifest = manifest
        self.space = {**SPACE_DEFAULTS, **manifest["space"]}
        self.dim = manifest["dim"]
        self.vector_type = manifest.get("vectors", "float32")  # format 1 indexes hold float32
        self.layout = [tuple(x) for x in manifest["layout"]]
        self.prior = store.load_npy(manifest["prior"])
        self._projection = store.load_npy(manifest["projection"]) if manifest.get("projection") else None
        self._fit = None  # (theta's file name, theta): MODEL2VEC's parameters, read when a selection needs them
        self._vectors, self._projs = [], []
        self._seg = self._pos = np.zeros(0, np.int64)
        self._names, self._by_name = [], {}
        self._candidates = None
        self._light = None  # a light index's rows as JSON records, one dict a live row
        self._arrow = None  # (the frame, to_arrow() of it)
        segments, deleted = manifest["segments"], set(manifest["deleted"])
        if self.readonly and manifest["row_count"] <= LIGHT_ROWS and all(s.get("records") for s in segments):
            self._frame = None  # read from Parquet on first use (filters, to_pandas)
            self._open_light(segments, deleted)
        else:
            self._frame = _live_rows([], set())
            self._append(segments, deleted)
        if self._candidates is not None:  # a large open leaves freed decode buffers behind
            from taskindex.index.memory import release_freed

            release_freed()

    @property
    def _theta(self) -> np.ndarray | None:
        fit = self.manifest.get("model2vec")
        if not fit:
            return None
        if self._fit is None or self._fit[0] != fit["theta"]["name"]:
            self._fit = (fit["theta"]["name"], self._store.load_npy(fit["theta"]))
        return self._fit[1]

    @property
    def _rows(self) -> "pd.DataFrame":
        """The live rows' metadata as a DataFrame, in row order."""
        if self._frame is None:
            frames = self._segment_frames(self.manifest["segments"], 0)
            self._frame = _live_rows(frames, set(self.manifest["deleted"])).drop(columns=["_seg", "_pos"])
        return self._frame

    def _segment_frames(self, segments: list[dict], first: int) -> list["pd.DataFrame"]:
        """Segments' metadata rows, each with its segment number (from `first`) and position in it."""
        frames = []
        for i, seg in enumerate(segments, first):
            frame = _read_frame(self._store.path(seg["rows"]))
            frame["_seg"] = i
            frame["_pos"] = np.arange(len(frame))
            frames.append(frame)
        return frames

    def _map(self, segments: list[dict]) -> None:
        for seg in segments:
            self._vectors.append(self._store.memmap(seg["vectors"], self.dim))
            self._projs.append(self._store.memmap(seg["proj"], candidates.PROJ_DIM) if seg.get("proj") else None)

    def _open_light(self, segments: list[dict], deleted: set[int]) -> None:
        """Load from the segments' JSON records: no pandas, no pyarrow."""
        self._map(segments)
        records, seg, pos = [], [], []
        every = [json.loads(self._store.path(s["records"]).read_bytes()) for s in segments]
        # as concatenating the segments' tables does (removed rows too): a key that holds a fraction anywhere
        # holds floats everywhere
        floats = {k for recs in every for r in recs for k, v in r.items() if isinstance(v, float)}
        for i, recs in enumerate(every):
            for j, r in enumerate(recs):
                if r["id"] not in deleted:
                    records.append({k: float(v) if k in floats and not isinstance(v, bool) else v
                                    for k, v in r.items()})
                    seg.append(i)
                    pos.append(j)
        self._light = records
        self._seg, self._pos = np.array(seg, np.int64), np.array(pos, np.int64)
        kinds = [r["kind"] for r in records]
        self._index_rows([r["name"] for r in records], np.array([r["id"] for r in records], np.int64),
                         {k: np.array([x == k for x in kinds], bool) for k in KINDS},
                         np.array([r["complexity"] for r in records], np.float64), deleted, len(segments), False)

    def _append(self, segments: list[dict], deleted: set[int]) -> None:
        """Bring the in-memory state up to date with new segments and deletions: O(new rows)."""
        frames = self._segment_frames(segments, len(self._vectors))
        self._map(segments)
        old = [self._frame.assign(_seg=self._seg, _pos=self._pos)] if len(self._frame) else []
        rows = _live_rows([*old, *frames], deleted)
        # nothing removed from the old rows: extend the name list and map instead of rebuilding them
        extend = bool(old) and len(rows) == len(self._frame) + sum(map(len, frames))
        self._seg = rows.pop("_seg").to_numpy(np.int64)
        self._pos = rows.pop("_pos").to_numpy(np.int64)
        self._frame = rows
        names = rows["name"].iloc[len(self._names) if extend else 0:].tolist()
        self._index_rows(names, rows["id"].to_numpy(dtype=np.int64),
                         {k: (rows["kind"] == k).to_numpy(dtype=bool) for k in KINDS},
                         rows["complexity"].to_numpy(dtype=np.float64), deleted, len(segments), extend)

    def _index_rows(self, names: list[str], ids: np.ndarray, kinds: dict[str, np.ndarray], complexity: np.ndarray,
                    deleted: set[int], new_segments: int, extend: bool) -> None:
        """The plain arrays of the query path and the candidate structure, for the live rows in row order;
        `names` are all of them, or with `extend` those after the ones already known."""
        if extend:
            start = len(self._names)
            self._names.extend(names)
            self._by_name.update(zip(names, range(start, len(self._names))))
        else:
            self._names = names
            self._by_name = dict(zip(names, range(len(names))))
        # ids ascend with the row order (assigned in commit order)
        self._ids, self._kinds, self._complexity = ids, kinds, complexity
        if self._projection is None or len(ids) < candidates.EXACT_ROWS:
            self._candidates = None
        elif self._candidates is None:
            self._candidates = candidates.Candidates(self._proj_rows(np.arange(len(ids))), self._ids)
        else:
            self._candidates.remove(deleted)
            new = np.flatnonzero(self._seg >= len(self._vectors) - new_segments)
            self._candidates.add(self._proj_rows(new), self._ids[new])

    def _proj_rows(self, rows: np.ndarray) -> np.ndarray:
        return self._read(self._projs, rows, candidates.PROJ_DIM)

    def _read(self, files: list[np.ndarray], rows: np.ndarray, width: int) -> np.ndarray:
        """Rows from per-segment files as float32: one `read_rows` per segment, decoded straight into the
        output (rows in index order, as _rank passes them, need no reordering)."""
        out = np.empty((len(rows), width), np.float32)
        segs = self._seg[rows]
        order = np.argsort(segs, kind="stable")
        ordered = bool(np.all(order == np.arange(len(rows))))
        buf = out if ordered else np.empty_like(out)
        cuts = [0, *(np.flatnonzero(np.diff(segs[order])) + 1), len(rows)]
        for lo, hi in zip(cuts, cuts[1:]):
            if hi > lo:
                read_rows(files[segs[order[lo]]], self._pos[rows[order[lo:hi]]], buf[lo:hi])
        if not ordered:
            out[order] = buf
        return out

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    # --- reading -------------------------------------------------------------------------------

    def names(self, kind: str | None = None) -> list[str]:
        if kind is None:
            return list(self._names)
        return [n for n, keep in zip(self._names, self._kinds[kind]) if keep]

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def _row(self, name: str) -> int:
        if name not in self._by_name:
            import difflib

            close = difflib.get_close_matches(str(name), list(self._by_name), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise IndexUsageError(f"no row named {name!r} in the index{hint}: see `taskindex ls`")
        return self._by_name[name]

    def warm(self, progress: bool | None = None) -> int:
        """Read the stored vectors into memory (the OS page cache, mapped into this process) before queries
        need them: what a server does before it takes traffic, for an index that fits in RAM (a fresh query
        otherwise waits on the disk for rows it has not read). Returns the bytes; safe to interrupt."""
        from tqdm.auto import tqdm

        with tqdm(total=sum(v.nbytes for v in self._vectors), unit="B", unit_scale=True, desc="warm", leave=False,
                  disable=None if progress is None else not progress) as bar:
            return sum(warm(v, bar.update) for v in self._vectors)

    def _vector(self, row: int) -> np.ndarray:
        return decode_vectors(self._vectors[self._seg[row]][self._pos[row]])

    def vectors(self, names) -> np.ndarray:
        """The stored vectors (Fisher + t0) of the named rows, float32 (len(names), dim)."""
        return self._gather(np.array([self._row(n) for n in names], dtype=np.int64))

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        return self._read(self._vectors, rows, self.dim)

    def metadata(self, row: int) -> dict:
        return self._records(np.array([row]))[0]

    def _records(self, rows: np.ndarray) -> list[dict]:
        """The metadata of many rows: from a light index's records, else one Arrow take (pandas' iloc cost
        2.5 ms for 10 hits at 100k rows, the take 0.2 ms)."""
        if self._light is not None:
            return [dict(self._light[r]) for r in rows]
        import pyarrow as pa

        return _arrow_records(self.to_arrow().take(pa.array(rows, pa.int64())))

    def get(self, name: str) -> tuple[Embedding, dict]:
        """The stored embedding and its metadata: bit-identical to what was added in a float32 index,
        rounded to bfloat16 in a bfloat16 one."""
        row = self._row(name)
        meta = json.loads(self._lazy_column(np.array([row]), "embedding_meta")[0])
        return Embedding(self._vector(row), self.prior, self.layout, meta), self.metadata(row)

    def _lazy_column(self, rows: np.ndarray, column: str) -> list:
        """A column kept on disk, for the given live rows, reading only the row groups that hold them."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        out = [None] * len(rows)
        by_seg: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            by_seg.setdefault(int(self._seg[r]), []).append(i)
        for seg, members in by_seg.items():
            file = pq.ParquetFile(self._store.path(self.manifest["segments"][seg]["rows"]))
            starts = np.cumsum([0] + [file.metadata.row_group(g).num_rows for g in range(file.num_row_groups)])
            members = np.array(members)
            pos = self._pos[rows[members]]
            groups = np.searchsorted(starts, pos, side="right") - 1
            for g in np.unique(groups):
                sel = np.flatnonzero(groups == g)
                values = file.read_row_group(int(g), columns=[column]).column(0)
                for i, v in zip(members[sel], values.take(pa.array(pos[sel] - starts[g])).to_pylist()):
                    out[i] = v
        return out

    def to_pandas(self, where: dict | None = None, kind: str | None = None) -> "pd.DataFrame":
        """Live rows and their metadata (no vectors), one row per name; `where` and `kind` filter as in query."""
        if kind not in (None, *KINDS):
            raise TaskIndexError(f"unknown kind {kind!r}: use 'task', 'model' or None")
        frame = self._rows
        if where or kind:
            keep = filters.mask(frame, where) if where else np.ones(len(frame), dtype=bool)
            frame = frame[keep & self._kinds[kind] if kind else keep].reset_index(drop=True)
        return frame.copy()

    def to_arrow(self) -> "pa.Table":
        """to_pandas() as one Arrow table, for DuckDB and polars (the segment files still hold removed rows);
        made once per version: Arrow tables are immutable."""
        frame = self._rows
        if self._arrow is None or self._arrow[0] is not frame:
            self._arrow = (frame, _frame_table(frame))
        return self._arrow[1]

    def _column_type(self, key: str) -> str | None:
        """'boolean', 'number' or 'string' for a metadata column the index holds values of."""
        import pandas as pd
        import pyarrow as pa

        dtype = self._rows[key].dtype if key in self._rows.columns else None
        if not isinstance(dtype, pd.ArrowDtype):
            return None
        t = dtype.pyarrow_dtype
        return ("boolean" if pa.types.is_boolean(t) else "number" if pa.types.is_integer(t) or pa.types.is_floating(t)
                else "string" if pa.types.is_string(t) or pa.types.is_large_string(t) else None)

    # --- writing -------------------------------------------------------------------------------

    def _check_embedding(self, emb: Embedding) -> None:
        if not isinstance(emb, Embedding):
            raise TaskIndexError(f"expected a taskindex.Embedding; got {type(emb).__name__}")
        if not np.isfinite(emb.vector).all() or (emb.vector < 0).any():  # the re-rank trusts what passes here
            raise TaskIndexError(f"embedding {emb.meta.get('task')!r} has negative or non-finite entries: a Fisher "
                                 "diagonal is finite and >= 0, so re-embed the task")
        diff = [f"{k}: {emb.space[k]!r} vs index {self.space.get(k)!r}" for k in SPACE_KEYS
                if emb.space[k] != self.space.get(k)]
        if diff:
            raise IncompatibleEmbeddingsError(
                f"embedding {emb.meta.get('task')!r} does not belong in this index ({'; '.join(diff)}): "
                "embed it with the index's probe, image size and method")
        if emb.dim != self.dim or emb.layout != self.layout:
            raise IncompatibleEmbeddingsError(
                f"embedding has {emb.dim} filters, the index {self.dim}: embed it with the index's probe")
        if not np.allclose(emb.prior, self.prior, rtol=1e-5):
            raise IncompatibleEmbeddingsError("embedding's prior differs from the index's: re-embed it")

    def add(self, name: str, embedding: Embedding, kind: str = "task", metadata: dict | None = None) -> None:
        """Add one row; an existing name is an error (use upsert to replace)."""
        self.add_many([(name, embedding, kind, metadata)])

    def upsert(self, name: str, embedding: Embedding, kind: str = "task", metadata: dict | None = None) -> None:
        """Add or replace a row, atomically."""
        self.add_many([(name, embedding, kind, metadata)], replace=True)

    def add_many(self, items: Iterable, replace: bool = False, only: bool = False) -> None:
        """Add many rows in one commit: (name, embedding[, kind[, metadata]]) tuples, or dicts with those keys.

        only=True makes these rows the whole index in that one commit (a rebuild): every other row goes.
        """
        self._writable()
        replace = replace or only
        batch = []
        seen = set()
        types = {}  # metadata key -> the one type of its values, so every version reads as one table
        for item in items:
            name, emb, kind, meta = _unpack(item)
            if not isinstance(name, str) or not name.strip() or len(name) > 512:
                raise TaskIndexError(f"row names must be non-empty strings of at most 512 characters; got {name!r}")
            if name in seen or (name in self._by_name and not replace):
                what = f"a row named {name!r} already exists"
                raise IndexUsageError(f"{what}: use upsert to replace it or choose another name",
                                      cli=f"{what}: pass --replace to replace it or choose another name")
            if kind not in KINDS:
                raise TaskIndexError(f"unknown kind {kind!r}: use 'task' or 'model'")
            if not isinstance(meta, dict):
                raise TaskIndexError(f"metadata must be a dict; got {type(meta).__name__}")
            for k, v in meta.items():
                if not isinstance(k, str) or k in RESERVED:
                    raise TaskIndexError(f"metadata key {k!r} is reserved or not a string: rename it")
                if not (v is None or isinstance(v, (str, int, float, bool))):
                    raise TaskIndexError(f"metadata value for {k!r} must be a string, number or boolean; got "
                                         f"{type(v).__name__}")
                t = _value_type(v)
                known = types.setdefault(k, self._column_type(k) or t) if t else None
                if known != t:
                    raise TaskIndexError(f"metadata {k!r} of row {name!r} is a {t} but other rows hold {known}s: "
                                         "use one type per key (convert the value or choose another key)")
            self._check_embedding(emb)
            if kind == "model" and emb.meta.get("task") and "source_task" not in meta:
                meta = {**meta, "source_task": str(emb.meta["task"])}  # what leave-one-out never picks it for
            seen.add(name)
            batch.append((name, emb, kind, meta))
        if not batch and not (only and len(self)):
            return
        if not batch:
            raise TaskIndexError("only=True with no rows would empty the index: remove rows one by one instead")
        ids = np.arange(self.manifest["next_id"], self.manifest["next_id"] + len(batch), dtype=np.int64)
        encoded = encode_vectors(np.stack([e.vector for _, e, _, _ in batch]), self.vector_type)
        vectors = self._decoded(encoded)  # what the index will read back: projections and complexity use it
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        records = []
        complexity = distance.complexity(vectors, self.prior)
        for i, c, (name, emb, kind, meta) in zip(ids, complexity, batch):
            rec = {"id": int(i), "name": name, "kind": kind, "complexity": float(c),
                   "created": created, "task": emb.meta.get("task"), "source": emb.meta.get("source"),
                   "n_samples": emb.meta.get("n_samples"), "n_classes": emb.meta.get("n_classes"),
                   "method": emb.meta.get("method"), "embedding_meta": json.dumps(emb.meta, sort_keys=True)}
            rec.update(meta)
            records.append(rec)
        import pandas as pd

        store = self._store
        manifest = json.loads(json.dumps(self.manifest))
        segment = {"vectors": store.new_file(VECTOR_TYPES[self.vector_type], encoded),
                   **_segment_rows(store, pd.DataFrame(records)), "proj": None}
        if self._projection is not None:
            segment["proj"] = store.new_file(".proj.f32", candidates.project(vectors, self._projection).tobytes())
        manifest["segments"].append(segment)
        if only:
            replaced = self._ids.tolist()
        else:
            replaced = [int(self._ids[self._by_name[n]]) for n, *_ in batch if n in self._by_name]
        manifest["deleted"] = sorted(set(manifest["deleted"]) | set(replaced))
        manifest["next_id"] = int(ids[-1]) + 1
        manifest["row_count"] = len(self) + len(batch) - len(replaced)
        self._commit(manifest)

    def add_model(self, name: str, source=None, metadata: dict | None = None, replace: bool = False) -> None:
        """Add an expert: `source` is the task row it was trained on, that task's Embedding, or None (a black box).

        The row stores the source's embedding (a copy: removing the task later keeps the model) and its name in
        `source_task`; a black box stores the trivial embedding t0 (F = 0), so only a MODEL2VEC fit places it.
        """
        meta = dict(metadata or {})
        if isinstance(source, str):
            row = self._row(source) if source in self._by_name else None
            if row is None or not self._kinds["task"][row]:
                what = f"model {name!r}: source task {source!r} is not a task row of this index; add the task first"
                raise IndexUsageError(f"{what}, pass its Embedding, or source=None for a black box",
                                      cli=f"{what}, or leave out --source for a black box")
            emb = self.get(source)[0]
            meta.setdefault("source_task", source)
        elif isinstance(source, Embedding):
            emb = source
        elif source is None:
            emb = Embedding(self.prior.copy(), self.prior, self.layout, {**self.space, "task": None})
        else:
            raise TaskIndexError(f"source must be a task row name, an Embedding or None; got {type(source).__name__}")
        self.add_many([(name, emb, "model", meta)], replace=replace)

    @property
    def alpha(self) -> float:
        """The complexity weight of d_asym for this index (expert selection), 0.15 unless set."""
        return float(self.manifest.get("alpha", distance.ALPHA))

    def set_alpha(self, alpha: float) -> None:
        """Store a new alpha (one commit). Fitted models keep the alpha of their MODEL2VEC fit until the next fit."""
        self._writable()
        manifest = json.loads(json.dumps(self.manifest))
        manifest["alpha"] = self._alpha(alpha, default=False)
        self._commit(manifest)

    def _alpha(self, alpha, default: bool = True) -> float:
        """A given alpha, checked, or (None, where a default is allowed) the index's."""
        if alpha is None and default:
            return self.alpha
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not np.isfinite(alpha) or alpha < 0:
            raise TaskIndexError(f"alpha must be a finite number >= 0; got {alpha!r}")
        return float(alpha)

    @property
    def model2vec(self) -> dict | None:
        """The stored MODEL2VEC fit: models, gamma, alpha and the training summary (None before a fit)."""
        fit = self.manifest.get("model2vec")
        return None if fit is None else {k: v for k, v in fit.items() if k != "theta"}

    def _model_rows(self, where: dict | None) -> np.ndarray:
        keep = self._kinds["model"] & (filters.mask(self._rows, where) if where else True)
        if not self._kinds["model"].any():
            raise IndexUsageError("the index has no model rows: add experts with add_model(...)",
                                  cli="the index has no model rows: add experts with "
                                  "`taskindex add INDEX NAME --kind model --source TASK`")
        return np.flatnonzero(keep)

    def select_model(self, query, k: int = 5, where: dict | None = None, alpha: float | None = None,
                     probe=None) -> list[Hit]:
        """The k model rows best suited to `query` (Embedding, Task or row name), best first.

        Ranked by d_asym(m_j -> query); m_j is the MODEL2VEC embedding where a fit covers the model
        (hit.ranked_by 'model2vec', scored with the fit's alpha), else the model's source embedding ('asym',
        scored with `alpha` or the index's).
        """
        from taskindex.select import evaluation

        if not isinstance(k, int) or k < 1:
            raise TaskIndexError(f"k must be a positive integer; got {k!r}")
        rows = self._model_rows(where)
        alpha = self._alpha(alpha)
        emb, _ = self._as_embedding(query, probe)
        if len(rows) == 0:
            return []
        names = [self._names[r] for r in rows]
        fit = self.manifest.get("model2vec")
        m, fitted = evaluation.fitted_vectors(self._gather(rows), names, self._ids[rows], fit, self._theta)
        # a fitted model is scored with the alpha its bias was learned for; the others with this call's
        alphas = np.where(fitted, fit["alpha"] if fit else alpha, alpha)
        cx = np.atleast_1d(distance.complexity(m, self.prior))
        score = distance.one_to_many(emb.vector, m) - alphas * cx
        top = np.argsort(score, kind="stable")[:k]
        return [Hit(names[t], "model", float(score[t]), float(cx[t]),
                    self.metadata(int(rows[t])), "model2vec" if fitted[t] else "asym") for t in top]

    def _selection_inputs(self, errors):
        from taskindex.select import model2vec

        tasks, models, err = model2vec.error_matrix(model2vec.read_errors(errors), self.names("task"),
                                                    self.names("model"))
        sources = [self.metadata(self._row(m)).get("source_task") for m in models]
        return tasks, models, err, self.vectors(tasks), self.vectors(models), sources

    def fit_model2vec(self, errors, seed: int = 0, **options) -> dict:
        """Learn MODEL2VEC from observed errors (task, model, error) and store it (one commit); returns its summary.

        options: alpha_s, lr, weight_decay, max_steps, patience, holdout (supp. 4.3 defaults).
        """
        from taskindex.select import model2vec

        self._writable()
        model2vec.check_options(options)
        tasks, models, err, tv, mv, _ = self._selection_inputs(errors)
        f = model2vec.fit(tv, mv, err, self.prior, self.alpha, models, seed=seed, **options)
        manifest = json.loads(json.dumps(self.manifest))
        manifest["model2vec"] = {
            "models": models, "ids": [int(self._ids[self._row(m)]) for m in models], "tasks": tasks,
            "theta": self._store.new_file(".npy", _npy_bytes(f.theta)), "gamma": f.gamma, "alpha": f.alpha,
            "summary": f.summary, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self._commit(manifest)
        return dict(f.summary)

    def evaluate_selection(self, errors, seed: int = 0, exclude: dict | None = None, progress: bool | None = None,
                           **options):
        """Leave-one-out expert selection on an errors table (a SelectionReport); changes nothing.

        exclude: {task: [models]} never picked for that task, beside the model trained on it.
        """
        from taskindex.select import model2vec
        from taskindex.select import evaluation

        model2vec.check_options(options)
        tasks, models, err, tv, mv, sources = self._selection_inputs(errors)
        return evaluation.evaluate(tasks, models, err, tv, mv, self.prior, self.alpha, sources, seed=seed,
                                  fit_options=options, exclude=exclude, progress=progress)

    def remove(self, name: str, *names: str) -> None:
        """Remove one or more rows in one commit (their ids are never reused); an unknown name removes nothing."""
        self._writable()
        gone = {int(self._ids[self._row(n)]) for n in (name, *names)}
        manifest = json.loads(json.dumps(self.manifest))
        manifest["deleted"] = sorted(set(manifest["deleted"]) | gone)
        manifest["row_count"] = len(self) - len(gone)
        self._commit(manifest)

    def _decoded(self, encoded: bytes, vector_type: str | None = None) -> np.ndarray:
        """Segment-file bytes back to float32 rows: what the index will read."""
        raw = np.frombuffer(encoded, dtype="<u2" if (vector_type or self.vector_type) == "bfloat16" else "<f4")
        return decode_vectors(raw.reshape(-1, self.dim))

    def compact(self, vectors: str | None = None) -> int:
        """Fold all segments into one, forget deleted rows, retrain the projection, drop old files.

        vectors="bfloat16" (or "float32") also converts the stored vectors: the upgrade path of an existing index.
        """
        self._writable()
        if vectors is not None:
            _check_vector_type(vectors)
        store = self._store
        manifest = json.loads(json.dumps(self.manifest))
        manifest["vectors"] = vector_type = vectors or self.vector_type
        rows = np.arange(len(self))
        manifest["segments"] = []
        manifest["deleted"] = []
        manifest["projection"] = None
        manifest["projection_rows"] = 0
        if len(rows):
            encoded = b"".join(encode_vectors(self._gather(rows[i:i + 4096]), vector_type)
                               for i in range(0, len(rows), 4096))
            import pandas as pd

            frame = self._rows
            if vector_type != self.vector_type:  # complexity follows the vectors the index will hold
                frame = frame.assign(complexity=pd.array(
                    distance.complexity(self._decoded(encoded, vector_type), self.prior),
                    dtype=frame["complexity"].dtype))
            frame = frame.assign(**{c: self._lazy_column(rows, c) for c in LAZY})
            manifest["segments"] = [{"vectors": store.new_file(VECTOR_TYPES[vector_type], encoded),
                                     **_segment_rows(store, frame), "proj": None}]
        self._commit(manifest, retrain=True)
        removed = 0
        for p in store.unreferenced(self.manifest):
            p.unlink(missing_ok=True)
            removed += 1
        return removed

    def _writable(self) -> None:
        if self.readonly:
            raise IndexUsageError("the index is open read-only: open it with readonly=False to change it")

    def _commit(self, manifest: dict, retrain: bool = False) -> None:
        live = manifest["row_count"]
        trained = manifest.get("projection_rows", 0)
        if live >= candidates.EXACT_ROWS and (retrain or manifest.get("projection") is None
                                          or (trained < candidates.PCA_SAMPLE and live >= 2 * trained)):
            self._train_projection(manifest)
        manifest["version"] = self.version + 1
        self._store.commit(manifest)
        if (manifest.get("projection") != self.manifest.get("projection")
                or len(manifest["segments"]) < len(self.manifest["segments"])
                or manifest.get("vectors") != self.manifest.get("vectors")):
            self._load(manifest)
            return
        new_segments = manifest["segments"][len(self.manifest["segments"]):]
        newly_deleted = set(manifest["deleted"]) - set(self.manifest["deleted"])
        self.manifest = manifest
        self._append(new_segments, newly_deleted)

    def _train_projection(self, manifest: dict) -> None:
        """(Re)fit the PCA on up to PCA_SAMPLE live rows and re-project every segment.

        Runs when the index doubles while small, so its cost stays O(1) per added row.
        """
        import pyarrow.parquet as pq

        store = self._store
        deleted = set(manifest["deleted"])
        segs = [(s, store.memmap(s["vectors"], self.dim),
                 pq.read_table(store.path(s["rows"]), columns=["id"]).column("id").to_numpy())
                for s in manifest["segments"]]
        live = [(i, j) for i, (_, _, ids) in enumerate(segs) for j in np.flatnonzero(~np.isin(ids, list(deleted)))]
        rng = np.random.default_rng(0)
        pick = rng.choice(len(live), size=min(len(live), candidates.PCA_SAMPLE), replace=False)
        chosen = [live[p] for p in sorted(pick)]  # in segment order
        sample = np.concatenate([_rows_of(segs[i][1], [j for _, j in group])
                                 for i, group in itertools.groupby(chosen, key=lambda t: t[0])])
        projection = candidates.train_projection(sample)
        manifest["projection"] = store.new_file(".npy", _npy_bytes(projection))
        manifest["projection_rows"] = len(live)
        for seg, vecs, _ in segs:
            blocks = [np.arange(i, min(i + 4096, len(vecs))) for i in range(0, len(vecs), 4096)]
            proj = (np.concatenate([candidates.project(_rows_of(vecs, b), projection) for b in blocks]) if blocks
                    else np.zeros((0, 1)))
            seg["proj"] = store.new_file(".proj.f32", proj.astype("<f4").tobytes())

    # --- search --------------------------------------------------------------------------------

    def _as_embedding(self, query, probe) -> tuple[Embedding, int | None]:
        if isinstance(query, Embedding):
            self._check_embedding(query)
            return query, None
        if isinstance(query, str):  # the stored vector: a query needs no provenance read from disk
            row = self._row(query)
            return Embedding(self._vector(row), self.prior, self.layout, dict(self.space)), int(self._ids[row])
        from taskindex.data.task import Task  # imports torch: only when a task must be embedded

        if isinstance(query, Task):
            return self.embed(query, probe=probe, progress=False), None
        raise TaskIndexError(f"query must be an Embedding, a Task or a row name; got {type(query).__name__}")

    def embed(self, task, max_samples: int = 1000, *, image_column: str = "image", label_column: str = "label",
              probe=None, progress: bool | None = None) -> Embedding:
        """`task` embedded in this index's space (its probe, method and estimator), ready to add or query.

        task: a Task, or where to read one: an image folder, a .parquet/.csv file (image_column, label_column)
        or sample:NAME."""
        from taskindex.data.sources import load_task
        from taskindex.data.task import Task
        from taskindex.embedding.pipeline import embed

        if isinstance(task, (str, os.PathLike)):
            task = load_task(os.fspath(task), image_column, label_column)
        elif not isinstance(task, Task):
            raise TaskIndexError(f"task must be a taskindex.Task or the path of its images; got {type(task).__name__}")
        return embed(task, probe or self.probe(), max_samples=max_samples, progress=progress, **self.embed_options())

    def embed_options(self) -> dict:
        """The keyword arguments of `embed` that put a new task in this index's space."""
        name, trim = parse_estimator(self.space["estimator"])
        return {"method": self.space["method"], "prior_scale": self.space["prior_scale"], "estimator": name,
                "trim": trim if name != "mean" else None}

    def probe(self):
        """Rebuild the index's probe to embed new tasks (registered probes only)."""
        from taskindex.embedding.probes import probe_for_space

        return probe_for_space(self.space)

    def query(
        self,
        query,
        k: int = 10,
        metric: str = "sym",
        kind: str | None = None,
        where: dict | None = None,
        exact: bool = False,
        alpha: float | None = None,
        probe=None,
        refine: int | None = None,
    ) -> list[Hit]:
        """The k nearest rows. metric 'asym' ranks by d_asym(row -> query), alpha the index's unless given.

        refine: candidates re-ranked with the exact distance per result wanted (more: higher recall, slower);
        None: the index's default for its size (`info()["refine"]`)."""
        alpha, keep, filtered = self._query_plan(k, metric, kind, where, alpha)
        want = self._want(k, metric, refine)
        emb, self_id = self._as_embedding(query, probe)
        if exact or self._candidates is None:
            rows = np.flatnonzero(keep)
        else:
            own = int(self_id is not None)
            found = self._candidates.nearest(candidates.project(emb.vector[None, :], self._projection), want + own,
                                             k + own, self._ids[keep] if filtered else None)[0]
            rows = np.searchsorted(self._ids, found)
        return self._hits([self._rank(emb.vector, rows, self_id, k, metric, alpha)], metric)[0]

    def query_many(
        self,
        queries: Iterable | None = None,
        k: int = 10,
        metric: str = "sym",
        kind: str | None = None,
        where: dict | None = None,
        exact: bool = False,
        alpha: float | None = None,
        probe=None,
        progress: bool | None = None,
        device: str | None = None,
        refine: int | None = None,
    ) -> list[list[Hit]]:
        """`query` for many queries (Embeddings, Tasks or row names; None: every row) with the same answers,
        batched: one projection and one FAISS search for all, then the exact re-rank of the candidates.

        device: where the re-rank runs. None: numpy threads over the cores, or a CUDA GPU where torch is
        already imported and sees one; a torch device ('cuda', 'cuda:1', 'cpu') runs it in torch there,
        each candidate row read once for the whole batch."""
        from concurrent.futures import ThreadPoolExecutor

        from tqdm.auto import tqdm

        alpha, keep, filtered = self._query_plan(k, metric, kind, where, alpha)
        want = self._want(k, metric, refine)
        pairs = [self._as_embedding(q, probe) for q in (self.names() if queries is None else queries)]
        if not pairs:
            return []
        vectors = np.stack([e.vector for e, _ in pairs]).astype(np.float32)
        if exact or self._candidates is None:
            every = np.flatnonzero(keep)
            rows = [every] * len(pairs)
        else:
            # each query gets the candidates `query` would fetch for it (one more only for a row's own name)
            own = np.array([i is not None for _, i in pairs], dtype=np.int64)
            found = self._candidates.nearest(candidates.project(vectors, self._projection), want + own, k + own,
                                             self._ids[keep] if filtered else None)
            rows = [np.searchsorted(self._ids, f) for f in found]
        device = _torch_device(device)
        self_ids = [i for _, i in pairs]
        out = []
        ends = np.cumsum([len(r) for r in rows])
        threads = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        with (ThreadPoolExecutor(threads) if device is None and threads > 1 else contextlib.nullcontext()) as pool, \
                tqdm(total=len(pairs), desc="query_many", unit="query", leave=False,
                     disable=progress is False or len(pairs) < 1000) as bar:
            lo = 0
            while lo < len(pairs):  # queries in chunks of about BATCH_PAIRS candidate pairs
                hi = max(lo + 1, int(np.searchsorted(ends, (ends[lo - 1] if lo else 0) + BATCH_PAIRS, side="right")))
                out += self._rank_many(vectors[lo:hi], rows[lo:hi], self_ids[lo:hi], k, metric, alpha, device,
                                       (pool, threads))
                bar.update(hi - lo)
                lo = hi
        return self._hits(out, metric)

    def _rank_many(self, vectors: np.ndarray, rows: list[np.ndarray], self_ids: list, k: int, metric: str,
                   alpha: float, device: str | None, workers: tuple) -> list[tuple[np.ndarray, np.ndarray]]:
        """`_rank` for a batch of queries: each candidate row is read once for all the queries that want it,
        and the float32 pass, then the float64 pass of the rows each query must settle, score (query, row)
        pairs a block of rows at a time, so a batch reads far fewer rows than its queries one by one
        (tools/bench_query.py times both). The float32 pass runs in torch on `device` where one is given."""
        rows = [self._own(r, s) for r, s in zip(rows, self_ids)]
        counts = [len(r) for r in rows]
        owner = np.repeat(np.arange(len(rows)), counts)
        dists = self._score_pairs(vectors, owner, np.concatenate([np.zeros(0, np.int64), *rows]), np.float32, device,
                                  workers)
        cuts = np.cumsum([0, *counts])
        plans = [self._settle(r, dists[a:b], k, metric, alpha) for r, a, b in zip(rows, cuts, cuts[1:])]
        counts = [len(top) for _, top in plans]
        exact = self._score_pairs(vectors, np.repeat(np.arange(len(rows)), counts),
                                  np.concatenate([np.zeros(0, np.int64), *(r[t] for r, (_, t) in zip(rows, plans))]),
                                  np.float64, None, workers)
        cuts = np.cumsum([0, *counts])
        return [self._finish(r, score, top, exact[a:b], k, metric, alpha)
                for r, (score, top), a, b in zip(rows, plans, cuts, cuts[1:])]

    def _score_pairs(self, vectors: np.ndarray, owner: np.ndarray, wanted: np.ndarray, dtype, device: str | None,
                     workers: tuple) -> np.ndarray:
        """d_sym of each pair (vectors[owner[p]], row wanted[p]), the rows read in index order, PAIR_BLOCK at once;
        workers: (a thread pool or None, its threads) for numpy."""
        dists = np.empty(len(wanted))
        union, at = np.unique(wanted, return_inverse=True)
        by_row = np.argsort(at, kind="stable")
        at_sorted = at[by_row]
        if device is not None:
            import torch

            q = torch.as_tensor(vectors, device=device)
        for lo in range(0, len(union), PAIR_BLOCK):
            block = self._gather(union[lo:lo + PAIR_BLOCK])
            here = by_row[np.searchsorted(at_sorted, lo):np.searchsorted(at_sorted, lo + PAIR_BLOCK)]
            if device is None:
                dists[here] = distance.rerank_pairs(vectors, owner[here], block, at[here] - lo, dtype, *workers)
                continue
            block = torch.as_tensor(block, device=device)
            for p in range(0, len(here), PAIR_BLOCK):
                pairs = here[p:p + PAIR_BLOCK]
                dists[pairs] = distance.rerank_torch(q[torch.as_tensor(owner[pairs], device=device)],
                                                     block[torch.as_tensor(at[pairs] - lo, device=device)])
        return dists

    def _query_plan(self, k, metric, kind, where, alpha) -> tuple[float, np.ndarray, bool]:
        """Checked arguments of a query: (alpha, the rows the filter keeps, whether anything is filtered)."""
        if metric not in ("sym", "asym"):
            raise TaskIndexError(f"unknown metric {metric!r}: use 'sym' or 'asym'")
        if kind not in (None, *KINDS):
            raise TaskIndexError(f"unknown kind {kind!r}: use 'task', 'model' or None")
        if not isinstance(k, int) or k < 1:
            raise TaskIndexError(f"k must be a positive integer; got {k!r}")
        alpha = self._alpha(alpha)
        keep = filters.mask(self._rows, where) if where else np.ones(len(self), dtype=bool)
        if kind is not None:
            keep &= self._kinds[kind]
        return alpha, keep, bool(where) or kind is not None

    def _want(self, k: int, metric: str, refine: int | None) -> int:
        """Candidates fetched for k answers (a row's own name as the query costs one more: itself, dropped):
        asym re-orders by complexity, so it looks further."""
        if refine is None:
            refine = candidates.default_refine(len(self))
        elif isinstance(refine, bool) or not isinstance(refine, (int, np.integer)) or refine < 1:
            raise TaskIndexError(f"refine must be a positive integer (candidates per result); got {refine!r}")
        return k * int(refine) * (2 if metric == "asym" else 1)

    def _own(self, rows: np.ndarray, self_id) -> np.ndarray:
        """Candidate rows in index order (each segment's rows read in one pass), the query's own row left out."""
        rows = np.sort(rows)
        return rows[self._ids[rows] != self_id] if self_id is not None else rows

    def _rank(self, vector: np.ndarray, rows: np.ndarray, self_id, k: int, metric: str,
              alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """Exact re-rank of candidate rows: float32 d_sym picks the k, float64 gives them their distances.
        Returns (the k rows, their scores), best first."""
        rows = self._own(rows, self_id)
        if len(rows) <= RERANK_ROWS:  # the usual query: its candidates stay in memory for the float64 pass
            raw = self._gather(rows)
            return self._top(vector, rows, distance.rerank(vector, raw), k, metric, alpha, raw)
        dists = [distance.rerank(vector, self._gather(rows[i:i + RERANK_ROWS]))
                 for i in range(0, len(rows), RERANK_ROWS)]  # an exact scan: a block at a time
        return self._top(vector, rows, np.concatenate(dists), k, metric, alpha)

    def _top(self, vector: np.ndarray, rows: np.ndarray, dists: np.ndarray, k: int, metric: str,
             alpha: float, raw: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k best of the re-ranked rows, with their float64 scores (`raw`: the rows' vectors, if at hand)."""
        score, top = self._settle(rows, dists, k, metric, alpha)
        exact = distance.rerank(vector, raw[top] if raw is not None else self._gather(rows[top]), np.float64)
        return self._finish(rows, score, top, exact, k, metric, alpha)

    def _settle(self, rows: np.ndarray, dists: np.ndarray, k: int, metric: str,
                alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """(scores, the positions that need their float64 distance). The float32 pass is within ~1e-5 of
        d_sym: every row it puts within RERANK_TIE of the k-th gets its exact distance before the cut, so
        the k best of those are the answer (numpy and torch sums then agree)."""
        if len(rows) == 0:
            return dists, np.zeros(0, np.int64)
        score = dists - alpha * self._complexity[rows] if metric == "asym" else dists.copy()
        order = np.argsort(score, kind="stable")
        cut = score[order[min(k, len(order)) - 1]] + RERANK_TIE
        return score, order[:max(k, int(np.searchsorted(score[order], cut, side="right")))]

    def _finish(self, rows: np.ndarray, score: np.ndarray, top: np.ndarray, exact: np.ndarray, k: int, metric: str,
                alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """The k best rows, best first, and their scores, once `top` has its float64 distances `exact`."""
        score[top] = exact - alpha * self._complexity[rows[top]] if metric == "asym" else exact
        top = top[np.argsort(score[top], kind="stable")][:k]
        return rows[top], score[top]

    def _hits(self, ranked: list[tuple[np.ndarray, np.ndarray]], metric: str) -> list[list[Hit]]:
        records = self._records(np.concatenate([r for r, _ in ranked]).astype(np.int64))
        starts = np.cumsum([0] + [len(r) for r, _ in ranked])
        return [[Hit(rec["name"], rec["kind"], float(sc), rec["complexity"], rec, metric)
                 for rec, sc in zip(records[lo:hi], scores)] for lo, hi, (_, scores) in zip(starts, starts[1:], ranked)]

    # --- checking ------------------------------------------------------------------------------

    def _fit_coverage(self) -> str:
        """How many of the fitted models are still the rows they were fitted on (a rebuild replaces them all)."""
        fit = self.manifest.get("model2vec")
        if fit is None:
            return "none"
        live = sum(n in self._by_name and int(self._ids[self._by_name[n]]) == i
                   for n, i in zip(fit["models"], fit["ids"]))
        return f"{live} of {len(fit['models'])} fitted models live, alpha {fit['alpha']:g}, {fit['created']}"

    def verify(self) -> list[str]:
        """Hash every file of the committed version; returns the problems found (empty: all good)."""
        return verify(self._store.root)

    def info(self) -> dict:
        return {"path": str(self._store.root), "version": self.version, "rows": len(self),
                "tasks": int(self._kinds["task"].sum()), "models": int(self._kinds["model"].sum()), "dim": self.dim,
                "vectors": self.vector_type,
                **self.space, "segments": len(self.manifest["segments"]),
                "deleted_rows": len(self.manifest["deleted"]),
                "candidates": self._candidates.kind if self._candidates is not None else "exact",
                "refine": candidates.default_refine(len(self)) if self._candidates is not None else None,
                "alpha": self.alpha, "model2vec": self._fit_coverage(),
                "created": self.manifest["created"]}


def _rows_of(rows: np.ndarray, pos) -> np.ndarray:
    """Rows of one memory-mapped segment file as float32."""
    out = np.empty((len(pos), rows.shape[1]), np.float32)
    read_rows(rows, np.asarray(pos, dtype=np.int64), out)
    return out


def _live_rows(frames: list["pd.DataFrame"], deleted: set[int]) -> "pd.DataFrame":
    """Segments' rows in order, removed ones dropped (an empty frame has the columns every row has)."""
    import pandas as pd

    if not frames:
        return pd.DataFrame({"id": pd.Series(dtype="int64"), "name": pd.Series(dtype="object"),
                             "kind": pd.Series(dtype="object"), "complexity": pd.Series(dtype="float64"),
                             "_seg": pd.Series(dtype="int64"), "_pos": pd.Series(dtype="int64")})
    rows = pd.concat(frames, ignore_index=True)
    return _defragment(rows[~rows["id"].isin(deleted).to_numpy()].reset_index(drop=True))


MAX_CHUNKS = 16  # Arrow chunks per metadata column before they are joined: a take across 200 chunks cost 23 ms


def _defragment(frame: "pd.DataFrame") -> "pd.DataFrame":
    """Join the Arrow chunks that concatenating segments leaves once a column has more than MAX_CHUNKS, so the
    cost of joining stays amortised O(1) per added row and a hit's metadata is one take per column."""
    import pandas as pd

    for col in frame.columns:
        values = frame[col].array
        if isinstance(values, pd.arrays.ArrowExtensionArray):
            chunked = values.__arrow_array__()
            if chunked.num_chunks > MAX_CHUNKS:
                frame[col] = pd.arrays.ArrowExtensionArray(chunked.combine_chunks())
    return frame


def _torch_device(device) -> str | None:
    """query_many's device: None for numpy; a CUDA GPU by default only where torch is loaded already."""
    import sys

    if device is None:
        torch = sys.modules.get("torch")
        return "cuda" if torch is not None and torch.cuda.is_available() else None
    import torch

    device = str(device)
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise TaskIndexError(f"device {device!r} is not usable here ({str(exc).splitlines()[0]}): "
                             "pass device=None for numpy, or 'cpu'") from None
    return device


def _check_vector_type(vectors) -> None:
    if vectors not in VECTOR_TYPES:
        raise TaskIndexError(f"unknown vector storage {vectors!r}: use 'float32' (exact) or 'bfloat16' "
                             "(half the disk)")


def verify(path: str | os.PathLike) -> list[str]:
    """Check CURRENT, the manifest and every data file (size and sha256) without loading the index."""
    store = Store(path)
    try:
        manifest = store.read_manifest()
    except TaskIndexError as exc:
        return [str(exc)]
    problems = []
    for ref in all_refs(manifest):
        p = store.path(ref)
        if not p.is_file():
            problems.append(f"{p}: missing")
        elif p.stat().st_size != ref["size"]:
            problems.append(f"{p}: {p.stat().st_size} bytes, expected {ref['size']} (truncated or altered)")
        elif sha256_file(p) != ref["sha256"]:
            problems.append(f"{p}: checksum mismatch (altered)")
    return problems
