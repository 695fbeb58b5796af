"""One committed version of an index, loaded: the live rows' names, ids, kinds and complexities, their
memory-mapped vectors, the candidate structure, and the metadata (JSON records or Parquet).

A commit that only adds segments or deletion marks is applied in O(new rows) (`append`); anything else
reloads the version (`load`).
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING

import numpy as np

from taskindex.errors import IndexCorruptError, IndexUsageError
from taskindex.index import candidates
from taskindex.index.manifest import Manifest
from taskindex.index.segments import LIGHT_ROWS, arrow_records, frame_table, live_rows, read_frame
from taskindex.index.storage import (HASH_ON_OPEN_BYTES, Store, VersionGoneError, all_refs, decode_vectors,
                                     manifest_name, read_rows, warm)
from taskindex.space import Space

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

KINDS = ("task", "model")


def reads_files(method):
    """A method that reads the version's files after it was loaded: a file removed under it (by a compact in
    another process that this handle's lease could not stop) is one clear error, never a raw OSError."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (FileNotFoundError, IndexCorruptError) as exc:
            version, root = self.manifest.version, self.store.root
            if (root / manifest_name(version)).is_file():
                if isinstance(exc, IndexCorruptError):
                    raise
                raise IndexCorruptError(f"{exc.filename or exc} is missing: the index is damaged (run "
                                        f"`taskindex repair {root}` to go back to the newest intact version)") from None
            raise VersionGoneError(f"version {version} of {root} was removed by a compact in another process while "
                                   "this handle read it: call refresh() to move to the newest version, or reopen",
                                   cli=f"{root} was compacted while this command read it: run it again") from None
    return wrapper


class LoadedVersion:
    """The state queries and writes read, for the version `manifest` of the index in `store`."""

    def __init__(self, store: Store, manifest: Manifest, readonly: bool):
        self.store = store
        self.readonly = readonly
        self.load(manifest)

    def load(self, manifest: Manifest) -> None:
        """Read a committed version from disk, checking its files."""
        store = self.store
        vector_bytes = sum(s["vectors"]["size"] for s in manifest.segments)
        for ref in all_refs(manifest.to_json()):  # .npy files are hashed as load_npy reads them (MODEL2VEC's on first use)
            is_vectors = ref["name"].endswith((".f32", ".bf16")) and not ref["name"].endswith(".proj.f32")
            store.check(ref, full=not ref["name"].endswith(".npy") and (not is_vectors
                                                                        or vector_bytes <= HASH_ON_OPEN_BYTES))
        self.manifest = manifest
        self.space_key = Space.of(manifest.space)
        self.space = {**manifest.space, **self.space_key.to_dict()}
        self.dim = manifest.dim
        self.vector_type = manifest.vectors
        self.layout = list(manifest.layout)
        self.prior = store.load_npy(manifest.prior)
        self.projection = store.load_npy(manifest.projection) if manifest.projection else None
        self._fit = None  # (theta's file name, theta): MODEL2VEC's parameters, read when a selection needs them
        self._results = None  # (the results file's name, its table), read when first asked for
        self.vectors, self.projs = [], []
        self.seg = self.pos = np.zeros(0, np.int64)
        self.row_names, self.by_name = [], {}
        self.candidates = None
        self.light = None  # a light index's rows as JSON records, one dict a live row
        self._arrow = None  # (the frame, to_arrow() of it)
        segments, deleted = list(manifest.segments), set(manifest.deleted)
        if self.readonly and manifest.row_count <= LIGHT_ROWS and all(s.get("records") for s in segments):
            self._frame = None  # read from Parquet on first use (filters, to_pandas)
            self._open_light(segments, deleted)
        else:
            self._frame = live_rows([], set())
            self.append(segments, deleted)
        if self.candidates is not None:  # a large open leaves freed decode buffers behind
            from taskindex.index.memory import release_freed

            release_freed()

    @property
    @reads_files
    def theta(self) -> np.ndarray | None:
        fit = self.manifest.model2vec
        if not fit:
            return None
        if self._fit is None or self._fit[0] != fit["theta"]["name"]:
            self._fit = (fit["theta"]["name"], self.store.load_npy(fit["theta"]))
        return self._fit[1]

    @property
    @reads_files
    def rows(self) -> "pd.DataFrame":
        """The live rows' metadata as a DataFrame, in row order."""
        if self._frame is None:
            frames = self._segment_frames(list(self.manifest.segments), 0)
            self._frame = live_rows(frames, set(self.manifest.deleted)).drop(columns=["_seg", "_pos"])
        return self._frame

    def _segment_frames(self, segments: list[dict], first: int) -> list["pd.DataFrame"]:
        """Segments' metadata rows, each with its segment number (from `first`) and position in it."""
        frames = []
        for i, seg in enumerate(segments, first):
            frame = read_frame(self.store.path(seg["rows"]))
            frame["_seg"] = i
            frame["_pos"] = np.arange(len(frame))
            frames.append(frame)
        return frames

    def _map(self, segments: list[dict]) -> None:
        for seg in segments:
            self.vectors.append(self.store.memmap(seg["vectors"], self.dim))
            self.projs.append(self.store.memmap(seg["proj"], candidates.PROJ_DIM) if seg.get("proj") else None)

    def _open_light(self, segments: list[dict], deleted: set[int]) -> None:
        """Load from the segments' JSON records: no pandas, no pyarrow."""
        self._map(segments)
        records, seg, pos = [], [], []
        every = [json.loads(self.store.path(s["records"]).read_bytes()) for s in segments]
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
        self.light = records
        self.seg, self.pos = np.array(seg, np.int64), np.array(pos, np.int64)
        kinds = [r["kind"] for r in records]
        self._index_rows([r["name"] for r in records], np.array([r["id"] for r in records], np.int64),
                         {k: np.array([x == k for x in kinds], bool) for k in KINDS},
                         np.array([r["complexity"] for r in records], np.float64), deleted, len(segments), False)

    def append(self, segments: list[dict], deleted: set[int]) -> None:
        """Bring the in-memory state up to date with new segments and deletions: O(new rows)."""
        frames = self._segment_frames(segments, len(self.vectors))
        self._map(segments)
        old = [self._frame.assign(_seg=self.seg, _pos=self.pos)] if len(self._frame) else []
        rows = live_rows([*old, *frames], deleted)
        # nothing removed from the old rows: extend the name list and map instead of rebuilding them
        extend = bool(old) and len(rows) == len(self._frame) + sum(map(len, frames))
        self.seg = rows.pop("_seg").to_numpy(np.int64)
        self.pos = rows.pop("_pos").to_numpy(np.int64)
        self._frame = rows
        names = rows["name"].iloc[len(self.row_names) if extend else 0:].tolist()
        self._index_rows(names, rows["id"].to_numpy(dtype=np.int64),
                         {k: (rows["kind"] == k).to_numpy(dtype=bool) for k in KINDS},
                         rows["complexity"].to_numpy(dtype=np.float64), deleted, len(segments), extend)

    def _index_rows(self, names: list[str], ids: np.ndarray, kinds: dict[str, np.ndarray], complexity: np.ndarray,
                    deleted: set[int], new_segments: int, extend: bool) -> None:
        """The plain arrays of the query path and the candidate structure, for the live rows in row order;
        `names` are all of them, or with `extend` those after the ones already known."""
        if extend:
            start = len(self.row_names)
            self.row_names.extend(names)
            self.by_name.update(zip(names, range(start, len(self.row_names))))
        else:
            self.row_names = names
            self.by_name = dict(zip(names, range(len(names))))
        # ids ascend with the row order (assigned in commit order)
        self.ids, self.kinds, self.complexity = ids, kinds, complexity
        if self.projection is None or len(ids) < candidates.EXACT_ROWS:
            self.candidates = None
        elif self.candidates is None:
            self.candidates = candidates.Candidates(self.proj_rows(np.arange(len(ids))), self.ids)
        else:
            self.candidates.remove(deleted)
            new = np.flatnonzero(self.seg >= len(self.vectors) - new_segments)
            self.candidates.add(self.proj_rows(new), self.ids[new])

    def proj_rows(self, rows: np.ndarray) -> np.ndarray:
        return self._read(self.projs, rows, candidates.PROJ_DIM)

    @reads_files
    def _read(self, files: list[np.ndarray], rows: np.ndarray, width: int) -> np.ndarray:
        """Rows from per-segment files as float32: one `read_rows` per segment, decoded straight into the
        output (rows in index order, as _rank passes them, need no reordering)."""
        out = np.empty((len(rows), width), np.float32)
        segs = self.seg[rows]
        order = np.argsort(segs, kind="stable")
        ordered = bool(np.all(order == np.arange(len(rows))))
        buf = out if ordered else np.empty_like(out)
        cuts = [0, *(np.flatnonzero(np.diff(segs[order])) + 1), len(rows)]
        for lo, hi in zip(cuts, cuts[1:]):
            if hi > lo:
                read_rows(files[segs[order[lo]]], self.pos[rows[order[lo:hi]]], buf[lo:hi])
        if not ordered:
            out[order] = buf
        return out

    def row(self, name: str) -> int:
        if name not in self.by_name:
            import difflib

            close = difflib.get_close_matches(str(name), list(self.by_name), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise IndexUsageError(f"no row named {name!r} in the index{hint}: see `taskindex ls`")
        return self.by_name[name]

    @reads_files
    def results(self) -> "pd.DataFrame | None":
        """The stored results table (None before any were added), read once per version: callers copy it."""
        if not self.manifest.results:
            return None
        if self._results is None or self._results[0] != self.manifest.results["name"]:
            import pandas as pd

            self._results = (self.manifest.results["name"], pd.read_parquet(self.store.path(self.manifest.results)))
        return self._results[1]

    @reads_files
    def warm(self, progress: bool | None) -> int:
        """Read every vector file into the page cache, with a bar; returns the bytes."""
        from tqdm.auto import tqdm

        with tqdm(total=sum(f.nbytes for f in self.vectors), unit="B", unit_scale=True, desc="warm", leave=False,
                  disable=None if progress is None else not progress) as bar:
            return sum(warm(f, bar.update) for f in self.vectors)

    def vector(self, row: int) -> np.ndarray:
        return decode_vectors(self.vectors[self.seg[row]][self.pos[row]])

    def gather(self, rows: np.ndarray) -> np.ndarray:
        return self._read(self.vectors, rows, self.dim)

    def records(self, rows: np.ndarray) -> list[dict]:
        """The metadata of many rows: from a light index's records, else one Arrow take (pandas' iloc cost
        2.5 ms for 10 hits at 100k rows, the take 0.2 ms)."""
        if self.light is not None:
            return [dict(self.light[r]) for r in rows]
        import pyarrow as pa

        return arrow_records(self.to_arrow().take(pa.array(rows, pa.int64())))

    @reads_files
    def lazy_column(self, rows: np.ndarray, column: str) -> list:
        """A column kept on disk, for the given live rows, reading only the row groups that hold them."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        out = [None] * len(rows)
        by_seg: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            by_seg.setdefault(int(self.seg[r]), []).append(i)
        for seg, members in by_seg.items():
            file = pq.ParquetFile(self.store.path(self.manifest.segments[seg]["rows"]))
            starts = np.cumsum([0] + [file.metadata.row_group(g).num_rows for g in range(file.num_row_groups)])
            members = np.array(members)
            pos = self.pos[rows[members]]
            groups = np.searchsorted(starts, pos, side="right") - 1
            for g in np.unique(groups):
                sel = np.flatnonzero(groups == g)
                values = file.read_row_group(int(g), columns=[column]).column(0)
                for i, v in zip(members[sel], values.take(pa.array(pos[sel] - starts[g])).to_pylist()):
                    out[i] = v
        return out

    def to_arrow(self) -> "pa.Table":
        """to_pandas() as one Arrow table, for DuckDB and polars (the segment files still hold removed rows);
        made once per version: Arrow tables are immutable."""
        frame = self.rows
        if self._arrow is None or self._arrow[0] is not frame:
            self._arrow = (frame, frame_table(frame))
        return self._arrow[1]

    def column_type(self, key: str) -> str | None:
        """'boolean', 'number' or 'string' for a metadata column the index holds values of."""
        import pandas as pd
        import pyarrow as pa

        dtype = self.rows[key].dtype if key in self.rows.columns else None
        if not isinstance(dtype, pd.ArrowDtype):
            return None
        t = dtype.pyarrow_dtype
        return ("boolean" if pa.types.is_boolean(t) else "number" if pa.types.is_integer(t) or pa.types.is_floating(t)
                else "string" if pa.types.is_string(t) or pa.types.is_large_string(t) else None)

    def names(self, kind: str | None = None) -> list[str]:
        if kind is None:
            return list(self.row_names)
        return [n for n, keep in zip(self.row_names, self.kinds[kind]) if keep]

    def info(self) -> dict:
        """TaskIndex.info(): the version, its rows, space, storage and candidate structure."""
        from taskindex.select.experts import fit_coverage

        m = self.manifest
        return {"path": str(self.store.root), "version": m.version, "rows": len(self.ids),
                "tasks": int(self.kinds["task"].sum()), "models": int(self.kinds["model"].sum()), "dim": self.dim,
                "vectors": self.vector_type, **self.space, "segments": len(m.segments), "deleted_rows": len(m.deleted),
                "candidates": self.candidates.kind if self.candidates is not None else "exact",
                "refine": candidates.default_refine(len(self.ids)) if self.candidates is not None else None,
                "alpha": float(m.alpha), "model2vec": fit_coverage(self), "created": m.created}
