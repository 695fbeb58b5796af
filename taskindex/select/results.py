"""Results the index remembers: measured errors of (task, model) pairs, read and checked one way for every use.

A results table has the columns task, model and error, and any others a user keeps (metric, seed, notes).
The index stores its results as one Parquet file per version; a fit or a selection that needs one error per
pair takes the mean over the repeats.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd

from taskindex.errors import IndexUsageError, TaskIndexError

COLUMNS = ("task", "model", "error")
IDENTITY = ("metric", "seed")  # where a table has them, they tell repeats of a pair apart


def read_table(source, what: str = "errors table") -> pd.DataFrame:
    """A table of observed errors: a DataFrame, or a .csv / .parquet file, with at least task, model, error."""
    if isinstance(source, pd.DataFrame):
        table = source
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise TaskIndexError(f"{what} {path!r} does not exist: pass a .csv or .parquet file "
                                 "with columns task, model, error")
        try:
            table = pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path)
        except Exception as exc:  # pandas raises many types for unreadable files
            raise TaskIndexError(f"cannot read {what} {path!r} ({type(exc).__name__}): "
                                 "give a .csv or .parquet file with columns task, model, error") from None
    else:
        raise TaskIndexError(f"errors must be a DataFrame or a .csv/.parquet path; got {type(source).__name__}")
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise TaskIndexError(f"{what} lacks column(s) {', '.join(missing)}: it needs task, model, error "
                             f"(it has {', '.join(map(str, table.columns))})")
    return table.copy()


def check(table: pd.DataFrame, tasks, models, key: tuple = ("task", "model")) -> pd.DataFrame:
    """The table with task and model as text and error as float, once every row passes: a finite error >= 0,
    one row per `key`, a task row and a model row of the index."""
    table = table.assign(task=table["task"].astype(str), model=table["model"].astype(str))
    err = pd.to_numeric(table["error"], errors="coerce")
    bad = table[~np.isfinite(err.to_numpy(np.float64, na_value=np.nan)) | (err < 0).to_numpy()]
    if len(bad):
        r = bad.iloc[0]
        value = r["error"].item() if isinstance(r["error"], np.generic) else r["error"]
        raise TaskIndexError(f"error for ({r['task']!r}, {r['model']!r}) is {value!r}: errors must be "
                             f"finite numbers >= 0 ({len(bad)} bad row(s)); fix or drop them")
    dup = table[table.duplicated(list(key), keep=False)]
    if len(dup):
        first = dup.iloc[0]
        times = int((dup[list(key)] == first[list(key)]).all(axis=1).sum())
        shown = ", ".join(repr(v.item() if isinstance(v, np.generic) else v) for v in first[list(key)])
        raise TaskIndexError(f"({shown}) appears {times} times: give one error "
                             f"per ({', '.join(key)}), e.g. the mean of the repeats")
    unknown_t = sorted(set(table["task"]) - set(tasks))
    if unknown_t:
        raise TaskIndexError(f"errors table names {len(unknown_t)} task(s) that are not task rows of the index "
                             f"(e.g. {', '.join(unknown_t[:3])}): add them with `taskindex add` or drop their rows")
    unknown_m = sorted(set(table["model"]) - set(models))
    if unknown_m:
        what = (f"errors table names {len(unknown_m)} model(s) that are not model rows of the index "
                f"(e.g. {', '.join(unknown_m[:3])})")
        raise TaskIndexError(f"{what}: add them with add_model", cli=f"{what}: add them with `taskindex add --kind model`")
    return table.assign(error=err.astype(np.float64))


def identity(table: pd.DataFrame) -> tuple:
    """The columns that make a stored result one of a kind: task, model, and metric and seed where present."""
    return ("task", "model", *(c for c in IDENTITY if c in table.columns))


def merged(stored: pd.DataFrame | None, new: pd.DataFrame, tasks, models, replace: bool) -> pd.DataFrame:
    """The stored results with `new` added (checked); with `replace`, new rows take the place of stored ones
    of the same identity, otherwise such a row is refused."""
    new = read_table(new, "results table")
    new = check(new, tasks, models, identity(new))
    if stored is None or not len(stored):
        return new.reset_index(drop=True)
    key = list(identity(pd.concat([stored.head(0), new.head(0)])))
    clash = stored.merge(new[key].drop_duplicates(), on=key, how="inner") if set(key) <= set(stored.columns) else stored.head(0)
    if len(clash) and not replace:
        pair = ", ".join(repr(v.item() if isinstance(v, np.generic) else v) for v in clash.iloc[0][key])
        what = f"the index already holds a result for ({pair}) and {len(clash) - 1} more"
        raise IndexUsageError(f"{what}: pass replace=True to replace them", cli=f"{what}: pass --replace to replace them")
    keep = stored.merge(clash[key], on=key, how="left", indicator=True)["_merge"].eq("left_only").to_numpy()
    return pd.concat([stored[keep], new], ignore_index=True)


def parquet_bytes(table: pd.DataFrame) -> bytes:
    """The results as the Parquet file a version stores (one type per column, or one clear error)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        arrow = pa.Table.from_pandas(table, preserve_index=False).replace_schema_metadata(None)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise TaskIndexError(f"results columns mix types ({str(exc).splitlines()[0]}): give each column one type "
                             "(numbers, text or booleans)") from None
    sink = io.BytesIO()
    pq.write_table(arrow, sink)
    return sink.getvalue()


def mean_errors(table: pd.DataFrame, tasks, models) -> pd.DataFrame:
    """One error per (task, model) of live rows: the mean over the stored repeats (seeds, metrics)."""
    live = table[table["task"].isin(set(tasks)) & table["model"].isin(set(models))]
    return live.groupby(["task", "model"], as_index=False, sort=True)["error"].mean()
