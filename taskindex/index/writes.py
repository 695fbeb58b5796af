"""Writing a version: the checks every new row passes, the segment it becomes, compaction, the projection's
training, and the commit that makes a new manifest current.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np

from taskindex import distance
from taskindex.embedding.vector import Embedding
from taskindex.errors import IncompatibleEmbeddingsError, IndexUsageError, TaskIndexError
from taskindex.index import candidates, leases
from taskindex.index.manifest import Manifest
from taskindex.index.segments import LAZY, npy_bytes, rows_of, segment_rows
from taskindex.index.storage import VECTOR_TYPES, CommitError, Store, decode_vectors, encode_vectors
from taskindex.index.version import KINDS, LoadedVersion
from taskindex.space import Space

RESERVED = ("id", "name", "kind", "complexity", "created", "task", "source", "n_samples", "n_classes", "method",
            "embedding_meta")
_ITEM_FORM = "(name, embedding), (name, embedding, kind), (name, embedding, kind, metadata) or a dict with those keys"


def unpack(item) -> tuple:
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


def check_vector_type(vectors) -> None:
    if vectors not in VECTOR_TYPES:
        raise TaskIndexError(f"unknown vector storage {vectors!r}: use 'float32' (exact) or 'bfloat16' "
                             "(half the disk)")


def check_embedding(v: LoadedVersion, emb: Embedding) -> None:
    """An embedding may join (or query) this index: a Fisher diagonal of the index's space and layout."""
    if not isinstance(emb, Embedding):
        raise TaskIndexError(f"expected a taskindex.Embedding; got {type(emb).__name__}")
    if not np.isfinite(emb.vector).all() or (emb.vector < 0).any():  # the re-rank trusts what passes here
        raise TaskIndexError(f"embedding {emb.meta.get('task')!r} has negative or non-finite entries: a Fisher "
                             "diagonal is finite and >= 0, so re-embed the task")
    space = Space.of(emb.meta)
    if space != v.space_key:
        raise IncompatibleEmbeddingsError(
            f"embedding {emb.meta.get('task')!r} does not belong in this index ({space.differences(v.space_key)}, "
            "embedding vs index): embed it with the index's probe, image size and method")
    if emb.dim != v.dim or emb.layout != v.layout:
        raise IncompatibleEmbeddingsError(
            f"embedding has {emb.dim} filters, the index {v.dim}: embed it with the index's probe")
    if not np.allclose(emb.prior, v.prior, rtol=1e-5):
        raise IncompatibleEmbeddingsError("embedding's prior differs from the index's: re-embed it")


def model_row(v: LoadedVersion, name: str, source, metadata: dict | None) -> tuple:
    """add_model's row: the embedding of its source task row, a given Embedding, or t0 for a black box."""
    meta = dict(metadata or {})
    if isinstance(source, str):
        row = v.by_name.get(source)
        if row is None or not v.kinds["task"][row]:
            what = f"model {name!r}: source task {source!r} is not a task row of this index; add the task first"
            raise IndexUsageError(f"{what}, pass its Embedding, or source=None for a black box",
                                  cli=f"{what}, or leave out --source for a black box")
        provenance = json.loads(v.lazy_column(np.array([row]), "embedding_meta")[0])
        emb = Embedding(v.vector(row), v.prior, v.layout, provenance)
        meta.setdefault("source_task", source)
    elif isinstance(source, Embedding):
        emb = source
    elif source is None:
        emb = Embedding(v.prior.copy(), v.prior, v.layout, {**v.space, "task": None})
    else:
        raise TaskIndexError(f"source must be a task row name, an Embedding or None; got {type(source).__name__}")
    return name, emb, "model", meta


def checked_rows(v: LoadedVersion, items, replace: bool) -> list[tuple]:
    """add_many's items as (name, embedding, kind, metadata), every one checked before anything is written."""
    batch, seen = [], set()
    types = {}  # metadata key -> the one type of its values, so every version reads as one table
    for item in items:
        name, emb, kind, meta = unpack(item)
        if not isinstance(name, str) or not name.strip() or len(name) > 512:
            raise TaskIndexError(f"row names must be non-empty strings of at most 512 characters; got {name!r}")
        if name in seen or (name in v.by_name and not replace):
            what = f"a row named {name!r} already exists"
            raise IndexUsageError(f"{what}: use upsert to replace it or choose another name",
                                  cli=f"{what}: pass --replace to replace it or choose another name")
        if kind not in KINDS:
            raise TaskIndexError(f"unknown kind {kind!r}: use 'task' or 'model'")
        _check_metadata(v, name, meta, types)
        check_embedding(v, emb)
        if kind == "model" and emb.meta.get("task") and "source_task" not in meta:
            meta = {**meta, "source_task": str(emb.meta["task"])}  # what leave-one-out never picks it for
        seen.add(name)
        batch.append((name, emb, kind, meta))
    return batch


def _check_metadata(v: LoadedVersion, name: str, meta, types: dict) -> None:
    if not isinstance(meta, dict):
        raise TaskIndexError(f"metadata must be a dict; got {type(meta).__name__}")
    for k, value in meta.items():
        if not isinstance(k, str) or k in RESERVED:
            raise TaskIndexError(f"metadata key {k!r} is reserved or not a string: rename it")
        if not (value is None or isinstance(value, (str, int, float, bool))):
            raise TaskIndexError(f"metadata value for {k!r} must be a string, number or boolean; got "
                                 f"{type(value).__name__}")
        t = _value_type(value)
        known = types.setdefault(k, v.column_type(k) or t) if t else None
        if known != t:
            raise TaskIndexError(f"metadata {k!r} of row {name!r} is a {t} but other rows hold {known}s: "
                                 "use one type per key (convert the value or choose another key)")


def added(v: LoadedVersion, items, replace: bool, only: bool) -> Manifest | None:
    """The next manifest once `items` are added (None: nothing to add); `only` removes every other row."""
    batch = checked_rows(v, items, replace or only)
    if not batch and not (only and len(v.ids)):
        return None
    if not batch:
        raise TaskIndexError("only=True with no rows would empty the index: remove rows one by one instead")
    m = v.manifest
    ids = np.arange(m.next_id, m.next_id + len(batch), dtype=np.int64)
    replaced = v.ids.tolist() if only else [int(v.ids[v.by_name[n]]) for n, *_ in batch if n in v.by_name]
    return m.but(segments=(*m.segments, new_segment(v, batch, ids)), deleted=(*m.deleted, *replaced),
                 next_id=int(ids[-1]) + 1, row_count=len(v.ids) + len(batch) - len(replaced))


def new_segment(v: LoadedVersion, batch: list[tuple], ids: np.ndarray) -> dict:
    """The files of a segment holding `batch` as rows `ids`: vectors, metadata, and their projection if trained."""
    import pandas as pd

    encoded = encode_vectors(np.stack([e.vector for _, e, _, _ in batch]), v.vector_type)
    vectors = decoded(encoded, v.dim, v.vector_type)  # what the index will read back: projections and complexity
    created = now()
    records = []
    complexity = distance.complexity(vectors, v.prior)
    for i, c, (name, emb, kind, meta) in zip(ids, complexity, batch):
        rec = {"id": int(i), "name": name, "kind": kind, "complexity": float(c),
               "created": created, "task": emb.meta.get("task"), "source": emb.meta.get("source"),
               "n_samples": emb.meta.get("n_samples"), "n_classes": emb.meta.get("n_classes"),
               "method": emb.meta.get("method"), "embedding_meta": json.dumps(emb.meta, sort_keys=True)}
        rec.update(meta)
        records.append(rec)
    store = v.store
    segment = {"vectors": store.new_file(VECTOR_TYPES[v.vector_type], encoded),
               **segment_rows(store, pd.DataFrame(records)), "proj": None}
    if v.projection is not None:
        segment["proj"] = store.new_file(".proj.f32", candidates.project(vectors, v.projection).tobytes())
    return segment


def decoded(encoded: bytes, dim: int, vector_type: str) -> np.ndarray:
    """Segment-file bytes back to float32 rows: what the index will read."""
    raw = np.frombuffer(encoded, dtype="<u2" if vector_type == "bfloat16" else "<f4")
    return decode_vectors(raw.reshape(-1, dim))


def compacted(v: LoadedVersion, vector_type: str) -> Manifest:
    """The next manifest once every live row is folded into one segment (the projection to be retrained)."""
    segments = (_compacted_segment(v, vector_type),) if len(v.ids) else ()
    return v.manifest.but(vectors=vector_type, segments=segments, deleted=(), projection=None, projection_rows=0)


def _compacted_segment(v: LoadedVersion, vector_type: str) -> dict:
    """Every live row in one segment, its vectors stored as `vector_type`, the lazy columns read back in."""
    import pandas as pd

    rows = np.arange(len(v.ids))
    encoded = b"".join(encode_vectors(v.gather(rows[i:i + 4096]), vector_type) for i in range(0, len(rows), 4096))
    frame = v.rows
    if vector_type != v.vector_type:  # complexity follows the vectors the index will hold
        frame = frame.assign(complexity=pd.array(
            distance.complexity(decoded(encoded, v.dim, vector_type), v.prior), dtype=frame["complexity"].dtype))
    frame = frame.assign(**{c: v.lazy_column(rows, c) for c in LAZY})
    return {"vectors": v.store.new_file(VECTOR_TYPES[vector_type], encoded), **segment_rows(v.store, frame),
            "proj": None}


def commit(v: LoadedVersion, manifest: Manifest, retrain: bool = False, operation: str | None = None) -> None:
    """Make `manifest` the next version (training the projection first where it is due) and load it into `v`;
    `operation` says what the commit did (default: the change from the version before, in words)."""
    live, trained = manifest.row_count, manifest.projection_rows
    if live >= candidates.EXACT_ROWS and (retrain or manifest.projection is None
                                          or (trained < candidates.PCA_SAMPLE and live >= 2 * trained)):
        manifest = train_projection(v.store, manifest, v.dim)
    manifest = manifest.but(version=v.manifest.version + 1, committed=now(),
                            operation=operation or manifest.change_from(v.manifest))
    try:
        v.store.commit(manifest.to_json())
    except CommitError as exc:
        if exc.committed:  # CURRENT names it already: this handle follows the disk
            _apply(v, manifest)
        raise
    _apply(v, manifest)


def _apply(v: LoadedVersion, manifest: Manifest) -> None:
    """Move `v` and its lease to the version just committed: in O(new rows) where rows were only added or
    removed, else by loading it."""
    leases.hold(v.store, manifest.version)
    old = v.manifest
    appended = (manifest.segments[:len(old.segments)] == old.segments and set(old.deleted) <= set(manifest.deleted))
    if not appended or manifest.projection != old.projection or manifest.vectors != old.vectors:
        v.load(manifest)
        return
    v.manifest = manifest
    v.append(list(manifest.segments[len(old.segments):]), set(manifest.deleted) - set(old.deleted))


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def train_projection(store: Store, manifest: Manifest, dim: int) -> Manifest:
    """(Re)fit the PCA on up to PCA_SAMPLE live rows and re-project every segment.

    Runs when the index doubles while small, so its cost stays O(1) per added row.
    """
    import pyarrow.parquet as pq

    deleted = set(manifest.deleted)
    segs = [(s, store.memmap(s["vectors"], dim),
             pq.read_table(store.path(s["rows"]), columns=["id"]).column("id").to_numpy())
            for s in manifest.segments]
    live = [(i, j) for i, (_, _, ids) in enumerate(segs) for j in np.flatnonzero(~np.isin(ids, list(deleted)))]
    rng = np.random.default_rng(0)
    pick = rng.choice(len(live), size=min(len(live), candidates.PCA_SAMPLE), replace=False)
    chosen = [live[p] for p in sorted(pick)]  # in segment order
    sample = np.concatenate([rows_of(segs[i][1], [j for _, j in group])
                             for i, group in itertools.groupby(chosen, key=lambda t: t[0])])
    projection = candidates.train_projection(sample)
    projection_file = store.new_file(".npy", npy_bytes(projection))
    segments = []
    for seg, vecs, _ in segs:
        blocks = [np.arange(i, min(i + 4096, len(vecs))) for i in range(0, len(vecs), 4096)]
        proj = (np.concatenate([candidates.project(rows_of(vecs, b), projection) for b in blocks]) if blocks
                else np.zeros((0, 1)))
        segments.append({**seg, "proj": store.new_file(".proj.f32", proj.astype("<f4").tobytes())})
    return manifest.but(projection=projection_file, projection_rows=len(live), segments=tuple(segments))


def created(root: Path, probe, method: str, prior_scale: float, estimator: str, vectors: str) -> Store:
    """A new index folder holding version 1, its writer lock held by the returned store."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IndexUsageError(f"cannot create {str(root)!r}: {exc.strerror}") from None
    store = Store(root)
    store.acquire()
    try:
        # checked again under the lock: another process may have created an index here since the caller looked
        if any(p.name != "LOCK" for p in root.iterdir()):
            raise IndexUsageError(f"{str(root)!r} was created by another process meanwhile: choose a new path "
                                  "or open that index")
        store.commit(first_manifest(store, probe, method, prior_scale, estimator, vectors).to_json())
    except BaseException:
        store.release()
        raise
    return store


def first_manifest(store: Store, probe, method: str, prior_scale: float, estimator: str, vectors: str) -> Manifest:
    """Version 1 of a new index: its space, layout and prior, and no rows."""
    from taskindex.embedding.fisher import weight_scale_prior

    prior = weight_scale_prior(probe.backbone, prior_scale).astype(np.float32)
    return Manifest(version=1, space={**probe.identity, "method": method, "prior_scale": float(prior_scale),
                                      "estimator": estimator},
                    dim=probe.dim, layout=tuple(tuple(x) for x in probe.layout),
                    prior=store.new_file(".npy", npy_bytes(prior)), vectors=vectors, created=now(), committed=now(),
                    operation="created")
