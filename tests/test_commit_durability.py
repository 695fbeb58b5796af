"""What a commit makes durable, and in what order: the page cache survives a SIGKILL, so only the order of the
fsync and rename calls shows whether a commit would survive a power cut.

Every commit must fsync each new file (vectors, Parquet, JSON records, projections, .npy, the manifest) and then
the folder that names it, all before CURRENT is replaced, and fsync the index folder after that replace: a power
cut at any instant then leaves CURRENT naming a version whose every file is on disk.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from taskindex.index import candidates
from taskindex.index.task_index import TaskIndex
from taskindex._testing.index_harness import Synth, wide_probe

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="maps fds to paths with /proc/self/fd")


@pytest.fixture(scope="module")
def probe():
    return wide_probe()


def _files(root: Path) -> set[str]:
    """Every file a version can reference: data files and manifests."""
    out = {os.path.realpath(p) for p in root.glob("manifest-*.json")}
    if (root / "data").is_dir():
        out |= {os.path.realpath(p) for p in (root / "data").iterdir()}
    return out


class Journal:
    """The fsync, rename and replace calls of this process, in order, each with the path(s) it acted on."""

    def __init__(self, root: Path):
        self.root = os.path.realpath(root)
        self.events: list[tuple] = []

    def install(self, m: pytest.MonkeyPatch) -> None:
        real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

        def fsync(fd):
            fd = fd if isinstance(fd, int) else fd.fileno()
            self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            return real_fsync(fd)

        def moved(kind, real):
            def move(src, dst, *args, **kwargs):
                event = (kind, os.path.realpath(src), os.path.realpath(dst))
                real(src, dst, *args, **kwargs)
                self.events.append(event)
            return move

        m.setattr(os, "fsync", fsync)  # the os module that taskindex.index.storage and taskindex.index.task_index call through
        m.setattr(os, "replace", moved("replace", real_replace))
        m.setattr(os, "rename", moved("rename", real_rename))

    def show(self) -> str:
        def rel(p):
            return os.path.relpath(p, self.root) if p.startswith(self.root) else p
        return "\n".join(f"  {i}: {e[0]} " + " -> ".join(rel(p) for p in e[1:]) for i, e in enumerate(self.events))


def _run(root: Path, monkeypatch, operation) -> tuple[Journal, set[str]]:
    """Run one commit under the journal; returns it and the files that commit created."""
    before = _files(root)
    journal = Journal(root)
    with monkeypatch.context() as m:
        journal.install(m)
        operation()
    return journal, _files(root) - before


def assert_durable_commit(journal: Journal, new_files: set[str]) -> None:
    """The order of a crash-safe commit (see the module docstring), for the files it created."""
    root, events, log = journal.root, journal.events, journal.show()
    current = os.path.join(root, "CURRENT")
    swaps = [i for i, e in enumerate(events) if e[0] in ("replace", "rename") and e[2] == current]
    assert len(swaps) == 1, f"CURRENT must be replaced once by a rename:\n{log}"
    c = swaps[0]

    def fsyncs(path: str) -> list[int]:
        return [i for i, e in enumerate(events) if e == ("fsync", path)]

    def in_place(path: str) -> int:
        """The event by which `path` holds its fsynced bytes under its final name (renamed there or not)."""
        moves = [i for i, e in enumerate(events) if e[0] in ("replace", "rename") and e[2] == path]
        if moves:
            j = moves[-1]
            synced = [i for i in fsyncs(events[j][1]) if i < j]
            assert synced, f"{os.path.relpath(path, root)} was renamed into place unsynced:\n{log}"
            return j
        synced = [i for i in fsyncs(path) if i < c]
        assert synced, f"{os.path.relpath(path, root)} was not fsynced before CURRENT was replaced:\n{log}"
        return synced[0]

    manifests = sorted(p for p in new_files if os.path.dirname(p) == root)
    named = os.path.join(root, Path(current).read_text().split()[0])
    assert manifests == [named], (manifests, named)
    by_folder: dict[str, int] = {}
    for path in new_files:
        folder = os.path.dirname(path)
        by_folder[folder] = max(by_folder.get(folder, -1), in_place(path))
    for folder, last in by_folder.items():
        assert any(last < i < c for i in fsyncs(folder)), (
            f"{os.path.relpath(folder, root)}/ was not fsynced between its last new file (event {last}) and the "
            f"replace of CURRENT (event {c}):\n{log}")
    assert any(i < c for i in fsyncs(events[c][1])), f"CURRENT's new bytes were not fsynced before the rename:\n{log}"
    assert any(i > c for i in fsyncs(root)), f"the index folder was not fsynced after CURRENT was replaced:\n{log}"


@pytest.fixture
def index(tmp_path, probe):
    with TaskIndex.create(tmp_path / "idx", probe=probe) as idx:
        synth = Synth(idx)
        idx.add_many([(f"r{i}", synth.make(i % 20), "task", {"i": i}) for i in range(6)])
        idx.synth = synth
        yield idx


def test_create_makes_its_first_version_durable(tmp_path, probe, monkeypatch):
    root = tmp_path / "idx"
    root.mkdir()
    journal, new = _run(root, monkeypatch, lambda: TaskIndex.create(root, probe=probe).close())
    assert any(p.endswith(".npy") for p in new)  # the prior
    assert_durable_commit(journal, new)


@pytest.mark.parametrize("write", ["add", "add_model", "upsert", "remove", "set_alpha", "compact"])
def test_every_new_file_and_its_folder_are_fsynced_before_current_is_replaced(index, monkeypatch, write):
    root = index._v.store.root
    op = {"add": lambda: index.add("new", index.synth.make(3), metadata={"i": 99}),
          "add_model": lambda: index.add_model("expert", "r1"),
          "upsert": lambda: index.upsert("r2", index.synth.make(4)),
          "remove": lambda: index.remove("r3"),
          "set_alpha": lambda: index.set_alpha(0.3),
          "compact": index.compact}[write]
    if write == "compact":
        index.remove("r5")  # a commit before the journal: compact drops its files
    journal, new = _run(root, monkeypatch, op)
    assert_durable_commit(journal, new)
    if write in ("add", "add_model", "upsert", "compact"):  # a segment: vectors, Parquet and JSON records
        assert sorted(Path(p).suffix for p in new if "/data/" in p) == [".f32", ".json", ".parquet"]
    else:
        assert not [p for p in new if "/data/" in p]


def test_the_commit_that_trains_the_projection_makes_every_projected_file_durable(tmp_path, probe, monkeypatch):
    """The first commit past EXACT_ROWS writes the PCA (.npy) and one projected file per segment, the segments
    committed before it included."""
    with TaskIndex.create(tmp_path / "idx", probe=probe) as idx:
        synth = Synth(idx)
        idx.add_many([(f"r{i}", synth.make(i % 20)) for i in range(candidates.EXACT_ROWS - 3)])
        idx.add_many([(f"s{i}", synth.make(i % 20)) for i in range(2)])
        journal, new = _run(idx._v.store.root, monkeypatch, lambda: idx.add("last", synth.make(1)))
        assert idx._v.manifest.projection is not None
        segments = len(idx._v.manifest.segments)
    assert_durable_commit(journal, new)
    data = sorted(Path(p).name.split(".", 1)[1] for p in new if "/data/" in p)
    assert data == sorted(["f32", "json", "parquet", "npy"] + ["proj.f32"] * segments)


def test_the_order_check_itself_refuses_a_commit_missing_each_step(tmp_path):
    """The checker on hand-made journals: each dropped step of a good commit makes it fail."""
    root = os.path.realpath(tmp_path)
    data, cur = os.path.join(root, "data"), os.path.join(root, "CURRENT")
    man, seg = os.path.join(root, "manifest-00000002.json"), os.path.join(data, "a.f32")
    Path(cur).write_text("manifest-00000002.json " + "0" * 64 + "\n")
    good = [("fsync", seg), ("fsync", data), ("fsync", root + "/.m.tmp"), ("replace", root + "/.m.tmp", man),
            ("fsync", root), ("fsync", root + "/.c.tmp"), ("replace", root + "/.c.tmp", cur), ("fsync", root)]
    journal = Journal(tmp_path)
    journal.events = list(good)
    assert_durable_commit(journal, {seg, man})
    for drop in range(len(good)):
        journal.events = good[:drop] + good[drop + 1:]
        with pytest.raises(AssertionError):
            assert_durable_commit(journal, {seg, man})
    journal.events = [good[1], good[0], *good[2:]]  # the folder before its file
    with pytest.raises(AssertionError, match="data/ was not fsynced"):
        assert_durable_commit(journal, {seg, man})
