"""Bulk rebuilds from a manifest: same vectors as embedding alone, isolation, resume after SIGKILL, bad manifests."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from clikit import assert_user_error, make_image_folder

from taskindex.data import samples
from taskindex.cli import cli
from taskindex.errors import IndexLockedError, IndexUsageError, ManifestError
from taskindex.index.task_index import TaskIndex
from taskindex.rebuilds.inputs import read_manifest
from taskindex.rebuilds.run import rebuild, staging_dir
from taskindex.embedding.pipeline import embed

TINY = dict(probe="resnet18", weights=None, image_size=16)
SAMPLES = ["digits-round", "fashion-footwear", "mnist-round", "digits-even-odd", "fashion-tops", "mnist-low-high",
           "digits-straight", "fashion-bag-vs-rest"]


def write_csv(path, rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = [",".join(keys)] + [",".join(str(r.get(k, "")) for k in keys) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def sample_rows(names, per_class=6):
    return [{"name": n, "kind": "task", "source": f"sample:{n}", "per_class": per_class, "seed": i,
             "meta.dataset": samples.describe(n)["dataset"]} for i, n in enumerate(names)]


@pytest.mark.slow
def test_rebuild_gives_the_vectors_of_embedding_each_task_alone(tmp_path):
    """Bit-identical: the same seed and thread count sum the same floats in the same order."""
    manifest = write_csv(tmp_path / "m.csv", sample_rows(SAMPLES[:4]))
    report = rebuild(tmp_path / "idx", manifest, workers=2, threads=1, progress=False, **TINY)
    assert report.committed and report.embedded == 4 and report.failed == [] and report.workers == 2
    assert not staging_dir(tmp_path / "idx").exists()
    with TaskIndex.open(tmp_path / "idx", readonly=True) as idx:
        assert sorted(idx.names()) == sorted(SAMPLES[:4])
        probe, options = idx.probe(), idx.embed_options()
        for i, name in enumerate(SAMPLES[:4]):
            alone = embed(samples.load(name, max_per_class=6, seed=i), probe, seed=i, threads=1, progress=False,
                          **options)
            emb, meta = idx.get(name)
            assert np.array_equal(emb.vector, alone.vector.astype(np.float32)), name
            assert meta["dataset"] == samples.describe(name)["dataset"]


def test_a_second_rebuild_replaces_the_rows_in_one_commit(tmp_path):
    rebuild(tmp_path / "idx", write_csv(tmp_path / "a.csv", sample_rows(SAMPLES[:2])), workers=1, progress=False,
            **TINY)
    with TaskIndex.open(tmp_path / "idx", readonly=True) as idx:
        version = idx.version
    report = rebuild(tmp_path / "idx", write_csv(tmp_path / "b.csv", sample_rows(SAMPLES[1:3])), workers=1,
                     progress=False, probe="efficientnet_lite0")  # ignored: the index keeps its probe
    with TaskIndex.open(tmp_path / "idx", readonly=True) as idx:
        assert sorted(idx.names()) == sorted(SAMPLES[1:3]) and idx.version == version + 1 == report.version
        assert idx.space["probe"] == "resnet18"


def test_a_model_row_takes_the_embedding_of_its_source_task(tmp_path):
    rows = sample_rows(SAMPLES[:2]) + [{"name": "expert", "kind": "model", "source_task": SAMPLES[1],
                                        "meta.dataset": "fashion-mnist"}]
    report = rebuild(tmp_path / "idx", write_csv(tmp_path / "m.csv", rows), workers=1, progress=False, **TINY)
    assert report.embedded == 2 and report.committed  # the model's embedding is its task's, not made again
    with TaskIndex.open(tmp_path / "idx", readonly=True) as idx:
        assert idx.names(kind="model") == ["expert"]
        assert np.array_equal(idx.get("expert")[0].vector, idx.get(SAMPLES[1])[0].vector)
        assert idx.get("expert")[1]["source_task"] == SAMPLES[1]  # leave-one-out never picks it for that task


def test_broken_rows_are_reported_and_the_others_finish(tmp_path):
    one_class = make_image_folder(tmp_path / "one", classes=("only",))
    corrupt = make_image_folder(tmp_path / "corrupt")
    next(iter(sorted((corrupt / "dark").iterdir()))).write_bytes(b"not an image")
    rows = sample_rows(SAMPLES[:2])
    rows.insert(1, {"name": "one-class", "source": str(one_class)})
    rows.append({"name": "corrupt", "source": str(corrupt)})
    manifest = write_csv(tmp_path / "m.csv", rows)
    TaskIndex.create(tmp_path / "idx", **TINY).close()
    report = rebuild(tmp_path / "idx", manifest, workers=1, progress=False)
    assert not report.committed and report.embedded == 2
    assert [(f["name"], f["line"]) for f in report.failed] == [("one-class", 3), ("corrupt", 5)]
    assert "at least two classes" in report.failed[0]["reason"]
    assert "cannot read image" in report.failed[1]["reason"], report.failed[1]
    with TaskIndex.open(tmp_path / "idx", readonly=True) as idx:
        assert len(idx) == 0  # without allow_failures nothing is committed
    report = rebuild(tmp_path / "idx", manifest, workers=1, progress=False, resume=True, allow_failures=True)
    assert report.committed and report.reused == 2 and report.embedded == 0 and len(report.failed) == 2
    with TaskIndex.open(tmp_path / "idx", readonly=True) as idx:
        assert sorted(idx.names()) == sorted(SAMPLES[:2])


@pytest.mark.slow
def test_sigkill_then_resume_embeds_only_the_missing_rows_and_the_live_index_stays_as_it_was(tmp_path):
    index, manifest = tmp_path / "idx", write_csv(tmp_path / "m.csv", sample_rows(SAMPLES, per_class=12))
    with TaskIndex.create(index, **TINY) as idx:
        probe = idx.probe()
        idx.add("old", embed(samples.load("digits-round", max_per_class=4), probe, progress=False,
                             **idx.embed_options()))
        version = idx.version
    stage = staging_dir(index)
    proc = subprocess.Popen([sys.executable, "-c", "from taskindex.cli import main; main()", "rebuild", str(index),
                             "--manifest", manifest, "--workers", "1", "--json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(stage.glob("*.emb"))) < 3:
            assert proc.poll() is None, "the rebuild ended before it could be killed"
            with TaskIndex.open(index, readonly=True) as idx:  # readable, unchanged, while it runs
                assert idx.version == version and idx.names() == ["old"]
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    staged = len(list(stage.glob("*.emb")))
    assert 3 <= staged < len(SAMPLES)
    with TaskIndex.open(index, readonly=True) as idx:
        assert idx.version == version and idx.names() == ["old"] and not idx.verify()
    with pytest.raises(IndexUsageError, match="pass resume=True"):
        rebuild(index, manifest, workers=1, progress=False)
    report = rebuild(index, manifest, workers=1, progress=False, resume=True)
    assert (report.reused, report.embedded, report.failed) == (staged, len(SAMPLES) - staged, [])
    with TaskIndex.open(index, readonly=True) as idx:
        assert sorted(idx.names()) == sorted(SAMPLES) and not idx.verify()


@pytest.mark.parametrize("rows, message", [
    ([{"name": "a", "source": "sample:digits-round", "colour": "red"}], r"line 2: unknown column 'colour'"),
    ([{"name": "a", "source": "sample:digits-round"}, {"name": "b", "source": "nowhere/"}],
     r"line 3: source: 'nowhere/' does not exist"),
    ([{"name": "a", "source": "sample:digits-round"}, {"name": "a", "source": "sample:mnist-round"}],
     r"line 3: name 'a' repeats line 2"),
    ([{"name": "a", "source": "sample:digits-round", "per_class": "many"}],
     r"line 2: per_class must be a positive integer; got 'many'"),
    ([{"name": "a", "source": "sample:digits-round", "kind": "expert"}], r"line 2: unknown kind 'expert'"),
    ([{"name": "a", "source": "sample:no-such-task"}], r"line 2: source: unknown sample task 'no-such-task'"),
    ([{"name": "", "source": "sample:digits-round"}], r"line 2: name is missing"),
    ([{"name": "a", "source": "sample:digits-round"}, {"name": "m", "kind": "model", "source_task": "b"}],
     r"line 3: source_task 'b' is not a task row of this manifest"),
    ([{"name": "a", "source": "sample:digits-round", "source_task": "a"}],
     r"line 2: source_task is for a model row, in place of source"),
    ([{"name": "a", "source": "sample:digits-round", "meta.size": 3},
      {"name": "b", "source": "sample:mnist-round", "meta.size": "big"}],
     r"line 3: metadata 'size' is a string but line 2 has a number"),
])
def test_bad_csv_manifests_are_refused_naming_the_line(tmp_path, rows, message):
    path = write_csv(tmp_path / "m.csv", rows)
    with pytest.raises(ManifestError, match=message):
        read_manifest(path)
    r = CliRunner().invoke(cli, ["rebuild", str(tmp_path / "idx"), "--manifest", path, *["--probe", "resnet18"]])
    assert_user_error(r, message.replace("\\", "").split(": ", 1)[0])
    assert not (tmp_path / "idx").exists()  # refused before any work


def test_yaml_and_parquet_manifests(tmp_path):
    (tmp_path / "m.yaml").write_text(
        "rows:\n"
        "  - name: round\n    source: sample:digits-round\n    per_class: 5\n    metadata: {owner: ana, n: 3}\n"
        "  - name: tops\n    kind: model\n    source: sample:fashion-tops\n"
        "  - name: bad\n    source: sample:digits-round\n    seed: -1\n")
    with pytest.raises(ManifestError, match=r"m.yaml, line 9: seed must be an integer >= 0; got -1"):
        read_manifest(tmp_path / "m.yaml")
    text = (tmp_path / "m.yaml").read_text().rsplit("  - name: bad", 1)[0]
    (tmp_path / "m.yaml").write_text(text)
    rows = read_manifest(tmp_path / "m.yaml")
    assert [(r.name, r.kind, r.per_class, r.metadata, r.line) for r in rows] == [
        ("round", "task", 5, {"owner": "ana", "n": 3}, 2), ("tops", "model", None, {}, 6)]
    pq.write_table(pa.table({"name": ["x", "y"], "source": ["sample:digits-round", "sample:mnist-round"],
                             "seed": [0, 1], "meta.owner": ["ana", None]}), tmp_path / "m.parquet")
    rows = read_manifest(tmp_path / "m.parquet")
    assert [(r.name, r.seed, r.metadata) for r in rows] == [("x", 0, {"owner": "ana"}), ("y", 1, {})]
    pq.write_table(pa.table({"name": ["x"], "source": ["sample:digits-round"], "seed": ["zero"]}),
                   tmp_path / "m.parquet")
    with pytest.raises(ManifestError, match=r"m.parquet, row 1: seed must be an integer"):
        read_manifest(tmp_path / "m.parquet")


def failing_rebuild(tmp_path) -> list[str]:
    """The CLI arguments of a rebuild whose second row fails (a folder of one class)."""
    one_class = make_image_folder(tmp_path / "one", classes=("only",))
    rows = sample_rows(SAMPLES[:1]) + [{"name": "one-class", "source": str(one_class)}]
    manifest = write_csv(tmp_path / "m.csv", rows)
    return ["rebuild", str(tmp_path / "idx"), "--manifest", manifest, "--probe", "resnet18", "--weights", "random",
            "--image-size", "16", "--workers", "1"]


def test_cli_rebuild_exits_1_when_rows_fail_and_0_with_allow_failures(tmp_path):
    runner, args = CliRunner(), failing_rebuild(tmp_path)
    r = runner.invoke(cli, args)
    assert r.exit_code == 1 and "failed: one-class (manifest line 3)" in r.output and "nothing committed" in r.output
    r = runner.invoke(cli, [*args, "--resume", "--allow-failures", "--json"])
    assert r.exit_code == 0, r.output
    with TaskIndex.open(tmp_path / "idx", readonly=True) as idx:
        assert idx.names() == [SAMPLES[0]]


@pytest.mark.slow
def test_ray_on_a_local_instance_gives_the_index_of_the_local_pool(tmp_path):
    ray = pytest.importorskip("ray")
    manifest = write_csv(tmp_path / "m.csv", sample_rows(SAMPLES[:3]))
    local = rebuild(tmp_path / "local", manifest, workers=1, threads=1, progress=False, **TINY)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        remote = rebuild(tmp_path / "ray", manifest, ray_address="local", threads=1, progress=False, **TINY)
    finally:
        ray.shutdown()
    assert remote.executor == "ray (local)" and remote.embedded == 3 and local.embedded == 3
    with TaskIndex.open(tmp_path / "local", readonly=True) as a, TaskIndex.open(tmp_path / "ray", readonly=True) as b:
        assert a.space == b.space and sorted(a.names()) == sorted(b.names())
        for name in a.names():
            (ea, ma), (eb, mb) = a.get(name), b.get(name)
            assert np.array_equal(ea.vector, eb.vector), name  # one thread each: bit-identical
            assert ma["dataset"] == mb["dataset"]


def test_after_failed_rows_allow_failures_alone_commits_the_rest(tmp_path):
    """The README's advice after failed rows works as written: --allow-failures, with or without --resume."""
    runner, args = CliRunner(), failing_rebuild(tmp_path)
    assert runner.invoke(cli, args).exit_code == 1
    message = assert_user_error(runner.invoke(cli, args), "ended with 1 failed row(s)")
    assert "--allow-failures" in message and "--resume" in message and "interrupted" not in message
    r = runner.invoke(cli, [*args, "--allow-failures", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["reused"] == 1  # the row that worked is not embedded again
    with TaskIndex.open(tmp_path / "idx", readonly=True) as idx:
        assert idx.names() == [SAMPLES[0]]
    assert not staging_dir(tmp_path / "idx").exists()


@pytest.mark.slow
def test_a_second_rebuild_while_one_runs_names_it_and_never_advises_deleting_its_folder(tmp_path):
    index, manifest = tmp_path / "idx", write_csv(tmp_path / "m.csv", sample_rows(SAMPLES, per_class=12))
    proc = subprocess.Popen([sys.executable, "-c", "from taskindex.cli import main; main()", "rebuild", str(index),
                             "--manifest", manifest, "--workers", "1", "--probe", "resnet18", "--weights", "random",
                             "--image-size", "16"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(staging_dir(index).glob("*.emb")):
            assert proc.poll() is None, "the first rebuild ended too soon"
            time.sleep(0.05)
        for resume in (False, True):
            running = re.escape(f"a rebuild of {index} is running (pid {proc.pid})")
            with pytest.raises(IndexLockedError, match=running) as e:
                rebuild(index, manifest, workers=1, resume=resume, progress=False)
            assert "delete" not in str(e.value)
        r = CliRunner().invoke(cli, ["rebuild", str(index), "--manifest", manifest, "--resume"])
        message = assert_user_error(r, f"a rebuild of {index} is running (pid {proc.pid})")
        assert "delete" not in message and "--resume" in message
        assert proc.poll() is None  # the running rebuild goes on
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode == 130


RACER = """
import sys
import taskindex.rebuilds.run, taskindex.embedding.pipeline  # the slow imports, before the start signal
from taskindex.cli import main
print("ready", flush=True)
sys.stdin.readline()
main()  # click reads the arguments after -c
"""


@pytest.mark.slow
def test_two_rebuilds_creating_one_new_index_at_once_one_runs_and_the_other_is_told(tmp_path):
    """Started together on a path that does not exist yet: one creates and fills the index, the other exits 2
    naming it, and neither creates the index twice nor loses the first one's rows."""
    index, manifest = tmp_path / "new.index", write_csv(tmp_path / "m.csv", sample_rows(SAMPLES[:4], per_class=12))
    args = ["rebuild", str(index), "--manifest", manifest, "--workers", "1", "--probe", "resnet18", "--weights",
            "random", "--image-size", "16"]
    procs = [subprocess.Popen([sys.executable, "-c", RACER, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout.readline() == "ready\n", p.communicate()
        for p in procs:  # the start signal, as close together as two writes go
            p.stdin.write("go\n")
            p.stdin.flush()
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill() if p.poll() is None else None
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outputs
    winner = next(p for p in procs if p.returncode == 0)
    out, err = outputs[procs.index(next(p for p in procs if p.returncode == 2))]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("Error: "), err
    assert f"a rebuild of {index} is running (pid {winner.pid})" in lines[0] and "Traceback" not in err, err
    with TaskIndex.open(index, readonly=True) as idx:
        assert sorted(idx.names()) == sorted(SAMPLES[:4]) and not idx.verify()
        assert [v["version"] for v in idx.versions()] == [1, 2]  # created once, committed once
    assert not staging_dir(index).exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "new.index"]


HOLDER = """
import sys
from pathlib import Path
from taskindex.rebuilds import stage
with stage._opening(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_a_rebuild_that_cannot_get_past_another_opening_the_index_names_it(tmp_path, monkeypatch):
    """The wait for a rebuild that is still creating the index is bounded: then it is named, nothing is made."""
    from taskindex.rebuilds import stage

    index, manifest = tmp_path / "new.index", write_csv(tmp_path / "m.csv", sample_rows(SAMPLES[:1]))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(index)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        monkeypatch.setattr(stage, "CREATE_WAIT", 0.3)
        with pytest.raises(IndexLockedError, match=re.escape(f"a rebuild of {index} is running (pid {holder.pid})")):
            rebuild(index, manifest, workers=1, progress=False, **TINY)
        assert not index.exists()
    finally:
        holder.communicate("go\n", timeout=60)
    assert holder.returncode == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]


def test_a_lock_file_left_by_a_killed_rebuild_does_not_stop_the_next(tmp_path):
    index, manifest = tmp_path / "new.index", write_csv(tmp_path / "m.csv", sample_rows(SAMPLES[:1], per_class=4))
    (tmp_path / ".new.index.opening").write_text("999999999")  # its flock went with the process
    assert rebuild(index, manifest, workers=1, progress=False, **TINY).committed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "new.index"]
