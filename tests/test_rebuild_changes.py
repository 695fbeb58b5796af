"""Rebuilds say what they change: rows added, changed, removed and kept; a dry run plans and writes nothing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from click.testing import CliRunner
from clikit import make_image_folder
from test_rebuild import SAMPLES, TINY, sample_rows, write_csv

from taskindex.cli import cli
from taskindex.index.task_index import TaskIndex
from taskindex.rebuilds.run import rebuild, staging_dir

CLI_TINY = ["--probe", "resnet18", "--weights", "random", "--image-size", "16", "--workers", "1"]


def rows_named(names: list[str], per_class: int = 4) -> list[dict]:
    return [{**row, "name": name} for name, row in zip(names, sample_rows(SAMPLES[:len(names)], per_class))]


def test_a_dry_run_plans_the_changes_and_writes_nothing(tmp_path):
    index = tmp_path / "idx"
    first = write_csv(tmp_path / "a.csv", rows_named(["a", "b", "c"]))
    plan = rebuild(index, first, workers=1, dry_run=True, progress=False, **TINY)
    assert not index.exists() and plan.dry_run and not plan.committed and plan.version is None
    assert (plan.added, plan.changed, plan.removed, plan.to_embed) == (["a", "b", "c"], [], [], 3)
    rebuild(index, first, workers=1, progress=False, **TINY)
    with TaskIndex.open(index, readonly=True) as idx:
        version, files = idx.version, sorted(p.name for p in index.rglob("*"))
    second = write_csv(tmp_path / "b.csv", rows_named(["b", "d"]))
    plan = rebuild(index, second, workers=1, dry_run=True, progress=False)
    assert (plan.added, plan.changed, plan.removed, plan.kept, plan.to_embed) == (["d"], ["b"], ["a", "c"], [], 2)
    assert plan.version == version and plan.embedded == 0
    r = CliRunner().invoke(cli, ["rebuild", str(index), "--manifest", second, "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "would change: 1 added, 1 changed (embedded again), 2 removed, 0 kept" in r.output
    assert "  removed: a, c\n" in r.output and r.output.endswith("nothing written\n")
    with TaskIndex.open(index, readonly=True) as idx:
        assert idx.version == version and sorted(p.name for p in index.rglob("*")) == files
    assert not staging_dir(index).exists()


def test_the_summary_and_json_name_the_removed_rows(tmp_path):
    index = tmp_path / "idx"
    runner = CliRunner()
    r = runner.invoke(cli, ["rebuild", str(index), "--manifest", write_csv(tmp_path / "a.csv", rows_named(list("abc"))),
                            *CLI_TINY])
    assert r.exit_code == 0 and "changes: 3 added, 0 changed (embedded again), 0 removed, 0 kept" in r.output, r.output
    r = runner.invoke(cli, ["rebuild", str(index), "--manifest", write_csv(tmp_path / "b.csv", rows_named(["b"])),
                            *CLI_TINY, "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert (report["added"], report["changed"], report["removed"], report["kept"]) == ([], ["b"], ["a", "c"], [])
    assert report["committed"]
    with TaskIndex.open(index, readonly=True) as idx:
        assert idx.names() == ["b"] and idx.version == report["version"]


def test_with_allow_failures_a_held_row_that_fails_keeps_its_committed_version(tmp_path):
    index = tmp_path / "idx"
    rebuild(index, write_csv(tmp_path / "a.csv", rows_named(["a", "b"])), workers=1, progress=False, **TINY)
    with TaskIndex.open(index, readonly=True) as idx:
        before, meta = idx.get("b")
    broken = rows_named(["a", "b", "c"])
    broken[1] = {"name": "b", "source": str(make_image_folder(tmp_path / "one", classes=("only",))),
                 "meta.dataset": "mine"}
    report = rebuild(index, write_csv(tmp_path / "b.csv", broken), workers=1, allow_failures=True, progress=False)
    assert [f["name"] for f in report.failed] == ["b"] and report.committed
    assert (report.added, report.changed, report.removed, report.kept) == (["c"], ["a"], [], ["b"])
    with TaskIndex.open(index, readonly=True) as idx:
        assert idx.names() == ["a", "b", "c"]
        after, meta_after = idx.get("b")
        assert np.array_equal(after.vector, before.vector)
        assert meta_after["dataset"] == meta["dataset"] and meta_after["kind"] == "task"


def test_a_rebuild_says_when_the_model2vec_fit_no_longer_applies(tmp_path):
    index = tmp_path / "idx"
    tasks = list("abcd")
    models = [{"name": m, "kind": "model", "source_task": t} for m, t in (("m1", "a"), ("m2", "b"))]
    manifest = write_csv(tmp_path / "m.csv", rows_named(tasks) + models)
    report = rebuild(index, manifest, workers=1, progress=False, **TINY)
    assert not report.refit_model2vec  # no fit yet
    errors = pd.DataFrame([(t, m, 0.1 + 0.2 * i + 0.1 * j) for i, t in enumerate(tasks) for j, m in
                           enumerate(("m1", "m2"))], columns=["task", "model", "error"])
    with TaskIndex.open(index) as idx:
        idx.fit_model2vec(errors, max_steps=3)
    assert rebuild(index, manifest, workers=1, dry_run=True, progress=False).refit_model2vec
    r = CliRunner().invoke(cli, ["rebuild", str(index), "--manifest", manifest, "--workers", "1"])
    assert r.exit_code == 0 and f"fit it again (taskindex model2vec fit {index})" in r.output, r.output
