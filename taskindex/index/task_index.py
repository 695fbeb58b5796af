"""TaskIndex: the public face of an index directory; each job is delegated to the module that does it.

A loaded version (version.py) holds the rows; writes.py checks rows and commits; rerank.py answers queries
through FAISS candidates (candidates.py) and the exact re-rank; select/experts.py picks experts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np

from taskindex import validation
from taskindex.embedding.estimators import DEFAULT_ESTIMATOR, estimator_id
from taskindex.embedding.vector import PRIOR_SCALE, Embedding
from taskindex.errors import IndexUsageError, TaskIndexError
from taskindex.index import history, rerank, writes
from taskindex.index.hit import Hit
from taskindex.index.history import KEEP_VERSIONS, verify
from taskindex.index.storage import Store

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

__all__ = ["Hit", "TaskIndex", "verify"]


def _held(name: str, doc: str) -> property:
    """A read-only attribute of the loaded version, as TaskIndex shows it."""
    return property(lambda self: getattr(self._v, name), doc=doc)


class TaskIndex:
    """A vector database of TASK2VEC embeddings. Open with TaskIndex.open, make with TaskIndex.create."""

    def __init__(self, store: Store, readonly: bool, version: int | None = None):
        self._v = history.loaded(store, readonly, version)

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
        instead of 84); d_sym then moves by at most ~1e-3 (docs/index.md, "Scale") and `get` returns the
        rounded vector.
        """
        from taskindex.embedding.probes import load_probe

        root = Path(path)
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            what = f"{str(root)!r} already exists and is not empty: choose a new path"
            raise IndexUsageError(f"{what} or open it with TaskIndex.open",
                                  cli=f"{what} or add rows to it with `taskindex add`")
        validation.choice(method, "method", ("montecarlo", "variational"))
        writes.check_vector_type(vectors)
        if isinstance(probe, str):
            probe = load_probe(probe, weights=weights, image_size=image_size, device="cpu")
        return cls(writes.created(root, probe, method, prior_scale, estimator_id(estimator, trim), vectors),
                   readonly=False)

    @classmethod
    def open(cls, path: str | os.PathLike, readonly: bool | None = None, *, version: int | None = None,
             lock_timeout: float | None = None) -> "TaskIndex":
        """A writer (holding the index's lock; lock_timeout: seconds to wait for it) or, with readonly=True or
        an earlier `version` (see versions()), a reader."""
        store = Store(path)
        readonly = version is not None if readonly is None else readonly
        if not readonly:
            if version is not None:
                raise IndexUsageError("an earlier version opens read-only: restore(version) makes it the newest",
                                      cli="an earlier version is read-only: `taskindex restore` makes it the newest")
            store.read_manifest()  # a clear error for a missing or non-index directory comes first
            store.acquire(None if lock_timeout is None else validation.number(lock_timeout, "lock_timeout", low=0))
        try:
            return cls(store, readonly, version)
        except BaseException:
            store.release()
            raise

    @classmethod
    def repair(cls, path: str | os.PathLike, lock_timeout: float | None = None) -> dict:
        """Point a lost or damaged CURRENT at the newest intact version, as a new commit (an intact index is left
        alone); works where open() cannot. Returns what was wrong, the versions skipped and the version made."""
        return history.repair(path, lock_timeout)

    def close(self) -> None:
        self._v.store.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self) -> int:
        return len(self._v.ids)

    def __repr__(self) -> str:
        return (f"TaskIndex({str(self._v.store.root)!r}, rows={len(self)}, probe={self.space['probe']!r}, "
                f"method={self.space['method']!r}, version={self.version})")

    readonly = _held("readonly", "Whether this handle only reads (writers hold the index's lock).")
    space = _held("space", "The probe identity, method, prior scale and estimator every row was embedded with.")
    dim = _held("dim", "Values per embedding: one per conv filter of the probe.")
    layout = _held("layout", "(layer, filters) pairs, in the probe's module order.")
    prior = _held("prior", "The trivial embedding t0 (the weight-scale prior), float32.")
    vector_type = _held("vector_type", "How raw vectors are stored: 'float32' (exact) or 'bfloat16'.")

    @property
    def version(self) -> int:
        return self._v.manifest.version

    def versions(self) -> list[dict]:
        """Every version on disk, oldest first: version, time (UTC), rows, operation, current."""
        return history.versions(self._v.store)

    def refresh(self) -> int:
        """Move this reader to the newest committed version (it holds the one it opened until then)."""
        return history.refresh(self._v)

    # --- reading -------------------------------------------------------------------------------

    def names(self, kind: str | None = None) -> list[str]:
        return self._v.names(kind)

    def __contains__(self, name: str) -> bool:
        return name in self._v.by_name

    def warm(self, progress: bool | None = None) -> int:
        """Read the stored vectors into memory (the OS page cache, mapped into this process) before queries
        need them: what a server does before it takes traffic, for an index that fits in RAM (a fresh query
        otherwise waits on the disk for rows it has not read). Returns the bytes; safe to interrupt."""
        return self._v.warm(progress)

    def vectors(self, names) -> np.ndarray:
        """The stored vectors (Fisher + t0) of the named rows, float32 (len(names), dim)."""
        return self._v.gather(np.array([self._v.row(n) for n in names], dtype=np.int64))

    def metadata(self, row: int) -> dict:
        return self._v.records(np.array([row]))[0]

    def get(self, name: str) -> tuple[Embedding, dict]:
        """The stored embedding and its metadata: bit-identical to what was added in a float32 index,
        rounded to bfloat16 in a bfloat16 one."""
        row = self._v.row(name)
        meta = json.loads(self._v.lazy_column(np.array([row]), "embedding_meta")[0])
        return Embedding(self._v.vector(row), self.prior, self.layout, meta), self.metadata(row)

    def to_pandas(self, where: dict | None = None, kind: str | None = None) -> "pd.DataFrame":
        """Live rows and their metadata (no vectors), one row per name; `where` and `kind` filter as in query."""
        if not where and kind is None:
            return self._v.rows.copy()
        keep, _ = rerank.plan(self._v, 1, "sym", kind, where)
        return self._v.rows[keep].reset_index(drop=True)

    def to_arrow(self, table: str = "rows") -> "pa.Table":
        """to_pandas(), or results() with table="results", as one Arrow table for DuckDB and polars."""
        if validation.choice(table, "table", ("rows", "results")) == "results":
            import pyarrow as pa

            return pa.Table.from_pandas(self.results(), preserve_index=False).replace_schema_metadata(None)
        return self._v.to_arrow()

    # --- writing -------------------------------------------------------------------------------

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
        manifest = writes.added(self._v, items, replace, only)
        if manifest is not None:
            writes.commit(self._v, manifest)

    def add_model(self, name: str, source=None, metadata: dict | None = None, replace: bool = False) -> None:
        """Add an expert: `source` is the task row it was trained on, that task's Embedding, or None (a black box).

        The row stores the source's embedding (a copy: removing the task later keeps the model) and its name in
        `source_task`; a black box stores the trivial embedding t0 (F = 0), so only a MODEL2VEC fit places it.
        """
        self.add_many([writes.model_row(self._v, name, source, metadata)], replace=replace)

    def remove(self, name: str, *names: str) -> None:
        """Remove one or more rows in one commit (their ids are never reused); an unknown name removes nothing."""
        self._writable()
        gone = {int(self._v.ids[self._v.row(n)]) for n in (name, *names)}
        m = self._v.manifest
        writes.commit(self._v, m.but(deleted=(*m.deleted, *gone), row_count=len(self) - len(gone)))

    def compact(self, vectors: str | None = None, keep: int = KEEP_VERSIONS) -> int:
        """Fold all segments into one, forget deleted rows, retrain the projection; then remove the files that
        neither the last `keep` versions (this one included) nor any open reader's version use. Returns the
        files removed.

        vectors="bfloat16" (or "float32") also converts the stored vectors: the upgrade path of an existing index.
        """
        self._writable()
        if vectors is not None:
            writes.check_vector_type(vectors)
        return history.compact(self._v, vectors or self.vector_type, keep)

    def restore(self, version: int) -> None:
        """Make an earlier version's rows and settings the newest version, as a new commit (nothing is lost)."""
        self._writable()
        history.restore(self._v, version)

    def _writable(self) -> None:
        if self.readonly:
            raise IndexUsageError("the index is open read-only: open it with readonly=False to change it")

    # --- expert selection ----------------------------------------------------------------------

    @property
    def alpha(self) -> float:
        """The complexity weight of d_asym for this index (expert selection), 0.15 unless set."""
        return float(self._v.manifest.alpha)

    def set_alpha(self, alpha: float) -> None:
        """Store a new alpha (one commit). Fitted models keep the alpha of their MODEL2VEC fit until the next fit."""
        self._writable()
        writes.commit(self._v, self._v.manifest.but(alpha=self._alpha(alpha, default=False)))

    def _alpha(self, alpha, default: bool = True) -> float:
        """A given alpha, checked, or (None, where a default is allowed) the index's."""
        if alpha is None and default:
            return self.alpha
        return validation.number(alpha, "alpha", low=0)

    @property
    def model2vec(self) -> dict | None:
        """The stored MODEL2VEC fit: models, gamma, alpha and the training summary (None before a fit)."""
        fit = self._v.manifest.model2vec
        return None if fit is None else {k: v for k, v in fit.items() if k != "theta"}

    def select_model(self, query, k: int = 5, where: dict | None = None, alpha: float | None = None, probe=None,
                     by: str = "auto", verify: str | None = None, shortlist: int = 3, task=None) -> list[Hit]:
        """The k model rows best suited to `query` (Embedding, Task or row name), best first (docs/selection.md).

        by="neighbors": by their results on the known tasks nearest to the query (hit.evidence lists them);
        "model2vec": d_asym from MODEL2VEC embeddings where fitted, else from source tasks ("asym": those only);
        "auto": neighbors where results are held, else model2vec. verify="logme": the first
        `shortlist` re-ranked by LogME on `task` (default: a Task query) where their weights are at hand."""
        from taskindex.select import experts

        validation.integer(k, "k")
        experts.check_selection(by, verify, shortlist)  # before a Task query is embedded
        rows, alpha = experts.model_rows(self._v, where), self._alpha(alpha)
        emb, self_id = self._as_embedding(query, probe)
        return experts.select(self._v, emb.vector, self_id, rows, k, alpha, by,
                              (verify, shortlist, query if task is None else task))

    def add_results(self, table, replace: bool = False) -> int:
        """Store measured errors (a DataFrame, .csv or .parquet: task, model, error and any other columns) as
        part of the index, in one commit; returns the results it holds. A pair already held is refused unless
        `replace`; `metric` and `seed` columns, where given, tell repeats of a pair apart."""
        from taskindex.select import experts

        self._writable()
        ref, held = experts.results_file(self._v, table, replace)
        writes.commit(self._v, self._v.manifest.but(results=ref))
        return held

    def results(self) -> "pd.DataFrame":
        """The results the index holds (task, model, error, and the other columns they came with)."""
        import pandas as pd

        stored = self._v.results()
        return pd.DataFrame({"task": [], "model": [], "error": []}) if stored is None else stored.copy()

    def fit_model2vec(self, errors=None, seed: int = 0, **options) -> dict:
        """Learn MODEL2VEC from observed errors (task, model, error; None: the results the index holds) and
        store it (one commit); returns its summary.

        options: alpha_s, lr, weight_decay, max_steps, patience, holdout (supp. 4.3 defaults).
        """
        from taskindex.select import experts

        self._writable()
        entry = experts.fit_entry(self._v, errors, self.alpha, seed, options)
        writes.commit(self._v, self._v.manifest.but(model2vec=entry))
        return dict(entry["summary"])

    def evaluate_selection(self, errors=None, seed: int = 0, exclude: dict | None = None, progress: bool | None = None,
                           **options):
        """Leave-one-out expert selection on an errors table, or the results held (a SelectionReport).

        exclude: {task: [models]} never picked for that task, beside the model trained on it.
        """
        from taskindex.select import evaluation, experts, model2vec

        model2vec.check_options(options)
        tasks, models, err, tv, mv, sources = experts.selection_inputs(self._v, errors)
        return evaluation.evaluate(tasks, models, err, tv, mv, self.prior, self.alpha, sources, seed=seed,
                                   fit_options=options, exclude=exclude, progress=progress)

    # --- search --------------------------------------------------------------------------------

    def _as_embedding(self, query, probe) -> tuple[Embedding, int | None]:
        if isinstance(query, Embedding):
            writes.check_embedding(self._v, query)
            return query, None
        if isinstance(query, str):  # the stored vector: a query needs no provenance read from disk
            row = self._v.row(query)
            return Embedding(self._v.vector(row), self.prior, self.layout, dict(self.space)), int(self._v.ids[row])
        from taskindex.data.task import Task  # imports torch: only when a task must be embedded

        if isinstance(query, Task):
            return self.embed(query, probe=probe, progress=False), None
        raise TaskIndexError(f"query must be an Embedding, a Task or a row name; got {type(query).__name__}")

    def embed(self, task, max_samples: int = 1000, *, image_column: str = "image", label_column: str = "label",
              probe=None, progress: bool | None = None, on_error: str = "raise") -> Embedding:
        """`task` embedded in this index's space (its probe, method and estimator), ready to add or query.

        task: a Task, or where to read one: an image folder, a .parquet/.csv file (image_column, label_column)
        or sample:NAME. on_error: as embed's ('skip' embeds the readable images; the meta lists the others)."""
        from taskindex.data.sources import as_task
        from taskindex.embedding.pipeline import check_on_error, embed

        check_on_error(on_error)  # before the images are read or the probe loaded
        return embed(as_task(task, image_column, label_column), probe or self.probe(), max_samples=max_samples,
                     progress=progress, on_error=on_error, **self.embed_options())

    def embed_options(self) -> dict:
        """The keyword arguments of `embed` that put a new task in this index's space."""
        return self._v.space_key.embed_options()

    def probe(self):
        """Rebuild the index's probe to embed new tasks (registered probes only)."""
        from taskindex.embedding.probes import probe_for_space

        return probe_for_space(self.space)

    def query(self, query, k: int = 10, metric: str = "sym", kind: str | None = None, where: dict | None = None,
              exact: bool = False, alpha: float | None = None, probe=None, refine: int | None = None) -> list[Hit]:
        """The k nearest rows. metric 'asym' ranks by d_asym(row -> query), alpha the index's unless given.

        refine: candidates re-ranked with the exact distance per result wanted (more: higher recall, slower);
        None: the index's default for its size (`info()["refine"]`)."""
        keep, filtered = rerank.plan(self._v, k, metric, kind, where)
        alpha, want = self._alpha(alpha), rerank.want(self._v, k, metric, refine)
        emb, self_id = self._as_embedding(query, probe)
        return rerank.search(self._v, emb.vector, self_id, k, metric, alpha, keep, filtered, want, exact)

    def query_many(self, queries: Iterable | None = None, k: int = 10, metric: str = "sym", kind: str | None = None,
                   where: dict | None = None, exact: bool = False, alpha: float | None = None, probe=None,
                   progress: bool | None = None, device: str | None = None,
                   refine: int | None = None) -> list[list[Hit]]:
        """`query` for many queries (Embeddings, Tasks or row names; None: every row) with the same answers,
        batched: one projection and one FAISS search for all, then the exact re-rank of the candidates.

        device: where the re-rank runs. None: numpy threads over the cores, or a CUDA GPU where torch is
        already imported and sees one; a torch device ('cuda', 'cuda:1', 'cpu') runs it in torch there,
        each candidate row read once for the whole batch."""
        keep, filtered = rerank.plan(self._v, k, metric, kind, where)
        alpha, want = self._alpha(alpha), rerank.want(self._v, k, metric, refine)
        pairs = [self._as_embedding(q, probe) for q in (self.names() if queries is None else queries)]
        if not pairs:
            return []
        return rerank.search_many(self._v, np.stack([e.vector for e, _ in pairs]).astype(np.float32),
                                  [i for _, i in pairs], k, metric, alpha, keep, filtered, want, exact,
                                  rerank.torch_device(device), progress)

    # --- checking ------------------------------------------------------------------------------

    def verify(self) -> list[str]:
        """Hash every file of the committed version; returns the problems found (empty: all good)."""
        return verify(self._v.store.root)

    def info(self) -> dict:
        """Where the index is, its version, rows, space, storage, candidate structure, alpha and MODEL2VEC fit."""
        return self._v.info()
