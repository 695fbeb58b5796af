"""Readers while another handle or process compacts (issue 22, item 4): the version a reader holds outlives the
compact (its lease), a reader without a lease gets one clear error, never a raw OSError, and refresh() moves a
reader to the newest version.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from taskindex._testing.index_harness import Synth
from taskindex.index import TaskIndex
from taskindex.index.storage import VersionGoneError


@pytest.fixture
def path(segmented_index):
    return segmented_index


def _seen(idx: TaskIndex) -> tuple:
    """What a reader reads lazily from the files of its version: metadata, provenance, the Parquet table."""
    return (sorted(idx.names()), idx.get("r3")[0].meta, idx.get("r3")[0].vector.tolist(),
            idx.to_pandas()["name"].tolist(), [h.name for h in idx.query("r4", k=3)])


def test_a_reader_keeps_reading_its_version_through_a_compact_in_another_handle(path):
    reader = TaskIndex.open(path, readonly=True)
    with TaskIndex.open(path) as writer:
        writer.remove("r1")
        writer.compact(keep=1)
        assert writer.version == 8
        with TaskIndex.open(path, version=6) as again:  # the reader's version is still whole
            before = _seen(again)
        assert _seen(reader) == before and reader.version == 6 and "r1" in reader
        assert reader.refresh() == 8 and "r1" not in reader and len(reader) == len(writer)
        assert _seen(reader)[1:3] == before[1:3]
        writer.compact(keep=1)  # nobody holds version 6 now: it goes; the reader holds 8
        assert [v["version"] for v in writer.versions()] == [8, 9]
    assert reader.refresh() == 9 and _seen(reader)[0] == sorted(f"r{i}" for i in range(12) if i not in (0, 1, 5))
    reader.close()


def test_a_reader_whose_files_went_gets_one_clear_error_and_refresh_recovers(path):
    """Where no lease could be taken (a file system without flock), compact removes the reader's files: every
    lazy read then says to refresh, and refresh() does."""
    reader = TaskIndex.open(path, readonly=True)
    reader._v.store.lease.close()  # as on a file system without flock
    reader._v.store.lease = None
    with TaskIndex.open(path) as writer:
        writer.compact(keep=1)
    for read in (lambda: reader.get("r3"), reader.to_pandas, lambda: reader.to_arrow("rows")):
        with pytest.raises(VersionGoneError, match=r"version 6 .* removed by a compact .* refresh\(\)"):
            read()
    assert reader.refresh() == 7
    assert reader.get("r3")[1]["name"] == "r3" and len(reader.to_pandas()) == 10
    reader.close()


def test_a_reader_sees_new_commits_after_refresh_only(path):
    with TaskIndex.open(path, readonly=True) as reader, TaskIndex.open(path) as writer:
        writer.add("late", Synth(writer).make(3))
        assert "late" not in reader and reader.version == 6
        assert reader.refresh() == 7 and "late" in reader
        assert np.array_equal(reader.get("late")[0].vector, writer.get("late")[0].vector)
        assert reader.refresh() == 7  # nothing newer: nothing reloaded


def test_an_earlier_version_opened_pins_its_files_and_refresh_moves_it_to_the_newest(path):
    with TaskIndex.open(path, version=4) as old, TaskIndex.open(path) as writer:
        writer.compact(keep=1)
        assert [v["version"] for v in writer.versions()] == [4, 7]  # 4 is held, 5 and 6 are not
        assert "r0" in old and old.get("r0")[1]["name"] == "r0"
        assert old.refresh() == 7 and "r0" not in old


READER = textwrap.dedent("""
    import sys
    from taskindex.index import TaskIndex
    idx = TaskIndex.open(sys.argv[1], readonly=True)
    print(idx.version, flush=True)
    sys.stdin.readline()  # the parent compacts meanwhile
    rows = idx.to_pandas()
    print(idx.version, len(rows), sorted(idx.get(n)[1]["name"] for n in idx.names()) == sorted(rows["name"]),
          flush=True)
""")


def test_a_reader_in_another_process_reads_through_a_compact(path):
    proc = subprocess.Popen([sys.executable, "-c", READER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "6"
        with TaskIndex.open(path) as writer:
            writer.compact(keep=1)
            assert [v["version"] for v in writer.versions()] == [6, 7]  # the other process holds 6
        out, err = proc.communicate("go\n", timeout=60)
    finally:
        proc.kill()
    assert out.split() == ["6", "10", "True"], err
    with TaskIndex.open(path) as writer:
        writer.compact(keep=1)  # the reader has exited: the kernel dropped its lease
        assert [v["version"] for v in writer.versions()] == [8]


def test_an_open_that_races_a_compact_reads_current_again(path, monkeypatch):
    """A compact can remove the version an opening reader has just read from CURRENT, before its lease: the
    open then finds that manifest gone and opens the newest version instead."""
    from taskindex.index import leases

    real, asked = leases.hold, []

    def hold(store, version):
        asked.append(version)
        if len(asked) == 1:  # between reading CURRENT and taking the lease
            with TaskIndex.open(path) as writer:
                writer.compact(keep=1)
        return real(store, version)

    monkeypatch.setattr(leases, "hold", hold)
    with TaskIndex.open(path, readonly=True) as reader:
        assert asked[0] == 6 and reader.version == 7 and len(reader) == 10 and reader.verify() == []
