"""The CLI mirrors the API: results as text or --json, user errors as one line and exit status 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from clikit import FAST_PROBE, PYTHON_WORDING, assert_flag_wording, assert_user_error, make_image_folder

from taskindex import Embedding
from taskindex.cli import cli


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def image_folder(tmp_path):
    return make_image_folder(tmp_path / "data")


def embed_args(data, out, *extra):
    return ["embed", str(data), "-o", str(out), *FAST_PROBE, "--max-samples", "12", *extra]


def test_embed_then_distance_as_text_and_json(runner, image_folder, tmp_path):
    a, b = tmp_path / "a.emb", tmp_path / "b.emb"
    r = runner.invoke(cli, embed_args(image_folder, a, "--json"))
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["dim"] == 4800 and info["n_samples"] == 12 and info["weights"] == "random"
    r = runner.invoke(cli, embed_args(image_folder, b, "--seed", "1"))
    assert r.exit_code == 0 and "4800 filters" in r.output
    r = runner.invoke(cli, ["distance", str(a), str(b), "--json"])
    out = json.loads(r.output)
    from taskindex import d_asym, d_sym

    ea, eb = Embedding.load(a), Embedding.load(b)
    assert out["distance"] == pytest.approx(d_sym(ea, eb))
    r = runner.invoke(cli, ["distance", str(a), str(b), "--metric", "asym"])
    assert float(r.output) == pytest.approx(d_asym(ea, eb), abs=1e-6)


def test_embed_defaults_are_the_python_apis(runner, image_folder, tmp_path):
    """The CLI mirrors embed(): with no options it writes the vector Python's defaults give."""
    from taskindex import Task, embed, load_probe

    probe = load_probe("resnet18", weights=None, image_size=16)
    task = Task.from_folder(image_folder)
    for extra, kwargs in (((), {}), (("--label-passes", "all"), {"label_passes": None}),
                          (("--label-passes", "1", "--estimator", "mean"), {"label_passes": 1, "estimator": "mean"})):
        out = tmp_path / "d.emb"
        r = runner.invoke(cli, embed_args(image_folder, out, *extra))
        assert r.exit_code == 0, r.output
        ours = embed(task, probe, max_samples=12, progress=False, **kwargs)
        cli_emb = Embedding.load(out)
        assert cli_emb.meta["label_passes"] == ours.meta["label_passes"]
        assert cli_emb.meta["estimator"] == ours.meta["estimator"]
        assert np.array_equal(cli_emb.vector, ours.vector)
    assert_user_error(runner.invoke(cli, embed_args(image_folder, out, "--label-passes", "0")),
                      "--label-passes '0' is not a count of label directions: give a whole number >= 1, or 'all'")


def test_listing_probes_and_samples(runner):
    r = runner.invoke(cli, ["probes", "--json"])
    assert {p["name"] for p in json.loads(r.output)} >= {"efficientnet_lite0", "resnet34"}
    r = runner.invoke(cli, ["samples", "--dataset", "digits"])
    assert r.exit_code == 0 and "digits-round" in r.output and "fashion" not in r.output


def test_bad_inputs_exit_2_with_one_line(runner, image_folder, tmp_path):
    out = tmp_path / "x.emb"
    assert_user_error(runner.invoke(cli, embed_args(tmp_path / "nowhere", out)), "does not exist")
    r = runner.invoke(cli, ["embed", str(image_folder), "-o", str(out), "--probe", "resnet43"])
    assert_user_error(r, "unknown probe 'resnet43'")
    make_image_folder(tmp_path / "mono", classes=("only",), per_class=1)
    assert_user_error(runner.invoke(cli, embed_args(tmp_path / "mono", out)), "only one class")
    (image_folder / "dark" / "broken.png").write_bytes(b"this is not a png")
    assert_user_error(runner.invoke(cli, embed_args(image_folder, out)), "broken.png")
    empty = tmp_path / "empty" / "cls"
    empty.mkdir(parents=True)
    assert_user_error(runner.invoke(cli, embed_args(tmp_path / "empty", out)), "no images")
    weights = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    r = runner.invoke(cli, ["embed", str(image_folder), "-o", str(out), "--probe", "resnet34",
                            "--weights", str(weights)])
    assert_user_error(r, "does not fit probe 'resnet34'")
    assert not out.exists()  # nothing half-written


def test_distance_refuses_non_embeddings_and_mixed_probes(runner, image_folder, tmp_path):
    junk = tmp_path / "junk.emb"
    junk.write_text("hello")
    a = tmp_path / "a.emb"
    runner.invoke(cli, embed_args(image_folder, a))
    assert_user_error(runner.invoke(cli, ["distance", str(a), str(junk)]), "not a taskindex embedding")
    b = tmp_path / "b.emb"
    r = runner.invoke(cli, ["embed", str(image_folder), "-o", str(b), "--probe", "resnet18", "--weights", "random",
                            "--image-size", "24", "--max-samples", "12"])
    assert r.exit_code == 0, r.output
    assert_user_error(runner.invoke(cli, ["distance", str(a), str(b)]), "different spaces")


def _literal_text(node) -> str:
    """The literal parts of a message expression (f-string pieces, constants, concatenations)."""
    import ast

    return "".join(n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str))


def test_every_library_error_worded_in_python_carries_its_cli_wording():
    """A library message that tells a Python user what to pass (device='cpu', TaskIndex.open, upsert) must carry
    `cli=`, its command-line wording, free of Python spellings; the CLI prints that one."""
    import ast
    from pathlib import Path

    import taskindex

    # messages only a Python caller can get (the CLI passes types, opens writers writable, has no such flag)
    python_only = ("expected a taskindex.Embedding", "must be a taskindex.", "pass prior=", "labels must be",
                   "is open read-only", "only=True with no rows", "pass device=None")
    worded, missing = 0, []
    for path in Path(taskindex.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args):
                continue
            python = _literal_text(node.exc.args[0])
            if not PYTHON_WORDING.search(python) or any(p in python for p in python_only):
                continue
            worded += 1
            cli_kw = [k.value for k in node.exc.keywords if k.arg == "cli"]
            if not cli_kw or PYTHON_WORDING.search(_literal_text(cli_kw[0])):
                missing.append(f"{path.name}:{node.lineno}")
    assert worded >= 12, worded  # the check sees the messages it guards
    assert not missing, f"raise with Python wording and no clean cli= wording: {missing}"


def test_embed_errors_speak_in_flags(runner, image_folder, tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "x.emb"
    line = assert_flag_wording(runner.invoke(cli, ["embed", str(image_folder), "-o", str(out), "--probe", "resnet43"]),
                               "unknown probe 'resnet43'")
    assert "`taskindex probes` lists them" in line
    r = runner.invoke(cli, ["embed", str(image_folder), "-o", str(out), "--weights", str(tmp_path / "none.pt")])
    assert "--weights imagenet, --weights random" in assert_flag_wording(r, "does not exist")
    r = runner.invoke(cli, ["embed", "sample:digits-roundd", "-o", str(out)])
    assert "`taskindex samples` lists all" in assert_flag_wording(r, "did you mean 'digits-round'")
    if not torch.cuda.is_available():
        r = runner.invoke(cli, embed_args(image_folder, out, "--device", "cuda"))
        assert_flag_wording(r, "CUDA is not available here: use --device cpu")

    pngs = sorted(image_folder.rglob("*.png"))
    pq.write_table(pa.table({"img": [str(p) for p in pngs], "digit": [p.parent.name for p in pngs]}),
                   tmp_path / "t.parquet")
    r = runner.invoke(cli, embed_args(tmp_path / "t.parquet", out))
    assert_flag_wording(r, "column 'image' not found")
    assert "pass --image-column/--label-column" in r.output
    r = runner.invoke(cli, embed_args(tmp_path / "t.parquet", out, "--image-column", "img", "--label-column", "digit"))
    assert r.exit_code == 0, r.output
    for labels, bad in (([0.0, 1.0] * 6, "0.0"), ([0, 1, -1, 0] * 3, "-1")):  # the fix is in the file, not in Python
        pq.write_table(pa.table({"image": [str(p) for p in pngs], "label": labels}), tmp_path / "n.parquet")
        line = assert_flag_wording(runner.invoke(cli, embed_args(tmp_path / "n.parquet", out)), f"(e.g. {bad})")
        assert "labels that are not class ids 0..K-1" in line and "store class ids 0..K-1, or class names as text" in line
    with open(tmp_path / "t.csv", "w") as f:  # text labels that are not ids are class names
        f.write("image,label\n" + "".join(f"{p},{-1 if p.parent.name == 'dark' else 1}\n" for p in pngs))
    r = runner.invoke(cli, embed_args(tmp_path / "t.csv", out, "--json"))
    assert r.exit_code == 0 and json.loads(r.output)["n_classes"] == 2, r.output

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.models, "resnet18", offline)
    r = runner.invoke(cli, ["embed", str(image_folder), "-o", str(out), "--probe", "resnet18"])
    assert "--weights FILE" in assert_flag_wording(r, "could not download ImageNet weights for resnet18")


def _commands(group, path=("taskindex",)):
    """Every command with the words that call it, groups included: (("taskindex", "model2vec", "fit"), command)."""
    import click

    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


def _example_lines(help_text: str) -> list[str]:
    """The lines of the Example block of a --help page (up to the Options), or [] if it has none."""
    if "\n  Example:\n" not in help_text:
        return []
    block = help_text.split("\n  Example:\n", 1)[1].split("\nOptions:", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_every_commands_help_has_an_example_block_of_lines_that_parse(runner):
    """Each --help shows an Example block (sqlite-utils' way): one command a line, kept as written (not re-wrapped
    into a paragraph), with at least one line of the command itself, and every line's flags parse."""
    import shlex

    import click

    commands = [(("taskindex",), cli), *_commands(cli)]
    assert len(commands) == 27  # the group, 21 commands, model2vec and results with two commands each
    for words, command in commands:
        r = runner.invoke(cli, [*words[1:], "--help"])
        assert r.exit_code == 0, r.output
        lines = _example_lines(r.output)
        assert lines, f"{' '.join(words)} --help has no Example block"
        assert any(line.startswith(" ".join(words) + " ") for line in lines), lines
        for line in lines:
            tokens = shlex.split(line)
            assert tokens[0] == "taskindex" and tokens.count("taskindex") == 1, line  # one command, not re-wrapped
            name, target, rest = "taskindex", cli, tokens[1:]
            while isinstance(target, click.Group):
                name, rest = rest[0], rest[1:]
                target = target.commands[name]
            with target.make_context(name, rest):
                pass  # a UsageError here is a flag or argument the command does not take


def test_ctrl_c_is_exit_130_with_the_commands_own_line(runner, monkeypatch, tmp_path):
    import taskindex.rebuilds.run
    from taskindex.index import TaskIndex

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(TaskIndex, "open", interrupt)
    r = runner.invoke(cli, ["ls", str(tmp_path / "idx")])
    assert r.exit_code == 130 and r.output == "Interrupted: nothing was written.\n", r.output
    monkeypatch.setattr(taskindex.rebuilds.run, "rebuild", interrupt)
    r = runner.invoke(cli, ["rebuild", str(tmp_path / "idx"), "--manifest", "rows.csv"])
    assert r.exit_code == 130, r.output
    assert r.output == (f"Interrupted: {tmp_path / 'idx'} is unchanged; `--resume` goes on from the rows already "
                        "embedded.\n")


def test_embed_refuses_an_output_it_could_not_write_before_any_work(runner, tmp_path):
    """The output is checked first: with bad data and a bad -o, the -o is what the user hears about."""
    missing = tmp_path / "missing" / "x.emb"
    message = assert_user_error(runner.invoke(cli, ["embed", str(tmp_path / "no-data"), "-o", str(missing)]),
                                "does not exist")
    assert "missing" in message and "create it first" in message
