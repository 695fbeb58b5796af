"""CLI messages that used to mislead (issue 22, items 7 and 10): each is one true line, checked before any work."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from clikit import FAST_PROBE, assert_flag_wording, assert_user_error, make_image_folder

from taskindex import Embedding, TaskIndex
from taskindex.errors import IndexUsageError, TaskIndexError
from taskindex.cli import cli


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def index(tmp_path, tiny_probe):
    """Four task rows, two owned by 'me'."""
    path = tmp_path / "my.index"
    with TaskIndex.create(path, probe=tiny_probe) as idx:
        rng = np.random.default_rng(0)
        for i in range(4):
            fisher = rng.gamma(1.0, 1e-3, idx.dim).astype(np.float32)
            emb = Embedding(fisher + idx.prior, idx.prior, idx.layout, {**idx.space, "task": f"t{i}"})
            idx.add(f"t{i}", emb, metadata={"owner": ["me", "you"][i % 2]})
    return path


def _no_work(monkeypatch):
    """Opening an index is the first piece of work: a check that must come before it fails the test if it does not."""
    def opened(*args, **kwargs):
        raise AssertionError("the index was opened before the check")

    monkeypatch.setattr(TaskIndex, "open", opened)


def test_query_an_index_with_nothing_to_query_says_what_to_pass(runner, index):
    for command in ("query", "select"):
        line = assert_user_error(runner.invoke(cli, [command, str(index)]), f"nothing to {command} in {index}")
        assert "--name" in line and "--embedding" in line and "class folders" not in line


def test_index_and_data_swapped_advises_the_order_that_works(runner, index, tmp_path):
    data = make_image_folder(tmp_path / "pets")
    line = assert_user_error(runner.invoke(cli, ["query", str(data), str(index)]), "INDEX comes first")
    assert f"`taskindex query {index} {data}`" in line and "create" not in line
    result = runner.invoke(cli, ["query", str(index), str(data)])  # the advice, as given: no longer this error
    assert "INDEX comes first" not in result.output


def test_a_where_quoted_like_python_is_an_error_with_the_syntax(runner, index):
    ok = runner.invoke(cli, ["ls", str(index), "--where", "owner=me", "--json"])
    assert sorted(r["name"] for r in json.loads(ok.output)) == ["t0", "t2"]
    for clause in ("owner == 'me'", 'owner="me"', "owner in (me,you)", "owner=me and kind=task"):
        for args in (["ls", str(index)], ["query", str(index), "--name", "t1"]):
            line = assert_user_error(runner.invoke(cli, [*args, "--where", clause]), "cannot parse --where")
            assert "key=value" in line and "'key in a,b,c'" in line


def test_query_options_say_what_they_do():
    for command, options in (("query", ("-k", "--kind", "--metric", "--json")), ("select", ("-k", "--json")),
                             ("embed", ("--method", "--seed", "--skip-bad-images", "--json")),
                             ("samples", ("--dataset", "--json")), ("plot", ("--kind", "--rows", "--json"))):
        helps = {opt: param.help for param in cli.commands[command].params for opt in param.opts}
        for option in options:
            assert helps[option] and len(helps[option]) > 10, (command, option, helps[option])


def test_plot_checks_its_output_before_opening_the_index(runner, index, tmp_path, monkeypatch):
    _no_work(monkeypatch)
    line = assert_user_error(runner.invoke(cli, ["plot", str(index), "-o", str(tmp_path / "no" / "x.png")]),
                             "does not exist")
    assert str(tmp_path / "no") in line
    assert_user_error(runner.invoke(cli, ["plot", str(index), "-o", str(tmp_path / "x.txt")]),
                      "end the name with .png, .svg, .pdf")
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"")
    real = os.access
    monkeypatch.setattr("os.access", lambda p, mode, *a, **k: not (mode & os.W_OK and str(p) == str(taken)) and real(p, mode))
    assert_user_error(runner.invoke(cli, ["plot", str(index), "-o", str(taken)]), "permission denied")


def test_manifest_sources_are_read_relative_to_the_manifest_like_csv_image_paths(runner, tmp_path, monkeypatch):
    project = tmp_path / "project"
    make_image_folder(project / "pets")
    (project / "rows.csv").write_text("name,source\npets,pets\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = runner.invoke(cli, ["rebuild", str(tmp_path / "i.index"), "--manifest", str(project / "rows.csv"),
                                 "--workers", "1", *FAST_PROBE, "--json"])
    assert result.exit_code == 0, result.output
    with TaskIndex.open(tmp_path / "i.index", readonly=True) as idx:
        assert idx.to_pandas()["source"].tolist() == [str(project / "pets")]

    (project / "rows.csv").write_text("name,source\npets,pets\nnone,gone\n")
    line = assert_user_error(runner.invoke(cli, ["rebuild", str(tmp_path / "j.index"), "--manifest",
                                                 str(project / "rows.csv")]), "line 3: source: 'gone' does not exist")
    assert str(project / "gone") in line


def test_a_yaml_manifest_error_names_its_line(runner, tmp_path):
    manifest = tmp_path / "rows.yaml"
    manifest.write_text("rows:\n  - name: a\n    source: sample:digits-round\n  - name: b\n   source: x\n")
    line = assert_user_error(runner.invoke(cli, ["rebuild", str(tmp_path / "i.index"), "--manifest", str(manifest)]),
                             "is not valid YAML at line 5")
    assert str(manifest) in line and not (tmp_path / "i.index").exists()


def test_a_file_given_as_index_is_called_a_file_not_missing(runner, index, tmp_path):
    errors = tmp_path / "errors.csv"
    errors.write_text("task,model,error\n")
    for args in (["info", str(errors)], ["ls", str(errors)], ["query", str(errors), "--name", "t0"],
                 ["versions", str(errors)]):
        line = assert_flag_wording(runner.invoke(cli, args), f"'{errors}' is a file, not a taskindex index")
        assert "does not exist" not in line and f"taskindex create {errors}" not in line
    with pytest.raises(IndexUsageError, match="is a file, not a taskindex index"):
        TaskIndex.open(errors, readonly=True)


def test_a_folder_that_is_not_an_index_gets_advice_that_works(runner, index, tmp_path):
    data = make_image_folder(tmp_path / "pets")
    for args in (["ls", str(data)], ["info", str(data)], ["rm", str(data), "t0"]):
        line = assert_flag_wording(runner.invoke(cli, args), "is not a taskindex index")
        assert f"taskindex create {data}" not in line and "`taskindex create NEW_FOLDER`" in line
        assert "INDEX" in line  # it may be the other argument: the order is named
    assert_user_error(runner.invoke(cli, ["create", str(data)]), "already exists and is not empty")  # why not
    empty = tmp_path / "empty"
    empty.mkdir()  # here create is the fix, and it works
    assert f"`taskindex create {empty}`" in assert_user_error(runner.invoke(cli, ["info", str(empty)]),
                                                             "is not a taskindex index")
    assert runner.invoke(cli, ["create", str(empty), *FAST_PROBE]).exit_code == 0


def test_add_with_index_and_data_swapped_gives_the_order_that_works(runner, index, tmp_path):
    data = make_image_folder(tmp_path / "pets")
    line = assert_user_error(runner.invoke(cli, ["add", str(data), "pets", str(index)]), "INDEX comes first")
    assert f"`taskindex add {index} pets {data}`" in line and "create" not in line
    result = runner.invoke(cli, ["add", str(index), "pets", str(data)])  # the advice, as given: no longer this error
    assert "INDEX comes first" not in result.output


def test_a_plot_with_too_few_rows_names_the_options_of_its_caller(runner, index, tmp_path):
    from taskindex import plots

    line = assert_flag_wording(runner.invoke(cli, ["plot", str(index), "--rows", "model", "-o",
                                                   str(tmp_path / "x.png")]), "no rows to plot after the filter")
    assert "--where / --rows" in line and "--kind" not in line
    line = assert_user_error(runner.invoke(cli, ["plot", str(index), "--where", "owner=me", "--where", "name=t0",
                                                 "-o", str(tmp_path / "x.png")]), "one row ('t0')")
    assert "--rows all" in line
    with TaskIndex.open(index, readonly=True) as idx, pytest.raises(TaskIndexError) as caught:
        plots.plot_matrix(idx, kind="model")
    assert "where= / kind=" in str(caught.value) and "--" not in str(caught.value)


def test_index_options_say_what_they_do():
    for command, options in (("ls", ("--kind", "--where", "--json")), ("add", ("--kind", "--source", "--wait"))):
        helps = {opt: param.help for param in cli.commands[command].params for opt in param.opts}
        for option in options:
            assert helps[option] and len(helps[option]) > 10, (command, option, helps[option])


def test_compact_summary_counts_in_words(runner, index):
    out = runner.invoke(cli, ["compact", str(index), "--keep", "1"])
    assert out.exit_code == 0 and "kept version 6; removed versions 1-5 and " in out.output, out.output
    out = runner.invoke(cli, ["compact", str(index)])
    assert "kept versions 6-7; removed no version and 0 files no kept version uses" in out.output, out.output
