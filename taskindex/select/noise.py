"""Whether a benchmark can tell two experts apart: an error measured on n test images is a binomial
proportion, so two errors closer than their standard errors are a tie, not a ranking."""

from __future__ import annotations

import numpy as np
import pandas as pd

from taskindex.errors import TaskIndexError


def standard_error(error, n):
    """The binomial standard error of an error rate measured on n test images."""
    error, n = np.asarray(error, dtype=float), np.asarray(n, dtype=float)
    if np.any(n < 1):
        raise TaskIndexError(f"a test-image count of {n.min():g} cannot carry an error: give n_test >= 1 per result")
    return np.sqrt(error * (1.0 - error) / n)


def difference_se(error_a, error_b, n):
    """The standard error of the difference of two errors on n test images each (independence assumed:
    on the same images the paired difference is no noisier, so this is the cautious side)."""
    return np.hypot(standard_error(error_a, n), standard_error(error_b, n))


def within_noise(error_a: float, error_b: float, n: int) -> bool:
    """True when two errors are within one standard error of their difference: the test set cannot rank them."""
    return bool(abs(error_a - error_b) <= difference_se(error_a, error_b, n))


def indistinct_targets(table: pd.DataFrame) -> pd.DataFrame:
    """Per task: its best and second-best experts, their errors and whether the test set can tell them apart.

    The table holds task, model, error and n_test (the test images behind each error).
    """
    missing = [c for c in ("task", "model", "error", "n_test") if c not in table.columns]
    if missing:
        raise TaskIndexError(f"the errors table lacks {', '.join(missing)}: the noise of an error needs the "
                             "number of test images behind it (column n_test)")
    rows = []
    for task, group in table.groupby("task", sort=True):
        if len(group) < 2:
            continue
        best, second = group.nsmallest(2, "error").itertuples(index=False)
        rows.append({"task": task, "best": best.model, "best_error": best.error, "second": second.model,
                     "second_error": second.error, "n_test": int(best.n_test),
                     "within_noise": within_noise(best.error, second.error, int(best.n_test))})
    return pd.DataFrame(rows)
