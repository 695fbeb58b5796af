"""Versions as LanceDB users know them (issue 22, item 5 and "Versions"): list them, open one read-only, restore
one as a new commit, compact keeping the last few, repair a lost or damaged CURRENT, and wait for the writer lock.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner
from clikit import assert_flag_wording

from taskindex._testing.index_harness import Synth
from taskindex.cli.main import cli
from taskindex.errors import IndexCorruptError, IndexLockedError, IndexUsageError
from taskindex.index import TaskIndex, verify
from taskindex.index.history import KEEP_VERSIONS
from taskindex.index.storage import referenced_files


@pytest.fixture
def path(tmp_path, tiny_probe):
    """An index of five versions: created, 3 rows added, one removed, alpha set, one replaced."""
    root = tmp_path / "idx"
    with TaskIndex.create(root, probe=tiny_probe) as idx:
        synth = Synth(idx)
        idx.add_many([(f"r{i}", synth.make(i)) for i in range(3)])
        idx.remove("r1")
        idx.set_alpha(0.2)
        idx.upsert("r2", synth.make(7))
    return root


def _on_disk(root) -> set[str]:
    return {p.name for p in (root / "data").iterdir()} | {p.name for p in root.glob("manifest-*.json")}


def test_versions_say_what_each_commit_did(path):
    with TaskIndex.open(path, readonly=True) as idx:
        listed = idx.versions()
    assert [v["version"] for v in listed] == [1, 2, 3, 4, 5]
    assert [v["operation"] for v in listed] == ["created", "added 3 rows", "removed 1 row", "set alpha to 0.2",
                                                "added 1 row, 1 removed or replaced"]
    assert [v["rows"] for v in listed] == [0, 3, 2, 2, 2]
    assert [v["current"] for v in listed] == [False] * 4 + [True]
    assert all(time.strptime(v["time"], "%Y-%m-%dT%H:%M:%SZ") for v in listed)


def test_an_earlier_version_opens_read_only_and_answers_as_it_did(path):
    with TaskIndex.open(path, version=2) as old, TaskIndex.open(path, readonly=True) as new:
        assert old.version == 2 and old.readonly and sorted(old.names()) == ["r0", "r1", "r2"]
        assert old.alpha == pytest.approx(0.15) and new.alpha == pytest.approx(0.2)
        assert not np.array_equal(old.get("r2")[0].vector, new.get("r2")[0].vector)
        assert {h.name for h in old.query("r0", k=2)} == {"r1", "r2"}  # r1 was removed in version 3
        with pytest.raises(IndexUsageError, match="read-only"):
            old.remove("r0")
    with pytest.raises(IndexUsageError, match="at version 5: version 9 was never committed"):
        TaskIndex.open(path, version=9)
    (path / "manifest-00000001.json").unlink()
    with pytest.raises(IndexUsageError, match="holds no version 1 .*`taskindex versions"):
        TaskIndex.open(path, version=1)
    with pytest.raises(IndexUsageError, match="earlier version opens read-only"):
        TaskIndex.open(path, readonly=False, version=2)


def test_restore_commits_an_earlier_version_as_the_newest(path, tiny_probe):
    with TaskIndex.open(path, version=2) as old:
        then = {n: old.get(n)[0].vector for n in old.names()}
        answer = [(h.name, h.distance) for h in old.query("r0", k=2)]
    with TaskIndex.open(path) as idx:
        idx.compact()  # restore reaches back across a compact: the earlier segments are loaded, not appended
        idx.restore(2)
        assert idx.version == 7 and set(idx.names()) == set(then) and idx.alpha == pytest.approx(0.15)
        assert all(np.array_equal(idx.get(n)[0].vector, v) for n, v in then.items())
        assert [(h.name, h.distance) for h in idx.query("r0", k=2)] == answer
        assert [v["operation"] for v in idx.versions()][-2:] == ["compacted", "restored version 2"]
        idx.add("late", Synth(idx).make(4))  # ids are never reused: the restored version's next id is not
        ids = idx.to_pandas()["id"].tolist()
        assert len(set(ids)) == len(ids) and max(ids) >= 4
    assert verify(path) == []


def test_compact_keeps_the_last_versions_by_default_and_keep_1_only_the_newest(path):
    with TaskIndex.open(path) as idx:
        idx.remove("r0")
        idx.set_alpha(0.3)
        idx.set_alpha(0.4)
        idx.compact()  # version 9
        assert [v["version"] for v in idx.versions()] == list(range(10 - KEEP_VERSIONS, 10))
        for v in idx.versions():
            with TaskIndex.open(path, version=v["version"]) as old:
                assert len(old) == v["rows"] and old.verify() == []
        removed = idx.compact(keep=1)
        assert [v["version"] for v in idx.versions()] == [10] and removed > 0
        kept = set(referenced_files(idx._v.manifest.to_json())) | {"manifest-00000010.json"}
    assert _on_disk(path) == kept and verify(path) == []


def test_keep_must_be_a_positive_integer(path):
    with TaskIndex.open(path) as idx, pytest.raises(Exception, match="keep must be a positive integer"):
        idx.compact(keep=0)


def test_the_version_commands(path):
    r = CliRunner()
    out = r.invoke(cli, ["versions", str(path), "--json"])
    assert out.exit_code == 0, out.output
    assert [v["version"] for v in json.loads(out.output)] == [1, 2, 3, 4, 5]
    text = r.invoke(cli, ["versions", str(path)]).output
    assert "removed 1 row" in text and text.splitlines()[0].split() == ["version", "time", "rows", "operation",
                                                                        "current"]
    out = r.invoke(cli, ["restore", str(path), "2"])
    assert out.exit_code == 0 and "restored version 2: 3 rows, now version 6" in out.output, out.output
    out = r.invoke(cli, ["compact", str(path), "--keep", "2"])
    assert out.exit_code == 0, out.output
    assert "kept versions 6-7; removed versions 1-5" in out.output, out.output
    assert_flag_wording(r.invoke(cli, ["restore", str(path), "3"]), "holds no version 3")
    assert_flag_wording(r.invoke(cli, ["versions", str(path.parent)]), "holds no manifests: it is not a taskindex")


# --- repair -------------------------------------------------------------------------------------------


def _broken(path, how: str) -> None:
    if how == "lost":
        (path / "CURRENT").unlink()
    elif how == "garbage":
        (path / "CURRENT").write_bytes(b"\x00garbage")
    else:  # the version CURRENT names lost a data file
        manifest = json.loads((path / "manifest-00000005.json").read_bytes())
        (path / "data" / manifest["segments"][-1]["vectors"]["name"]).unlink()


@pytest.mark.parametrize("how", ["lost", "garbage", "data"])
def test_a_damaged_index_says_to_repair_and_repair_goes_back_to_the_newest_intact_version(path, how):
    with TaskIndex.open(path, readonly=True) as idx:
        rows = sorted(idx.names())
    _broken(path, how)
    with pytest.raises(IndexCorruptError) as err:
        TaskIndex.open(path, readonly=True)
    assert "repair" in str(err.value) and "taskindex repair" in err.value.cli
    report = TaskIndex.repair(path)
    assert report["repaired"] and report["version"] == 6
    # a data file of version 5 is gone: repair skips it (and says so) for version 4, whose files are all there
    assert report["from_version"] == (4 if how == "data" else 5)
    assert [s["version"] for s in report["skipped"]] == ([5] if how == "data" else [])
    with TaskIndex.open(path, readonly=True) as idx:
        assert idx.version == 6 and idx.verify() == []
        assert sorted(idx.names()) == (rows if how != "data" else ["r0", "r2"])
        assert idx.versions()[-1]["operation"] == f"repaired: back to version {report['from_version']}"
    again = TaskIndex.repair(path)
    assert again["repaired"] is False and again["version"] == 6


def test_repair_leaves_an_intact_index_alone_and_skips_a_damaged_newest_manifest(path):
    before = _on_disk(path)
    assert TaskIndex.repair(path)["repaired"] is False and _on_disk(path) == before
    (path / "CURRENT").unlink()
    (path / "manifest-00000005.json").write_text('{"format": "taskindex-index", "vers')  # torn
    report = TaskIndex.repair(path)
    assert report["from_version"] == 4 and report["skipped"][0]["version"] == 5


def test_the_cli_says_to_repair_and_repairs(path):
    r = CliRunner()
    (path / "CURRENT").unlink()
    assert_flag_wording(r.invoke(cli, ["info", str(path)]), f"run `taskindex repair {path}`")
    out = r.invoke(cli, ["repair", str(path)])
    assert out.exit_code == 0 and "CURRENT now names version 6, a copy of version 5" in out.output, out.output
    assert r.invoke(cli, ["verify", str(path)]).output.strip() == "ok"
    assert "nothing to repair" in r.invoke(cli, ["repair", str(path)]).output


# --- the writer lock ------------------------------------------------------------------------------------


def test_lock_timeout_waits_for_the_writer_and_says_how_long_it_waited(path):
    holder = TaskIndex.open(path)
    start = time.monotonic()
    with pytest.raises(IndexLockedError, match="still after 0.3 s.*lock_timeout") as err:
        TaskIndex.open(path, lock_timeout=0.3)
    assert time.monotonic() - start >= 0.3 and "--wait SECONDS" in err.value.cli
    threading.Timer(0.5, holder.close).start()
    with TaskIndex.open(path, lock_timeout=30) as idx:  # measured: opens ~0.5 s in, as the holder closes
        idx.remove("r0")
    r = CliRunner()
    holder = TaskIndex.open(path)
    assert_flag_wording(r.invoke(cli, ["rm", str(path), "r2"]), "--wait SECONDS")
    threading.Timer(0.5, holder.close).start()
    out = r.invoke(cli, ["rm", str(path), "r2", "--wait", "30"])
    assert out.exit_code == 0, out.output


def test_cli_add_embeds_before_it_takes_the_writer_lock(path, monkeypatch, tmp_path):
    """Parallel `taskindex add`s then wait for each other's commits only, not for each other's embeddings."""
    import fcntl
    import os

    seen = []

    def embed(self, *args, **kwargs):
        fd = os.open(path / "LOCK", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises where this command holds the lock already
            seen.append("lock free")
        finally:
            os.close(fd)
        with TaskIndex.open(path, version=5) as idx:
            return Synth(idx).make(5)

    monkeypatch.setattr(TaskIndex, "embed", embed)
    out = CliRunner().invoke(cli, ["add", str(path), "new", "sample:digits-round", "--wait", "5"])
    assert out.exit_code == 0 and seen == ["lock free"], out.output


def test_a_create_that_loses_a_race_never_replaces_the_index_made_meanwhile(path, tiny_probe, monkeypatch):
    """Two `create`s of one new path: both see it empty, then the slower one (its probe still loading) finds
    the other's index under the lock, says so, and leaves it and its five versions as they were."""
    from taskindex.index import writes

    monkeypatch.setattr(writes, "first_manifest", lambda *a: pytest.fail("a second version 1 was written"))
    before = TaskIndex.open(path, readonly=True).versions()
    with pytest.raises(IndexUsageError, match="created by another process meanwhile"):
        writes.created(path, tiny_probe, "montecarlo", 1.0, "trimmed:0.1", "float32")
    with TaskIndex.open(path, lock_timeout=0) as idx:  # the lock was released
        assert idx.versions() == before and sorted(idx.names()) == ["r0", "r2"]
