"""TaskIndex: round trips, filters, candidate recall, concurrency, crashes and corruption."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from taskindex import Embedding, distance
from taskindex.index import candidates, rerank
from taskindex.errors import (IncompatibleEmbeddingsError, IndexCorruptError, IndexLockedError, IndexUsageError,
                              TaskIndexError)
from taskindex.index.task_index import TaskIndex, verify
from taskindex._testing.index_harness import Overlapping, Synth, crash_trials, index_with_rows, wide_probe

pytestmark = pytest.mark.usefixtures("one_blas_thread")


@pytest.fixture
def one_thread_children(monkeypatch):
    """One BLAS/OpenMP thread (conftest's one_blas_thread) for the processes a test starts too, through their
    environment: the crash test's writers and readers spin less beside busy processes."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "1")


@pytest.fixture(scope="module")
def probe():
    return wide_probe()


@pytest.fixture
def index(tmp_path, probe):
    with TaskIndex.create(tmp_path / "idx", probe=probe) as idx:
        yield idx


@pytest.fixture
def synth(index):
    return Synth(index)


def test_add_get_remove_upsert_round_trip(index, synth, tmp_path):
    a, b = synth.make(0, name="a"), synth.make(1, name="b")
    index.add("a", a, metadata={"dataset": "x", "size": 10})
    index.add("b", b, kind="model")
    got, meta = index.get("a")
    assert np.array_equal(got.vector, a.vector) and got.meta == a.meta
    assert meta["dataset"] == "x" and meta["size"] == 10 and meta["kind"] == "task"
    assert meta["complexity"] == pytest.approx(distance.complexity(a), abs=1e-12)
    with pytest.raises(IndexUsageError, match="already exists"):
        index.add("a", b)
    c = synth.make(2, name="c")
    index.upsert("a", c)
    assert np.array_equal(index.get("a")[0].vector, c.vector) and len(index) == 2
    index.remove("b")
    assert index.names() == ["a"]
    with pytest.raises(IndexUsageError, match="no row named 'b'"):
        index.get("b")
    with pytest.raises(IndexUsageError, match="no row named"):
        index.remove("nope")
    assert list(index.to_pandas()["name"]) == ["a"]


def test_add_many_takes_the_readme_forms_and_explains_the_others(index, synth):
    index.add_many([("two", synth.make(0)), ("three", synth.make(1), "model"),
                    ("four", synth.make(2), "task", {"dataset": "x"}), ["list", synth.make(3), "model", None],
                    {"name": "dict", "embedding": synth.make(4), "kind": "model", "metadata": {"dataset": "y"}}])
    frame = index.to_pandas().set_index("name")
    assert frame["kind"].to_dict() == {"two": "task", "three": "model", "four": "task", "list": "model",
                                       "dict": "model"}
    assert frame.at["four", "dataset"] == "x" and frame.at["dict", "dataset"] == "y"
    e = synth.make(5)
    with pytest.raises(TaskIndexError, match="the third item is the kind .* metadata comes fourth"):
        index.add_many([("m", e, {"dataset": "z"})])
    with pytest.raises(TaskIndexError, match=r"add_many items must be \(name, embedding\).*got tuple of length 5"):
        index.add_many([("m", e, "task", {}, 1)])
    with pytest.raises(TaskIndexError, match="got Embedding"):
        index.add_many([e])
    with pytest.raises(TaskIndexError, match=r"keys \['emb', 'name'\]: use"):
        index.add_many([{"name": "m", "emb": e}])
    with pytest.raises(TaskIndexError, match="unknown kind 'tsk'"):
        index.add_many([("m", e, "tsk")])
    assert len(index) == 5 and index.version == 2  # refused batches commit nothing


def test_to_arrow_holds_exactly_the_live_rows_in_one_schema(index, synth):
    """Before compact() the segment files still hold removed and replaced rows, in differing schemas."""
    duckdb = pytest.importorskip("duckdb")
    index.add_many([("a", synth.make(0), "task", {"dataset": "x"}), ("b", synth.make(1), "task", {"size": 3})])
    index.add("c", synth.make(2), metadata={"size": 2.5, "fresh": True})
    index.upsert("a", synth.make(3), metadata={"dataset": "y"})
    index.remove("b")
    with pytest.raises(TaskIndexError, match="metadata 'size' of row 'd' is a string but other rows hold numbers"):
        index.add("d", synth.make(4), metadata={"size": "big"})
    live = index.to_arrow()
    assert sorted(live.column("name").to_pylist()) == ["a", "c"]
    assert {"dataset", "size", "fresh"} <= set(live.schema.names) and "embedding_meta" not in live.schema.names
    assert str(live.schema.field("size").type) == "double" and str(live.schema.field("fresh").type) == "bool"
    got = duckdb.sql("select name, dataset, size, fresh from live order by name").fetchall()  # the README's recipe
    assert got == [("a", "y", None, None), ("c", None, 2.5, True)]
    assert duckdb.sql("select count(*), count(distinct name) from live").fetchall() == [(2, 2)]
    assert live.to_pandas()["name"].tolist() == index.to_pandas()["name"].tolist()


def test_ids_are_stable_across_deletes_and_reopen(index, synth, tmp_path):
    index.add_many([(f"r{i}", synth.make(i % 20, name=f"r{i}")) for i in range(30)])
    ids = dict(zip(index.to_pandas()["name"], index.to_pandas()["id"]))
    for i in range(0, 30, 3):
        index.remove(f"r{i}")
    index.add("new", synth.make(0))
    index.close()
    with TaskIndex.open(tmp_path / "idx", readonly=True) as again:
        frame = again.to_pandas()
        assert all(ids[n] == i for n, i in zip(frame["name"], frame["id"]) if n in ids)
        assert frame.set_index("name").at["new", "id"] == 30  # ids are never reused
        assert len(again) == 21
        assert np.array_equal(again.get("r1")[0].vector, index.get("r1")[0].vector)


def test_where_filters_and_kind(index, synth):
    index.add_many([(f"r{i}", synth.make(i % 3), "model" if i % 4 == 0 else "task",
                     {"dataset": ["mnist", "fashion", "digits"][i % 3], "size": i}) for i in range(24)])
    q = synth.make(0)
    hits = index.query(q, k=50, where={"dataset": "mnist"})
    assert hits and all(h.metadata["dataset"] == "mnist" for h in hits) and len(hits) == 8
    hits = index.query(q, k=50, where={"dataset": ["mnist", "digits"], "size": (">=", 12)})
    assert sorted(h.metadata["size"] for h in hits) == [i for i in range(12, 24) if i % 3 != 1]
    hits = index.query(q, k=50, kind="model")
    assert {h.name for h in hits} == {f"r{i}" for i in range(0, 24, 4)}
    with pytest.raises(TaskIndexError, match="unknown metadata column 'nope'"):
        index.query(q, where={"nope": 1})


def test_query_by_name_excludes_itself_and_asym_uses_complexity(index, synth):
    index.add_many([(f"r{i}", synth.make(i % 4, spread=0.2 + 0.1 * i)) for i in range(12)])
    hits = index.query("r0", k=3)
    assert "r0" not in [h.name for h in hits] and hits[0].name in ("r4", "r8")
    q = synth.make(1)
    rows = index.to_pandas()
    embs = [index.get(n)[0] for n in rows["name"]]
    expected = [distance.d_asym(e, q) for e in embs]
    hits = index.query(q, k=12, metric="asym", exact=True)
    assert [h.name for h in hits] == [rows["name"][i] for i in np.argsort(expected, kind="stable")]
    assert hits[0].distance == pytest.approx(min(expected), abs=1e-9)


def test_mismatched_embeddings_are_refused(index, synth, probe):
    good = synth.make(0)
    other = Embedding(good.vector, good.prior, good.layout, {**good.meta, "image_size": 64})
    with pytest.raises(IncompatibleEmbeddingsError, match="image_size: 64 vs 32, embedding vs index"):
        index.add("x", other)
    short = Embedding(good.vector[:100], good.prior[:100], [("c", 100)], good.meta)
    with pytest.raises(IncompatibleEmbeddingsError, match="100 filters"):
        index.query(short)
    variational = Embedding(good.vector, good.prior, good.layout, {**good.meta, "method": "variational"})
    with pytest.raises(IncompatibleEmbeddingsError, match="method"):
        index.add("v", variational)


def _against_exact(index, rows: Overlapping, queries: int, k: int = 10) -> dict:
    """Fresh rows as queries of the default query path. Per query: its answer (names, distances), exact=True's,
    the exact top k of its own candidates (float64 d_sym over every row it re-ranks: what the re-rank must
    return) and its first k candidates in FAISS's order (what it would return without the re-rank)."""
    out = {"answer": [], "exact": [], "of_candidates": [], "faiss_first": []}
    for _ in range(queries):
        q = rows.make()
        out["answer"].append([(h.name, h.distance) for h in index.query(q, k=k)])
        out["exact"].append([(h.name, h.distance) for h in index.query(q, k=k, exact=True)])
        found = index._v.candidates.nearest(candidates.project(q.vector[None, :], index._v.projection),
                                          rerank.want(index._v, k, "sym", None), k)[0]
        names = [index._v.row_names[r] for r in np.searchsorted(index._v.ids, found)]
        d = distance.one_to_many(q, index.vectors(names))
        out["of_candidates"].append([(names[i], float(d[i])) for i in np.argsort(d, kind="stable")[:k]])
        out["faiss_first"].append(set(names[:k]))
    out["recall"] = float(np.mean([len({n for n, _ in a} & {n for n, _ in e}) / k
                                   for a, e in zip(out["answer"], out["exact"])]))
    return out


def _same(a: list, b: list) -> bool:
    return [n for n, _ in a] == [n for n, _ in b] and np.allclose([d for _, d in a], [d for _, d in b],
                                                                  rtol=0, atol=1e-9)


def test_candidate_stage_agrees_with_exact_dsym(index):
    """Overlapping clusters, so the candidate space must follow d_sym: with a random projection in place of the
    PCA recall@10 is about 0.7. With the PCA every one of 20 queries gets exactly exact=True's answer (names,
    order, distances), though for 11 of them FAISS's first 10 candidates are not the exact 10: the re-rank of
    all the candidates sets them right (re-ranking only the first k answered 9 of 20, recall 0.935)."""
    rows = Overlapping(index)
    index.add_many([(f"r{i}", rows.make()) for i in range(candidates.EXACT_ROWS + 300)])
    assert index.info()["candidates"] == "flat"
    got = _against_exact(index, rows, queries=20)
    assert got["recall"] == 1.0
    assert [i for i, (a, e) in enumerate(zip(got["answer"], got["exact"])) if not _same(a, e)] == []
    reordered = sum(f != {n for n, _ in e} for f, e in zip(got["faiss_first"], got["exact"]))
    assert reordered >= 8, reordered  # the queries where the re-rank, not FAISS's order, decides
    # adding after the projection was trained keeps the new rows searchable
    late = rows.make()
    index.add("late", late)
    assert index.query(late, k=10)[0].name == "late"


def _scaled(emb: Embedding, c: float) -> Embedding:
    return Embedding((emb.vector * c).astype(np.float32), emb.prior, emb.layout, emb.meta)


def _rows_trained_and_late(index, rows: Overlapping, spread: float) -> list[Embedding]:
    """EXACT_ROWS rows the PCA is trained on, then 100 it is not, each x exp(N(0, spread)) (0: one scale)."""
    rng = np.random.default_rng(1)
    embs = [_scaled(rows.make(), float(np.exp(rng.normal(0.0, spread)))) for _ in range(candidates.EXACT_ROWS + 100)]
    index.add_many([(f"r{i}", e) for i, e in enumerate(embs[:candidates.EXACT_ROWS])])
    index.add_many([(f"r{i}", e) for i, e in enumerate(embs[candidates.EXACT_ROWS:], candidates.EXACT_ROWS)])
    assert index.info()["candidates"] == "flat" and index._v.manifest.projection_rows == candidates.EXACT_ROWS
    return embs


def test_a_rescaled_copy_of_a_row_is_among_that_rows_candidates(index):
    """d_sym(c F, F) = 0 for any c > 0, and the candidate space is scale-free only because log F is centred per
    row. Rows of differing overall scale (x exp(N(0, 1)), as real Fisher magnitudes differ by task), trained-on
    and later ones, queried by copies scaled 0.1x and 10x: the candidates `query(k=1)` re-ranks must hold the
    row. Without the per-row centring 1 of these 102 did; with it, all. (The candidate stage alone; the re-rank
    of rows far apart in scale: test_exact_query_of_rows_far_apart_in_scale.)"""
    embs = _rows_trained_and_late(index, Overlapping(index), spread=1.0)
    missed = []
    for i in range(0, len(embs), 12):
        for c in (0.1, 10.0):
            q = _scaled(embs[i], c)
            found = index._v.candidates.nearest(candidates.project(q.vector[None, :], index._v.projection),
                                              rerank.want(index._v, 1, "sym", None), 1)[0]
            if int(index._v.ids[index._v.row(f"r{i}")]) not in found:
                missed.append((f"r{i}", c))
    assert missed == []


def test_a_rescaled_copy_of_a_row_finds_that_row_first_as_exact_search_does(index):
    """The same end to end on rows of one scale: copies of rows scaled 0.1x and 10x find first what exact=True
    finds first, the row itself at d_sym ~0. Without the per-row centring 11 of these 102 did not."""
    embs = _rows_trained_and_late(index, Overlapping(index), spread=0.0)
    missed = []
    for i in range(0, len(embs), 12):
        for c in (0.1, 10.0):
            q = _scaled(embs[i], c)
            exact = index.query(q, k=1, exact=True)[0]
            assert exact.name == f"r{i}" and exact.distance < 1e-6  # d_sym cannot see the scale
            if index.query(q, k=1)[0].name != exact.name:
                missed.append((f"r{i}", c))
    assert missed == []


def test_exact_query_of_rows_far_apart_in_scale(index):
    """A query 1000x row a: d_sym(query, a) = 0 and d_sym(query, b) = 0.08. The float32 pass once scored a 0.23
    and b 0.16 (its sums cancel where q/(q+row) is near 1), so b came back."""
    synth = Overlapping(index)
    a, b = synth.make(), synth.make()
    index.add_many([("a", a), ("b", b)])
    q = _scaled(a, 1000.0)
    assert distance.d_sym(q, a) < 1e-6 < 0.05 < distance.d_sym(q, b)
    assert [h.name for h in index.query(q, k=1, exact=True)] == ["a"]


def test_refine_sets_the_candidates_reranked(index, monkeypatch):
    """refine x k candidates come from FAISS (twice that for asym, one more for a row's own name), then k by
    the residual's lower bound (k + 1 for a row's own name); with every row a candidate the answer is the
    exact one, distances included."""
    rows = Overlapping(index)
    index.add_many([(f"r{i}", rows.make()) for i in range(candidates.EXACT_ROWS + 300)])
    asked = []
    real = candidates.Candidates.search
    monkeypatch.setattr(candidates.Candidates, "search", lambda self, point, k, allowed=None, bound=False: (
        asked.append(k), real(self, point, k, allowed, bound))[1])
    q = rows.make()
    index.query(q, k=5, refine=3)
    index.query("r7", k=5, refine=3)
    index.query(q, k=5, refine=3, metric="asym")
    index.query(q, k=5)
    default = candidates.default_refine(len(index))
    assert asked == [15, 5, 16, 6, 30, 5, 5 * default, 5] and index.info()["refine"] == default
    every = index.query(q, k=10, refine=len(index))
    assert [(h.name, h.distance) for h in every] == [(h.name, h.distance) for h in index.query(q, k=10, exact=True)]
    for bad in (0, -2, 2.5, True, "3"):
        with pytest.raises(TaskIndexError, match="refine must be a positive integer"):
            index.query(q, k=5, refine=bad)


def test_a_row_added_after_training_is_its_own_nearest_neighbour_at_k1(index):
    """The PCA fits its training rows best, so by the orthogonal-residual ranking alone a later row sits at its
    own residual norm from itself and misses the 10 candidates of k=1; the lower-bound list finds it."""
    rows = Overlapping(index)
    index.add_many([(f"r{i}", rows.make()) for i in range(candidates.EXACT_ROWS + 300)])
    late = [rows.make() for _ in range(21)][-1]
    index.add("late", late)
    assert index.query(late, k=1)[0].name == "late"


def test_commit_writes_only_what_changed(index, synth, tmp_path):
    index.add_many([(f"r{i}", synth.make(i % 20)) for i in range(100)])
    data = tmp_path / "idx" / "data"
    before = {p.name for p in data.iterdir()}
    size_before = sum(p.stat().st_size for p in data.iterdir())
    index.add("one", synth.make(3))
    new = [p for p in data.iterdir() if p.name not in before]
    written = sum(p.stat().st_size for p in new)
    # vectors + metadata (Parquet and JSON records) of the new row (no projection yet below EXACT_ROWS)
    assert sorted(p.suffix for p in new) == [".f32", ".json", ".parquet"]
    assert written < 3 * 4 * index.dim + 20_000 < size_before / 10


def test_reopen_and_compact(index, synth, tmp_path):
    index.add_many([(f"r{i}", synth.make(i % 20)) for i in range(40)])
    for i in range(10):
        index.remove(f"r{i}")
    before = {h.name: h.distance for h in index.query("r11", k=5)}
    removed = index.compact()
    assert removed > 0 and index.info()["segments"] == 1 and index.info()["deleted_rows"] == 0
    assert {h.name: h.distance for h in index.query("r11", k=5)} == pytest.approx(before)
    index.close()
    with TaskIndex.open(tmp_path / "idx", readonly=True) as again:
        assert len(again) == 30 and verify(tmp_path / "idx") == []


def test_one_writer_at_a_time_and_readonly(index, tmp_path):
    with pytest.raises(IndexLockedError, match="another process"):
        TaskIndex.open(tmp_path / "idx")
    with TaskIndex.open(tmp_path / "idx", readonly=True) as reader:
        with pytest.raises(IndexUsageError, match="read-only"):
            reader.remove("x")


def test_missing_and_non_index_directories(tmp_path):
    with pytest.raises(IndexUsageError, match="does not exist"):
        TaskIndex.open(tmp_path / "nowhere")
    (tmp_path / "plain").mkdir()
    with pytest.raises(IndexUsageError, match="not a taskindex index"):
        TaskIndex.open(tmp_path / "plain", readonly=True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(IndexUsageError, match="not empty"):
        TaskIndex.create(tmp_path / "full", probe=wide_probe())


def _data_files(root: Path, suffix: str) -> list[Path]:
    return sorted(p for p in (root / "data").iterdir() if p.name.endswith(suffix))


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
@pytest.mark.parametrize("target", ["vectors", "rows", "prior", "proj", "projection", "manifest", "CURRENT"])
def test_damaged_files_are_reported_by_verify_and_open_naming_the_file(index, synth, tmp_path, damage, target):
    trained = target in ("proj", "projection")  # the projection and projected rows exist from EXACT_ROWS rows
    index.add_many([(f"r{i}", synth.make(i % 20)) for i in range(candidates.EXACT_ROWS if trained else 5)])
    index.close()
    root = tmp_path / "idx"
    segment = index._v.manifest.segments[0]
    victim = {"vectors": lambda: root / "data" / segment["vectors"]["name"],
              "rows": lambda: root / "data" / segment["rows"]["name"],
              "prior": lambda: root / "data" / index._v.manifest.prior["name"],
              "proj": lambda: root / "data" / segment["proj"]["name"],
              "projection": lambda: root / "data" / index._v.manifest.projection["name"],
              "manifest": lambda: root / (root / "CURRENT").read_text().split()[0],
              "CURRENT": lambda: root / "CURRENT"}[target]()
    raw = bytearray(victim.read_bytes())
    if damage == "truncate":
        victim.write_bytes(bytes(raw[: len(raw) // 2]))
    elif damage == "flip":
        raw[len(raw) // 2] ^= 0x10
        victim.write_bytes(bytes(raw))
    else:
        victim.unlink()
    problems = verify(root)
    assert problems and all(isinstance(p, str) for p in problems)
    assert any(victim.name in p for p in problems), problems
    with pytest.raises(IndexCorruptError, match=re.escape(victim.name)):
        TaskIndex.open(root, readonly=True)


READER = r"""
import sys, time, numpy as np
from taskindex.index.task_index import TaskIndex
path, rounds = sys.argv[1], int(sys.argv[2])
seen = set()
deadline = time.monotonic() + 120
done = 0
# at least `rounds` opens, and on until the index changed once (a fast reader can finish before the first commit)
while done < rounds or (len(seen) < 2 and time.monotonic() < deadline):
    done += 1
    with TaskIndex.open(path, readonly=True) as idx:
        frame = idx.to_pandas()
        assert len(frame) == idx._v.manifest.row_count, "row count differs from its manifest"
        seen.add(len(frame))
        if not len(frame):
            continue
        for name, i in zip(frame["name"], frame["i"]):
            v = idx.get(name)[0].vector
            assert v[0] == i + 1, f"{name} holds another row's vector"
print(len(seen))
"""


def test_readers_in_other_processes_see_whole_versions_while_one_writes(index, tmp_path, one_thread_children):
    root = tmp_path / "idx"
    index.close()
    writer = subprocess.Popen([sys.executable, "-m", "taskindex._testing.index_harness", str(root), "0", "40"],
                              stdout=subprocess.PIPE, text=True)
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(root), "25"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [r.communicate(timeout=300) for r in readers]
    writer.communicate(timeout=300)
    assert writer.returncode == 0
    for r, (out, err) in zip(readers, outs):
        assert r.returncode == 0, err
    assert max(int(out) for out, _ in outs) > 1  # the readers did see the index change under them


def test_sigkill_during_one_row_commits_never_loses_or_tears_a_commit(tmp_path, one_thread_children):
    """The crash test below in brief, for the fast suite: 4 kills at random instants of one-row commits."""
    root = tmp_path / "idx"
    TaskIndex.create(root, probe=wide_probe()).close()
    trials = crash_trials(root, trials=4, seed=2)
    assert [t["problems"] for t in trials if t["problems"]] == []
    assert all(t["reported"] >= 1 for t in trials) and trials[-1]["rows"] > trials[0]["rows_before"]


@pytest.mark.slow
def test_sigkill_during_commits_never_loses_or_tears_a_commit(tmp_path, one_thread_children):
    """Kill a writer at random instants, then verify, open and check every returned commit: 15 trials of
    one-row commits from an empty index, then 8 from an index two rows below the projection's first
    training, whose commit writes a projected file per segment."""
    root = tmp_path / "idx"
    TaskIndex.create(root, probe=wide_probe()).close()
    trials = crash_trials(root, trials=15)
    assert [t["problems"] for t in trials if t["problems"]] == []
    assert all(t["reported"] >= 1 for t in trials)
    below = tmp_path / "below"
    index_with_rows(below, candidates.EXACT_ROWS - 2)
    with TaskIndex.open(below, readonly=True) as idx:
        # the training commit writes a segment (2 files), the projection, and a projected file per segment
        files = 3 + len(idx._v.manifest.segments) + 2
    trials = crash_trials(root, trials=8, seed=1, start_from=below, files=files)
    assert [t["problems"] for t in trials if t["problems"]] == []
    # killed inside the training commit after it had written the projection (the writer reported row 510 first)
    inside = [t for t in trials if t["rows"] == candidates.EXACT_ROWS - 1 and t["unused_files"] >= 3]
    assert len(inside) >= 4, trials


def test_inverted_file_above_the_threshold(index, monkeypatch):
    """The IVF structure (used from IVF_ROWS rows) keeps recall and stable ids through deletes; on these
    overlapping clusters a random projection in place of the PCA gets about 0.6."""
    monkeypatch.setattr(candidates, "IVF_ROWS", 600)
    rows = Overlapping(index)
    index.add_many([(f"r{i}", rows.make()) for i in range(900)])
    assert index.info()["candidates"] == "ivf"
    index.remove("r7")
    assert "r7" not in {h.name for h in index.query(index.get("r8")[0], k=900)}
    got = _against_exact(index, rows, queries=20)
    assert got["recall"] >= 0.9  # 0.97: the probes, not the re-rank, miss a few
    # the answer is the exact top 10 of every candidate, though FAISS's first 10 are not for most queries
    # (re-ranking only the first k answered 9 of 20 as the re-rank of all does)
    assert [i for i, (a, c) in enumerate(zip(got["answer"], got["of_candidates"])) if not _same(a, c)] == []
    assert sum(f != {n for n, _ in c} for f, c in zip(got["faiss_first"], got["of_candidates"])) >= 8


def test_inverted_lists_repacked_to_size_still_hold_every_row():
    """IVF lists are copied into exactly sized ones after the bulk add: probing every list must find what
    the flat structure finds on the same float16 codes, ids and all."""
    rng = np.random.default_rng(0)
    proj = rng.normal(size=(3000, 16)).astype(np.float32)
    ids = np.arange(3000, dtype=np.int64) * 3 + 5
    ivf, flat = candidates.Candidates(proj, ids, kind="ivf"), candidates.Candidates(proj, ids, kind="flat")
    assert sum(ivf._base.invlists.list_size(i) for i in range(ivf._base.nlist)) == 3000
    ivf._base.nprobe = ivf._base.nlist
    queries = rng.normal(size=(25, 16)).astype(np.float32)
    assert np.array_equal(ivf.search_many(queries, 10), flat.search_many(queries, 10))
    ivf.add(queries[:2], np.array([1, 2]))  # the repacked lists still grow
    assert set(ivf.search(queries[0], 1)) == {1}


def test_nearest_joins_the_orthogonal_and_the_lower_bound_lists():
    """Rows 0-2 sit on the query's PCA coordinates with no residual; row 3 is the query itself, residual and
    all. With the residual orthogonal, rows 0-2 come first and row 3 last; by the lower bound row 3 is at 0."""
    proj = np.zeros((4, 3), np.float32)
    proj[:3, 0] = [0.1, 0.2, 0.3]
    proj[3, 2] = 1.0
    cand = candidates.Candidates(proj, np.array([10, 11, 12, 13]), kind="flat")
    query = proj[3:4]
    assert [f.tolist() for f in cand.nearest(query, 3, 0)] == [[10, 11, 12]]
    assert [f.tolist() for f in cand.nearest(query, 3, 1)] == [[10, 11, 12, 13]]
    assert [f.tolist() for f in cand.nearest(query, 4, 2)] == [[10, 11, 12, 13]]  # no row twice
    two = np.concatenate([query, query])
    assert [f.tolist() for f in cand.nearest(two, np.array([1, 2]), np.array([1, 0]))] == [[10, 13], [10, 11]]
    assert [f.tolist() for f in cand.nearest(two, 2, 1, allowed=np.array([11, 12]))] == [[11, 12], [11, 12]]


def test_the_lower_bound_search_of_an_ivf_structure_probes_few_lists_and_finds_each_row_itself():
    rng = np.random.default_rng(3)
    proj = rng.normal(size=(3000, 16)).astype(np.float32)
    proj[:, -1] = np.abs(proj[:, -1])
    proj[:50, -1] = 10.0  # residual energy 100 against ~16 + 1 to other rows: the orthogonal search misses itself
    ids = np.arange(3000, dtype=np.int64) + 7
    ivf = candidates.Candidates(proj, ids, kind="ivf")
    assert ivf._base.nprobe > 1 and ivf._params(None, bound=True).nprobe == 1
    found = ivf.nearest(proj[:50], 1, 1)
    assert all(f[-1] == i for f, i in zip(found, ids[:50]))
    assert sum(f[0] == i for f, i in zip(found, ids[:50])) <= 5  # 0 of 50 on seeds 0-7


def test_unfiltered_ivf_searches_go_to_the_gpu_copy_and_the_rest_stay_on_the_cpu(monkeypatch):
    """Without a GPU here, a CPU clone stands in for FAISS's GPU copy: the dispatch, the fallbacks (filters,
    flat, no GPU) and the refresh after rows change are what is tested, not FAISS's GPU kernels."""
    import faiss

    copies = []

    class Copy:
        def __init__(self, index):
            self.index, self.calls = faiss.clone_index(index), 0
            copies.append(self)

        def search(self, x, k):
            self.calls += 1
            return self.index.search(x, k)

    rng = np.random.default_rng(2)
    proj = rng.normal(size=(2000, 8)).astype(np.float32)
    queries = rng.normal(size=(5, 8)).astype(np.float32)
    ivf = candidates.Candidates(proj, np.arange(2000), kind="ivf")
    cpu = ivf.search_many(queries, 10)  # no GPU here: the CPU structure answers
    monkeypatch.setattr(candidates, "to_gpu", Copy)
    ivf._gpu = None
    assert np.array_equal(ivf.search_many(queries, 10), cpu) and copies[-1].calls == 1
    allowed = np.arange(0, 2000, 2)
    assert set(ivf.search_many(queries, 10, allowed).ravel()) <= set(allowed) and copies[-1].calls == 1
    ivf.remove([int(cpu[0, 0])])
    assert int(cpu[0, 0]) not in ivf.search_many(queries, 10) and len(copies) == 2  # a fresh copy
    flat = candidates.Candidates(proj, np.arange(2000), kind="flat")
    flat.search_many(queries, 10)
    assert len(copies) == 2  # flat float16 codes have no GPU index: the CPU answers


def test_embedding_provenance_stays_on_disk_and_get_reads_its_row_group(index, synth, monkeypatch):
    """The per-row embedding JSON is not held in RAM; `get` reads the one Parquet row group holding the row.
    Small row groups here, so rows sit in different groups of different segments, before and after compact."""
    from taskindex.index import segments

    monkeypatch.setattr(segments, "ROW_GROUP", 7)
    index.add_many([(f"a{i}", synth.make(i % 20, name=f"a{i}")) for i in range(30)])
    index.add_many([(f"b{i}", synth.make(i % 20, name=f"b{i}")) for i in range(20)])
    for i in range(0, 30, 4):
        index.remove(f"a{i}")
    assert "embedding_meta" not in index._v.rows.columns
    for _ in range(2):
        for name in index.names():
            emb, meta = index.get(name)
            assert emb.meta["task"] == name and meta["name"] == name
        index.compact()


@pytest.mark.parametrize("metric", ["sym", "asym"])
@pytest.mark.parametrize("device", [None, "cpu"])
def test_query_many_gives_the_answers_of_one_query_at_a_time(index, metric, device, monkeypatch, one_torch_thread):
    """Past EXACT_ROWS (FAISS candidates, one batched search) and with filters, by embedding and by row name;
    device='cpu' runs the batch re-rank in torch (the GPU path, on the CPU). Rows are read in blocks of 100
    and the queries ranked in chunks of about 500 candidate pairs, so both cut through the batch."""
    monkeypatch.setattr(rerank, "PAIR_BLOCK", 100)
    monkeypatch.setattr(rerank, "BATCH_PAIRS", 500)
    rows = Overlapping(index)
    index.add_many([(f"r{i}", rows.make(), "model" if i % 5 == 0 else "task", {"even": i % 2 == 0})
                    for i in range(candidates.EXACT_ROWS + 200)])
    assert index.info()["candidates"] == "flat"
    queries = [rows.make() for _ in range(25)] + ["r3", "r10", "r11"]
    for options in ({}, {"where": {"even": True}}, {"kind": "model"}, {"exact": True}, {"refine": 1}):
        one = [index.query(q, k=7, metric=metric, **options) for q in queries]
        many = index.query_many(queries, k=7, metric=metric, device=device, **options)
        assert [[h.to_dict() for h in hits] for hits in many] == [[h.to_dict() for h in hits] for hits in one]
    assert all(h.name != "r3" for h in many[25])  # a row's own name is never its answer


def test_query_many_answers_rows_added_after_the_projection_was_trained_as_query_does(index):
    """250 rows added after the PCA was trained on the first EXACT_ROWS: the orthogonal list, favouring the rows
    the PCA fits, often misses their neighbours, so at refine=1 the lower-bound list (k + 1 for a row's own name)
    decides their answers. query_many must fetch each query the candidates `query` fetches: with the lower-bound
    list one short for row names, 8 of these 250 names answered differently at k=1 and 13 at k=5."""
    rows = Overlapping(index)
    index.add_many([(f"r{i}", rows.make()) for i in range(candidates.EXACT_ROWS)])
    late = [f"late{i}" for i in range(250)]
    index.add_many([(n, rows.make()) for n in late])
    assert index._v.manifest.projection_rows == candidates.EXACT_ROWS and len(index) == candidates.EXACT_ROWS + 250
    embeddings = [rows.make() for _ in range(10)]
    queries = [*late, *embeddings, "r0", "r1"]  # row names, late and trained on, beside embeddings in one batch
    for k in (1, 5):
        one = [[(h.name, h.distance) for h in index.query(q, k=k, refine=1)] for q in queries]
        many = [[(h.name, h.distance) for h in hits] for hits in index.query_many(queries, k=k, refine=1)]
        differ = [q for q, a, b in zip(late + ["emb"] * 10 + ["r0", "r1"], one, many) if a != b]
        assert differ == [], f"k={k}: {len(differ)} of {len(queries)} answered differently"


def test_near_ties_of_the_float32_pass_are_settled_in_float64(index, synth):
    """Rows whose float32 scores sit within RERANK_TIE of the k-th get their float64 distance before the cut:
    here the pass's scores (stand-ins) put the farther row first by less than the tie."""
    index.add_many([(f"r{i}", synth.make(i % 20)) for i in range(4)])
    q = synth.make(0).vector
    rows = np.arange(4)
    exact = distance.one_to_many(q, index.vectors([f"r{i}" for i in rows]))
    near, far = np.argsort(exact)[:2]
    fake = np.full(4, 0.9)
    fake[far], fake[near] = 0.5, 0.5 + 1e-5  # the float32 pass's error bound, inside the tie margin
    assert rerank.RERANK_TIE > 1e-5
    top, scores = rerank._top(index._v, q, rows, fake, 1, "sym", 0.0)
    assert list(top) == [near] and scores[0] == pytest.approx(exact[near], abs=1e-12)


def test_a_query_vector_that_is_no_fisher_diagonal_is_refused(index, synth):
    """The re-rank trusts its vectors; a NaN or negative entry is refused before it, by query and query_many."""
    index.add_many([(f"r{i}", synth.make(i % 20)) for i in range(5)])
    for bad in (np.nan, -1.0, np.inf):
        emb = synth.make(0)
        emb.vector[3] = bad
        with pytest.raises(TaskIndexError, match="negative or non-finite"):
            index.query(emb, k=2)
        with pytest.raises(TaskIndexError, match="negative or non-finite"):
            index.query_many([synth.make(1), emb], k=2)


def test_hits_carry_the_metadata_of_the_version_they_come_from(index):
    """A hit's metadata is read from a table cached per version: each write (add, upsert, remove, compact)
    must show in the next answer, in query and query_many."""
    rows = Overlapping(index)
    index.add_many([(f"r{i}", rows.make(), "task", {"tag": "old"}) for i in range(candidates.EXACT_ROWS + 20)])
    q = rows.make()
    first = index.query(q, k=3)[0]
    assert first.metadata["tag"] == "old" and index.to_arrow().num_rows == len(index)
    index.upsert(first.name, index.get(first.name)[0], metadata={"tag": "new", "n": 2})
    for hits in (index.query(q, k=3), index.query_many([q], k=3)[0]):
        assert hits[0].name == first.name and hits[0].metadata["tag"] == "new" and hits[0].metadata["n"] == 2
    index.remove(first.name)
    assert first.name not in {h.name for h in index.query(q, k=3)} and index.to_arrow().num_rows == len(index)
    index.compact()
    assert index.query(q, k=1)[0].metadata["tag"] == "old"


def test_query_many_with_no_candidates_for_some_queries(index):
    """A filter no row passes gives every query no hits, and a batch mixing such queries with others keeps
    each query's answer."""
    rows = Overlapping(index)
    index.add_many([(f"r{i}", rows.make(), "task", {"even": i % 2 == 0}) for i in range(candidates.EXACT_ROWS + 20)])
    qs = [rows.make() for _ in range(3)]
    assert index.query_many(qs, k=4, where={"even": "no such value"}) == [[], [], []]
    assert index.query(qs[0], k=4, where={"even": "no such value"}) == []
    many = index.query_many([*qs, "r1"], k=4, kind="model")  # no model rows at all
    assert many == [[], [], [], []]


def test_query_many_names_a_device_it_cannot_use(index, synth):
    index.add_many([(f"r{i}", synth.make(i % 20)) for i in range(5)])
    with pytest.raises(TaskIndexError, match="device 'nope' is not usable here"):
        index.query_many(["r1"], k=2, device="nope")


def test_query_many_of_every_row_and_of_nothing(index, synth):
    index.add_many([(f"r{i}", synth.make(i % 20)) for i in range(60)])
    every = index.query_many(k=3)
    assert len(every) == 60
    assert [h.name for h in every[7]] == [h.name for h in index.query("r7", k=3)]
    assert index.query_many([], k=3) == []
    with pytest.raises(TaskIndexError, match="k must be a positive integer"):
        index.query_many(["r1"], k=0)
