"""A small index opened read-only loads from its segments' JSON records, without pandas or pyarrow.

The Parquet path (a writable open, or an index whose segments have no records) is the reference: both must give
the same rows, metadata and answers.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from taskindex.index import segments
from taskindex.index.task_index import TaskIndex
from taskindex._testing.index_harness import Synth, wide_probe


@pytest.fixture(scope="module")
def probe():
    return wide_probe()


def _fill(path, probe) -> None:
    """Three segments, a removed and a replaced row, models, and metadata of every type with missing values
    (`w`: whole numbers in one segment, fractions in the next)."""
    with TaskIndex.create(path, probe=probe) as idx:
        synth = Synth(idx)
        idx.add_many([(f"t{i}", synth.make(i % 5), "task",
                       {"dataset": ["mnist", "fashion"][i % 2], "size": i * 10, "ok": i % 3 == 0, "w": i})
                      for i in range(12)])
        idx.add_many([(f"u{i}", synth.make(i % 5), "task", {"score": 0.25 * i, "size": 7, "note": None, "w": 0.5})
                      for i in range(6)])
        idx.add_many([(f"m{i}", synth.make(i), "model", {"dataset": "mnist", "score": 1.5}) for i in range(3)])
        idx.remove("t4")
        idx.upsert("u1", synth.make(2), metadata={"dataset": "digits"})


def _answers(idx: TaskIndex) -> dict:
    names = idx.names()
    out = {"names": names, "models": idx.names("model"), "len": len(idx),
           "info": {k: v for k, v in idx.info().items() if k != "path"}}
    for metric in ("sym", "asym"):
        out[metric] = {n: [(h.name, h.distance, h.metadata, h.ranked_by) for h in idx.query(n, k=6, metric=metric)]
                       for n in names}
    out["kind"] = [h.metadata for h in idx.query(names[0], k=3, kind="model")]
    out["select"] = [(h.name, h.distance, h.metadata) for h in idx.select_model(names[1], k=2)]
    out["get"] = idx.get(names[2])[1]
    # a filter needs the metadata table: a light index reads the Parquet files for it
    out["where"] = [h.name for h in idx.query(names[0], k=20, where={"dataset": "mnist", "size": (">=", 7)})]
    return out


def _same(a: dict, b: dict) -> bool:
    """Equal as the CLI's --json prints them: 1 and 1.0 differ."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _timeless(value):
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if k != "created"}
    if isinstance(value, (list, tuple)):
        return [_timeless(v) for v in value]
    return value


def test_records_and_parquet_give_the_same_rows_and_answers(tmp_path, probe):
    _fill(tmp_path / "idx", probe)
    with TaskIndex.open(tmp_path / "idx") as writable:  # a writer always reads Parquet
        reference, frame = _answers(writable), writable.to_pandas()
    with TaskIndex.open(tmp_path / "idx", readonly=True) as light:
        assert light._v.light is not None  # this open went through the records
        assert _same(_answers(light), reference)
        pd.testing.assert_frame_equal(light.to_pandas(), frame)
    assert len(reference["where"]) > 1 and reference["get"]["size"] == 20


def test_an_index_without_records_opens_read_only_through_parquet(tmp_path, probe, monkeypatch):
    _fill(tmp_path / "with", probe)
    monkeypatch.setattr(segments, "LIGHT_ROWS", 0)  # as written by a taskindex before records
    _fill(tmp_path / "without", probe)
    manifest = json.loads((tmp_path / "without" / (tmp_path / "without" / "CURRENT").read_text().split()[0])
                          .read_text())
    assert all("records" not in s for s in manifest["segments"])
    monkeypatch.undo()
    with TaskIndex.open(tmp_path / "without", readonly=True) as old, \
            TaskIndex.open(tmp_path / "with", readonly=True) as new:
        assert old._v.light is None and new._v.light is not None
        # two builds: the rows' and the index's creation times may differ by a second
        assert _same(_timeless(_answers(old)), _timeless(_answers(new)))


def test_a_small_read_only_query_imports_neither_pandas_nor_pyarrow(tmp_path, probe):
    _fill(tmp_path / "idx", probe)
    code = f"""
import sys
from taskindex.cli import cli
sys.argv = ["taskindex", "query", {str(tmp_path / "idx")!r}, "--name", "t3", "-k", "3", "--json"]
try:
    cli()
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
heavy = sorted(m for m in ("pandas", "pyarrow", "faiss", "torch") if m in sys.modules)
print("HEAVY", heavy)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    hits = json.loads(out[:out.index("HEAVY")])["hits"]
    assert [h["name"] for h in hits][:1] != ["t3"] and len(hits) == 3
    assert out.strip().endswith("HEAVY []")
