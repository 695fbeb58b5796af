"""Faults during a commit (issue 22, "Faults"): a full disk at any write, a failed fsync, and a kill at any
point of a compact each leave the last committed version intact and openable, and give one clear error.

Writes go through os.write and os.fsync (storage._write_file), so the tests fail each call in turn.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner
from clikit import assert_user_error

from taskindex._testing.index_harness import Synth
from taskindex.cli.main import cli
from taskindex.index import TaskIndex, verify
from taskindex.index.storage import CommitError, referenced_files


@pytest.fixture
def path(segmented_index):
    return segmented_index


def _files(root) -> set[str]:
    """Everything in the index folder but the lock: data files, manifests, CURRENT, temporary files."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "LOCK"}


class FailAt:
    """os.write or os.fsync that fails its `at`-th call with `err`; at=0 only counts the calls."""

    def __init__(self, real, at: int, err: int):
        self.real, self.at, self.err, self.calls = real, at, err, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            raise OSError(self.err, os.strerror(self.err))
        return self.real(*args, **kwargs)


def _calls(monkeypatch, name: str, operation) -> int:
    counter = FailAt(getattr(os, name), 0, 0)
    with monkeypatch.context() as m:
        m.setattr(os, name, counter)
        operation()
    return counter.calls


def _each_failure_leaves_the_version(path, monkeypatch, name: str, err: int, operation, match: str) -> tuple:
    """Fail call k of os.<name> during `operation`, for every k it makes: the handle, the disk and a new reader
    all hold the version before, and nothing the failed commit wrote is left. Returns the calls, and how many
    failures came after CURRENT was replaced."""
    landed = 0
    with TaskIndex.open(path) as idx:
        calls = _calls(monkeypatch, name, lambda: operation(idx, "counted"))
        assert calls >= 3
        for at in range(1, calls + 1):
            version, rows, files = idx.version, sorted(idx.names()), _files(path)
            with monkeypatch.context() as m:
                m.setattr(os, name, FailAt(getattr(os, name), at, err))
                with pytest.raises(CommitError, match=match) as caught:
                    operation(idx, f"k{at}")
            if caught.value.committed:  # the last fsync, after CURRENT was replaced: the new version is whole
                assert at == calls and "is committed, but the disk failed to confirm it" in str(caught.value)
                assert idx.version == version + 1
                landed += 1
            else:
                assert f"nothing was committed, the index still holds version {version}, intact" in str(caught.value)
                assert idx.version == version and sorted(idx.names()) == rows and _files(path) == files, at
            assert verify(path) == []
            with TaskIndex.open(path, readonly=True) as reader:
                assert reader.version == idx.version and sorted(reader.names()) == sorted(idx.names())
        operation(idx, "after")  # the handle still writes once the disk is fine
    return calls, landed


@pytest.mark.parametrize("name, err, match", [("write", errno.ENOSPC, "the disk is full"),
                                              ("fsync", errno.EIO, "Input/output error|failed to confirm")])
def test_a_failed_write_or_fsync_in_an_add_leaves_the_last_version(path, monkeypatch, name, err, match):
    synth = {}

    def add(idx, tag):
        rows = synth.setdefault("rows", Synth(idx, seed=1))
        idx.add_many([(f"new-{tag}-{i}", rows.make(i)) for i in range(2)])

    # an add writes vectors, Parquet and JSON records, the manifest and CURRENT: each can fail; only the fsync
    # of the folder after CURRENT was replaced comes once the new version is in place
    calls, landed = _each_failure_leaves_the_version(path, monkeypatch, name, err, add, match)
    assert calls >= 5 and landed == (name == "fsync")


def test_a_full_disk_during_compact_leaves_the_last_version(path, monkeypatch):
    def compact(idx, tag):
        idx.compact(keep=1)

    _each_failure_leaves_the_version(path, monkeypatch, "write", errno.ENOSPC, compact, "the disk is full")


def test_a_full_disk_on_the_cli_is_one_line(path, tmp_path, monkeypatch):
    with TaskIndex.open(path, readonly=True) as idx:
        Synth(idx).make(3).save(tmp_path / "x.emb")
    monkeypatch.setattr(os, "write", FailAt(os.write, 1, errno.ENOSPC))
    result = CliRunner().invoke(cli, ["add", str(path), "x", "--embedding", str(tmp_path / "x.emb")])
    assert_user_error(result, "the disk is full): nothing was committed, the index still holds version 6")


KILLED = textwrap.dedent("""
    import os, signal, sys
    from taskindex.index import TaskIndex
    path, name, at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    real, calls = getattr(os, name), [0]
    def kill(*args, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    with TaskIndex.open(path) as idx:
        setattr(os, name, kill)
        idx.compact(keep=1)
    print("finished", calls[0])
""")


# a kill inside compact's commit (its files, the manifest, CURRENT) and inside its clean-up: the first old
# manifest removed, the first data file, one in the middle
@pytest.mark.parametrize("name, at", [("write", 2), ("write", 5), ("unlink", 1), ("unlink", 6), ("unlink", 12)])
def test_a_kill_during_compact_leaves_every_listed_version_whole(path, name, at):
    with TaskIndex.open(path, readonly=True) as idx:
        rows = {n: idx.get(n)[0].vector.tolist() for n in idx.names()}
    proc = subprocess.run([sys.executable, "-c", KILLED, str(path), name, str(at)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -9, (proc.stdout, proc.stderr)  # killed where asked, not finished
    assert verify(path) == []
    with TaskIndex.open(path) as idx:
        assert {n: idx.get(n)[0].vector.tolist() for n in idx.names()} == rows
        for v in idx.versions():  # what the kill left listed opens whole
            with TaskIndex.open(path, version=v["version"]) as old:
                assert len(old) == v["rows"] and old.verify() == []
        idx.compact(keep=1)  # and the next compact removes what the kill left behind
        kept = {f"data/{n}" for n in referenced_files(idx._v.manifest.to_json())}
        assert _files(path) == kept | {"CURRENT", f"manifest-{idx.version:08d}.json"}
