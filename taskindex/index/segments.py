"""Segment files: how a commit's rows are written (vectors, Parquet metadata, JSON records) and read back.

Small segments also keep their rows as JSON records (what a query returns), so a small index opened
read-only loads and answers without importing pandas or pyarrow; the Parquet file stays the metadata table
that filters, pandas, polars and DuckDB read.
"""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING

import numpy as np

from taskindex.index.storage import Store, read_rows

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

ROW_GROUP = 4096  # metadata rows per Parquet row group: `get` decodes one group, not a whole segment
LIGHT_ROWS = 10_000  # segments up to this size also store JSON records; indexes up to it open read-only from them
LAZY = ("embedding_meta",)  # per-row columns left on disk until `get` or `compact` needs them
MAX_CHUNKS = 16  # Arrow chunks per metadata column before they are joined: a take across 200 chunks cost 23 ms


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def arrow_records(table: "pa.Table") -> list[dict]:
    """Metadata rows as plain JSON-able dicts, missing values (null, NaN) left out: what a Hit carries."""
    return [{k: v for k, v in rec.items() if v is not None and v == v} for rec in table.to_pylist()]


def frame_table(frame: "pd.DataFrame") -> "pa.Table":
    """A metadata frame as Arrow (zero-copy for its Arrow columns), without pandas' schema metadata."""
    import pyarrow as pa

    return pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)


def read_frame(source) -> "pd.DataFrame":
    """A segment's metadata rows, the columns kept on disk (LAZY) left out."""
    import pandas as pd
    import pyarrow.parquet as pq

    file = pq.ParquetFile(source)
    columns = [c for c in file.schema_arrow.names if c not in LAZY]
    return file.read(columns=columns).to_pandas(types_mapper=pd.ArrowDtype)


def segment_rows(store: Store, frame: "pd.DataFrame") -> dict:
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
        written = read_frame(io.BytesIO(data))
        entries["records"] = store.new_file(".json", json.dumps(arrow_records(frame_table(written))).encode())
    return entries


def rows_of(rows: np.ndarray, pos) -> np.ndarray:
    """Rows of one memory-mapped segment file as float32."""
    out = np.empty((len(pos), rows.shape[1]), np.float32)
    read_rows(rows, np.asarray(pos, dtype=np.int64), out)
    return out


def live_rows(frames: list["pd.DataFrame"], deleted: set[int]) -> "pd.DataFrame":
    """Segments' rows in order, removed ones dropped (an empty frame has the columns every row has)."""
    import pandas as pd

    if not frames:
        return pd.DataFrame({"id": pd.Series(dtype="int64"), "name": pd.Series(dtype="object"),
                             "kind": pd.Series(dtype="object"), "complexity": pd.Series(dtype="float64"),
                             "_seg": pd.Series(dtype="int64"), "_pos": pd.Series(dtype="int64")})
    rows = pd.concat(frames, ignore_index=True)
    return _defragment(rows[~rows["id"].isin(deleted).to_numpy()].reset_index(drop=True))


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
