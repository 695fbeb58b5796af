"""Expert selection over an index's model rows: d_asym to the query from each model's MODEL2VEC embedding
where a fit covers it, else from its source task's embedding; and the MODEL2VEC fit stored with the index."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from taskindex import distance, validation
from taskindex.errors import IndexUsageError
from taskindex.index import filters
from taskindex.index.hit import Hit
from taskindex.index.segments import npy_bytes
from taskindex.index.version import LoadedVersion
from taskindex.select import evaluation, model2vec, neighbors, results, verify


def model_rows(v: LoadedVersion, where: dict | None) -> np.ndarray:
    """The model rows a selection may pick (those `where` keeps); an index without models is an error."""
    if not v.kinds["model"].any():
        raise IndexUsageError("the index has no model rows: add experts with add_model(...)",
                              cli="the index has no model rows: add experts with "
                              "`taskindex add INDEX NAME --kind model --source TASK`")
    return np.flatnonzero(v.kinds["model"] & (filters.mask(v.rows, where) if where else True))


def ranked_models(v: LoadedVersion, query: np.ndarray, rows: np.ndarray, k: int, alpha: float,
                  use_fit: bool = True) -> list[Hit]:
    """The k best of the model `rows` for the query vector, by d_asym(m_j -> query): m_j the MODEL2VEC
    embedding where a fit covers the model (and `use_fit`), else its source task's."""
    names = [v.row_names[r] for r in rows]
    fit = v.manifest.model2vec if use_fit else None
    if fit is not None and not model2vec.improved(fit["summary"]):
        fit = None  # its scores would be d_asym's: say so (ranked_by "asym"), not "model2vec"
    m, fitted = evaluation.fitted_vectors(v.gather(rows), names, v.ids[rows], fit, v.theta if use_fit else None)
    # a fitted model is scored with the alpha its bias was learned for; the others with this call's
    alphas = np.where(fitted, fit["alpha"] if fit else alpha, alpha)
    cx = np.atleast_1d(distance.complexity(m, v.prior))
    score = distance.one_to_many(query, m) - alphas * cx
    top = np.argsort(score, kind="stable")[:k]
    records = v.records(rows[top].astype(np.int64))
    return [Hit(names[t], "model", float(score[t]), float(cx[t]), rec, "model2vec" if fitted[t] else "asym")
            for t, rec in zip(top, records)]


BY = ("auto", "neighbors", "model2vec", "asym")


def check_selection(by: str, verify_by: str | None, shortlist: int) -> None:
    """How select_model was asked to rank, checked before any work."""
    validation.choice(by, "by", BY)
    validation.choice(verify_by, "verify", (None, "logme"))
    validation.integer(shortlist, "shortlist")


def select(v: LoadedVersion, query: np.ndarray, self_id, rows: np.ndarray, k: int, alpha: float, by: str,
           check: tuple = (None, 3, None)) -> list[Hit]:
    """The k best of the model `rows` for the query vector, ranked as `by` says. "auto" is the best measured
    choice (docs/selection.md): the results the index holds on its live rows (neighbours), else a MODEL2VEC
    fit that lowered its held-out loss, else d_asym.
    check: (verify, shortlist, the query as given): verify="logme" re-ranks the shortlist (select/verify.py)."""
    verify_by, shortlist, task = check
    check_selection(by, verify_by, shortlist)
    if not len(rows):
        return []
    found = _results_matrix(v, self_id) if by in ("auto", "neighbors") else None
    if by == "auto":
        by = "neighbors" if found is not None else "model2vec"  # model2vec: d_asym where no fit improved
    depth = max(k, shortlist) if verify_by else k
    if by == "neighbors":
        if found is None:
            raise _no_results("select by='auto', 'model2vec' or 'asym'", cli="pass --by auto, model2vec or asym")
        hits = _by_neighbors(v, query, found, rows, depth, alpha)
    else:
        hits = ranked_models(v, query, rows, depth, alpha, use_fit=by == "model2vec")
    return (verify.logme_shortlist(hits, task, shortlist) if verify_by else hits)[:k]


def _results_matrix(v: LoadedVersion, self_id) -> tuple[list[str], np.ndarray, pd.DataFrame] | None:
    """(task rows with results, their rows, the mean error table), the query's own row left out; None when
    the index holds no results on live task and model rows."""
    table = _mean_results(v)
    if table is None:
        return None
    own = v.row_names[int(np.searchsorted(v.ids, self_id))] if self_id is not None else None
    table = table[table["task"] != own]
    if table.empty:
        return None
    tasks = sorted(set(table["task"]))
    return tasks, np.array([v.row(t) for t in tasks], np.int64), table


def _mean_results(v: LoadedVersion) -> pd.DataFrame | None:
    """One error per (task, model) of live rows, the mean over the stored repeats (None: no results held)."""
    stored = v.results()
    return None if stored is None else results.mean_errors(stored, v.names("task"), v.names("model"))


def _no_results(fix: str, cli: str) -> IndexUsageError:
    what = "the index holds no results on its rows"
    return IndexUsageError(f"{what}: add them with add_results(table), or {fix}",
                           cli=f"{what}: add them with `taskindex results add INDEX FILE`, or {cli}")


def _by_neighbors(v: LoadedVersion, query: np.ndarray, found: tuple, rows: np.ndarray, k: int,
                  alpha: float) -> list[Hit]:
    """Experts ranked by their standardised errors on the query's nearest known tasks (select/neighbors.py),
    each falling back on d_asym by the share of those tasks it was not measured on."""
    tasks, task_rows, table = found
    names = [v.row_names[r] for r in rows]
    err = table.pivot(index="task", columns="model", values="error").reindex(index=tasks, columns=names).to_numpy()
    dists = distance.one_to_many(query, v.gather(task_rows))
    model_vectors = v.gather(rows)
    cx = np.atleast_1d(distance.complexity(model_vectors, v.prior))
    score, _ = neighbors.scores(dists, err, distance.one_to_many(query, model_vectors) - alpha * cx)
    top = np.argsort(score, kind="stable")[:k]
    records = v.records(rows[top].astype(np.int64))
    return [Hit(names[t], "model", float(score[t]), float(cx[t]), rec, "neighbors",
                neighbors.evidence(dists, err, tasks, int(t))) for t, rec in zip(top, records)]


def selection_inputs(v: LoadedVersion, errors) -> tuple:
    """(tasks, models, errors matrix, task vectors, model vectors, each model's source task) from a table, or
    (errors=None) from the results the index holds, averaged over repeats."""
    if errors is None:
        table = _mean_results(v)
        if table is None:
            raise _no_results("pass an errors table", cli="pass ERRORS")
    else:
        table = model2vec.read_errors(errors)
    tasks, models, err = model2vec.error_matrix(table, v.names("task"), v.names("model"))
    task_rows, model_rows_ = (np.array([v.row(n) for n in names], np.int64) for names in (tasks, models))
    sources = [rec.get("source_task") for rec in v.records(model_rows_)]
    return tasks, models, err, v.gather(task_rows), v.gather(model_rows_), sources


def fit_entry(v: LoadedVersion, errors, alpha: float, seed: int, options: dict) -> dict:
    """A MODEL2VEC fit on `errors`, as the manifest entry that stores it (its theta written as a new file)."""
    model2vec.check_options(options)
    tasks, models, err, tv, mv, _ = selection_inputs(v, errors)
    f = model2vec.fit(tv, mv, err, v.prior, alpha, models, seed=seed, **options)
    return {"models": models, "ids": [int(v.ids[v.row(m)]) for m in models], "tasks": tasks,
            "theta": v.store.new_file(".npy", npy_bytes(f.theta)), "gamma": f.gamma, "alpha": f.alpha,
            "summary": f.summary, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def results_file(v: LoadedVersion, table, replace: bool) -> tuple[dict, int]:
    """The stored results with `table` added, written as the next version's results file; (its ref, rows)."""
    frame = results.merged(v.results(), table, v.names("task"), v.names("model"), replace)
    return v.store.new_file(".parquet", results.parquet_bytes(frame)), len(frame)


def fit_coverage(v: LoadedVersion) -> str:
    """How many of the fitted models are still the rows they were fitted on (a rebuild replaces them all)."""
    fit = v.manifest.model2vec
    if fit is None:
        return "none"
    live = sum(n in v.by_name and int(v.ids[v.by_name[n]]) == i for n, i in zip(fit["models"], fit["ids"]))
    return f"{live} of {len(fit['models'])} fitted models live, alpha {fit['alpha']:g}, {fit['created']}"
