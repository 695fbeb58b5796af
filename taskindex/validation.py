"""Checks of user arguments, with one message shape: what is wrong, the value given, how to fix it.

    k must be a positive integer; got True
    unknown metric 'cos': use 'sym' or 'asym'

A boolean is never a number here: Python counts True as 1, a user who passes it has made a mistake.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from taskindex.errors import TaskIndexError


def _message(name: str, what: str, value: Any, fix: str | None) -> str:
    return f"{name} must be {what}; got {value!r}" + (f" ({fix})" if fix else "")


def is_integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def integer(value: Any, name: str, low: int | None = 1, *, none: str | None = None, fix: str | None = None,
            error: type[TaskIndexError] = TaskIndexError) -> int | None:
    """`value` as an int >= low (any int if low is None); None passes where `none` says what it means."""
    if value is None and none is not None:
        return None
    if not is_integer(value) or (low is not None and value < low):
        what = "an integer" if low is None else "a positive integer" if low == 1 else f"an integer >= {low}"
        raise error(_message(name, what + (f" or None ({none})" if none else ""), value, fix))
    return int(value)


def number(value: Any, name: str, low: float | None = None, high: float | None = None, *, what: str | None = None,
           fix: str | None = None, error: type[TaskIndexError] = TaskIndexError) -> float:
    """`value` as a finite float within [low, high] (`what` words the range when it is open or special)."""
    ok = is_number(value) and math.isfinite(value) and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        bounds = " and ".join(b for b in (low is not None and f">= {low:g}", high is not None and f"<= {high:g}") if b)
        raise error(_message(name, what or ("a finite number" + (f" {bounds}" if bounds else "")), value, fix))
    return float(value)


def choice(value: Any, name: str, choices: Sequence, *, fix: str | None = None,
           error: type[TaskIndexError] = TaskIndexError) -> Any:
    """`value` if it is one of `choices` (None among them where it is allowed)."""
    if value not in choices:
        words = [repr(c) if c is not None else "None" for c in choices]
        listed = words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"
        raise error(f"unknown {name} {value!r}: use {listed}" + (f" ({fix})" if fix else ""))
    return value
