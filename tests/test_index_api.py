"""What the CLI needs from the API, so each command is one call: filtered tables, several removals in one
commit, a task embedded in an index's space, and the default index."""

from __future__ import annotations

import pytest

import taskindex as ti
from taskindex import TaskIndex, TaskIndexError
from taskindex._testing.index_harness import Synth, numbered, wide_probe
from taskindex.errors import IndexUsageError


@pytest.fixture
def index(tmp_path):
    with TaskIndex.create(tmp_path / "ix", probe=wide_probe()) as idx:
        synth = Synth(idx)
        idx.add_many([(f"row{i}", numbered(synth, i), "model" if i % 3 == 0 else "task",
                       {"i": i, "owner": "me" if i < 5 else "you"}) for i in range(12)])
        yield idx


def test_to_pandas_filters_by_where_and_kind_as_query_does(index):
    every = index.to_pandas()
    assert len(every) == 12
    mine = index.to_pandas(where={"owner": "me"})
    assert mine["name"].tolist() == [f"row{i}" for i in range(5)]
    models = index.to_pandas(kind="model")
    assert models["name"].tolist() == ["row0", "row3", "row6", "row9"]
    both = index.to_pandas(where={"i": (">=", 3)}, kind="task")
    assert both["name"].tolist() == [f"row{i}" for i in (4, 5, 7, 8, 10, 11)]
    assert list(both.index) == list(range(6))  # a fresh frame, not a view with the old row labels
    with pytest.raises(TaskIndexError, match="unknown kind 'tasks'"):
        index.to_pandas(kind="tasks")


def test_removing_several_rows_is_one_commit_and_an_unknown_name_removes_nothing(index):
    version = index.version
    index.remove("row1", "row2", "row7")
    assert index.version == version + 1
    assert len(index) == 9 and not {"row1", "row2", "row7"} & set(index.names())
    with pytest.raises(IndexUsageError, match="no row named 'nope'"):
        index.remove("row3", "nope")
    assert index.version == version + 1 and "row3" in index
    index.remove("row4")
    assert index.version == version + 2 and "row4" not in index


def test_embed_puts_a_task_in_the_index_space_from_a_task_or_its_path(tmp_path, tiny_probe):
    from PIL import Image
    import numpy as np

    folder = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        for j in range(6):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / label / f"{j}.png")
    with TaskIndex.create(tmp_path / "ix", probe=tiny_probe, estimator="mean") as idx:
        from_path = idx.embed(folder, max_samples=12, probe=tiny_probe, progress=False)
        from_task = idx.embed(ti.Task.from_folder(folder), max_samples=12, probe=tiny_probe, progress=False)
        by_hand = ti.embed(ti.Task.from_folder(folder), tiny_probe, max_samples=12, progress=False,
                           **idx.embed_options())
        assert np.array_equal(from_path.vector, by_hand.vector)
        assert np.array_equal(from_path.vector, from_task.vector)
        idx.add("photos", from_path)  # lands in the index's space: accepted
        with pytest.raises(TaskIndexError, match="must be a taskindex.Task or the path"):
            idx.embed(42)


def test_default_index_is_the_shipped_one_unless_the_environment_names_another(tmp_path, monkeypatch):
    monkeypatch.delenv("TASKINDEX_INDEX", raising=False)
    with ti.default_index() as shipped:
        assert shipped.readonly and "fashion-footwear" in shipped and len(shipped.names("model")) == 15
    with TaskIndex.create(tmp_path / "mine", probe=wide_probe()):
        pass
    monkeypatch.setenv("TASKINDEX_INDEX", str(tmp_path / "mine"))
    with ti.default_index() as mine:
        assert len(mine) == 0
