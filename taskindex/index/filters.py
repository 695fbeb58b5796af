"""`where` filters on metadata columns: equality, membership and comparisons.

Python: {"dataset": "mnist", "group": ["subset", "all"], "n_samples": (">=", 100)}.
CLI:    --where dataset=mnist --where "group in subset,all" --where "n_samples>=100".
A comma after = or a comparison is an error (is 'dataset=mnist,digits' one value or a list?):
membership is spelt 'key in a,b'. One clause per column. Values are written bare: quotes, brackets or a
second operator inside a value ("owner == 'me'", "key in (a,b)", "a=1 and b=2") are errors, not values
that match nothing.
"""

from __future__ import annotations

import operator
import re

import numpy as np

from taskindex.errors import TaskIndexError

OPS = {"=": operator.eq, "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
       ">": operator.gt, ">=": operator.ge}
_CLAUSE = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*(==|!=|<=|>=|=|<|>|\s+in\s+)\s*(.*?)\s*$")
SYNTAX = "key=value, key!=value, key>=number (also >, <, <=) or 'key in a,b,c'"
_QUOTED = re.compile(r"^['\"(\[{]|['\")\]}]$")


def parse_value(text: str):
    """CLI values: integers, then floats, then true/false, else the string itself."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_clause(text: str) -> tuple[str, object]:
    """'key=value', 'key>=3', 'key in a,b' -> (key, condition) in the Python form."""
    m = _CLAUSE.match(text)
    if not m or not m.group(3) or m.group(3)[0] in "<>=!":
        raise TaskIndexError(f"cannot parse --where {text!r}: use {SYNTAX}")
    key, op, value = m.group(1), m.group(2).strip(), m.group(3)
    items = [v.strip() for v in value.split(",")] if op == "in" else [value]
    if any(_QUOTED.search(v) for v in items):
        bare = f"{key} in a,b" if op == "in" else f"{key}{'=' if op == '==' else op}VALUE"
        raise TaskIndexError(f"cannot parse --where {text!r}: write values bare, without quotes or brackets "
                             f"(e.g. --where \"{bare}\"); use {SYNTAX}")
    if any(c in value for c in "=<>"):
        raise TaskIndexError(f"cannot parse --where {text!r}: one condition per --where (repeat --where for "
                             f"several; every one must hold); use {SYNTAX}")
    if op == "in":
        return key, [parse_value(v) for v in items if v]
    if "," in value:  # 'dataset=mnist,digits' reads as "one of them" but would match the literal string
        if op in ("=", "=="):
            raise TaskIndexError(f"--where {text!r} is ambiguous: to match any of several values "
                                 f"use '{key} in {value}'")
        raise TaskIndexError(f"--where {text!r} is ambiguous: {op} takes one value, not a list")
    if op in ("=", "=="):
        return key, parse_value(value)
    return key, (op, parse_value(value))


def parse_where(clauses) -> dict | None:
    """CLI --where clauses -> the Python `where` dict; one clause per column (a second would overwrite it)."""
    where: dict = {}
    for text in clauses:
        key, cond = parse_clause(text)
        if key in where:
            raise TaskIndexError(f"--where names {key!r} twice: give one condition per column "
                                 f"(for several values use '{key} in a,b')")
        where[key] = cond
    return where or None


def mask(frame, where: dict | None) -> np.ndarray:
    """Boolean mask of the rows of `frame` (a pandas DataFrame) that satisfy every condition."""
    keep = np.ones(len(frame), dtype=bool)
    if not where:
        return keep
    if not isinstance(where, dict):
        raise TaskIndexError(f"where must be a dict of column -> condition; got {type(where).__name__}")
    for key, cond in where.items():
        if key not in frame.columns:
            cols = ", ".join(sorted(frame.columns))
            raise TaskIndexError(f"unknown metadata column {key!r} in where: the columns are {cols}")
        col = frame[key]
        if isinstance(cond, (list, set, frozenset)):
            keep &= col.isin(list(cond)).to_numpy()
        elif isinstance(cond, tuple):
            if len(cond) != 2 or cond[0] not in OPS:
                raise TaskIndexError(f"bad condition {cond!r} for {key!r}: use (op, value) with op one of "
                                     f"{', '.join(OPS)}")
            op, value = cond
            try:
                keep &= OPS[op](col, value).fillna(False).to_numpy(dtype=bool)
            except TypeError:
                raise TaskIndexError(f"cannot compare column {key!r} ({col.dtype}) with {value!r}: "
                                     "compare numbers with numbers") from None
        else:
            keep &= (col == cond).fillna(False).to_numpy(dtype=bool)
    return keep
