"""Images that cannot be decoded: one pass names them all, or on_error='skip' embeds the rest and records them."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from clikit import FAST_PROBE, assert_user_error, make_image_folder
from PIL import Image

from taskindex import Task, embed, load_probe
from taskindex.cli import cli
from taskindex.errors import TaskError

BAD = ("dark/bad1.png", "light/bad2.png", "light/bad3.jpg")


@pytest.fixture(scope="module")
def probe():
    return load_probe("resnet18", weights=None, image_size=16)


@pytest.fixture
def folder(tmp_path):
    """Two classes of 6 readable images, and three corrupt files (empty, text, truncated PNG)."""
    root = make_image_folder(tmp_path / "data")
    png = (root / "dark" / "0.png").read_bytes()
    for name, content in zip(BAD, (b"", b"not an image at all", png[: len(png) // 3])):
        (root / name).write_bytes(content)
    return root


def _parquet(path, n=8, bad_rows=(3,)):
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), 5 * i, np.uint8)).save(buf, "PNG")
        images.append(b"\x00garbage" if i in bad_rows else buf.getvalue())
    pq.write_table(pa.table({"image": images, "label": [i % 2 for i in range(n)]}), path)
    return path


def test_the_error_names_every_bad_image_of_the_sample_in_one_pass(folder, probe):
    with pytest.raises(TaskError) as info:
        embed(Task.from_folder(folder), probe)
    message = str(info.value)
    for name in BAD:
        assert str(folder / name) in message, message
    assert "(3 of the 15 sampled)" in message and "on_error='skip'" in message
    assert "--skip-bad-images" in info.value.cli and "on_error" not in info.value.cli


def test_skip_embeds_the_readable_images_and_records_every_skipped_one(folder, probe):
    emb = embed(Task.from_folder(folder), probe, on_error="skip")
    assert emb.meta["n_samples"] == 12 and emb.meta["skipped_images"] == 3
    assert sorted(s["image"] for s in emb.meta["skipped_files"]) == sorted(str(folder / n) for n in BAD)
    assert all(s["error"] for s in emb.meta["skipped_files"])
    assert np.isfinite(emb.vector).all()


def test_skip_tops_the_sample_up_past_the_bad_images(folder, probe):
    """max_samples counts readable images: a bad one is replaced by the next in the balanced order."""
    emb = embed(Task.from_folder(folder), probe, on_error="skip", max_samples=12)
    assert emb.meta["n_samples"] == 12


def test_skip_changes_nothing_when_every_image_reads(tmp_path, probe):
    task = Task.from_folder(make_image_folder(tmp_path / "good"))
    a, b = embed(task, probe, max_samples=8), embed(task, probe, max_samples=8, on_error="skip")
    np.testing.assert_array_equal(a.vector, b.vector)
    assert b.meta["skipped_images"] == 0 and "skipped_images" not in a.meta


def test_garbage_bytes_in_parquet_name_the_row_never_a_python_repr(tmp_path, probe):
    path = _parquet(tmp_path / "t.parquet", bad_rows=(3, 6))
    with pytest.raises(TaskError) as info:
        embed(Task.from_parquet(path), probe)
    message = str(info.value)
    assert f"row 3 of {path}" in message and f"row 6 of {path}" in message, message
    assert "object at 0x" not in message and "BytesIO" not in message
    emb = embed(Task.from_parquet(path), probe, on_error="skip")
    assert [s["image"] for s in emb.meta["skipped_files"]] == [f"row 3 of {path}", f"row 6 of {path}"]


def test_many_bad_images_are_named_up_to_a_limit_then_counted(tmp_path, probe):
    path = _parquet(tmp_path / "many.parquet", n=40, bad_rows=range(4, 29))
    with pytest.raises(TaskError) as info:
        embed(Task.from_parquet(path), probe)
    message = str(info.value)
    assert "(25 of the 40 sampled)" in message and "and 5 more" in message
    assert message.count(f"of {path}") == 20


def test_only_bad_images_left_is_one_clear_error(tmp_path, probe):
    path = _parquet(tmp_path / "worse.parquet", n=6, bad_rows=(0, 2, 4))  # every class-0 image
    with pytest.raises(TaskError, match="after skipping 3 unreadable images"):
        embed(Task.from_parquet(path), probe, on_error="skip")


def test_cli_names_every_bad_file_or_skips_and_lists_them(folder, tmp_path):
    runner = CliRunner()
    args = ["embed", str(folder), "-o", str(tmp_path / "x.emb"), *FAST_PROBE]
    line = assert_user_error(runner.invoke(cli, args), "(3 of the 15 sampled)")
    assert all(str(folder / name) in line for name in BAD) and "--skip-bad-images" in line
    assert not (tmp_path / "x.emb").exists()

    result = runner.invoke(cli, [*args, "--skip-bad-images", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["skipped_images"] == 3 and report["n_samples"] == 12
    assert sorted(s["image"] for s in report["skipped_files"]) == sorted(str(folder / n) for n in BAD)

    text = runner.invoke(cli, [*args, "--skip-bad-images"]).output
    assert "skipped 3 unreadable images" in text and all(str(folder / n) in text for n in BAD)


TINY = dict(probe="resnet18", weights=None, image_size=16)


@pytest.fixture
def index(tmp_path):
    """A tiny index holding one task row and one model row trained on it, so that query and select both answer."""
    from taskindex import TaskIndex

    path = tmp_path / "idx"
    with TaskIndex.create(path, **TINY) as idx:
        idx.add("good", idx.embed(make_image_folder(tmp_path / "good"), progress=False))
        idx.add_model("expert", "good")
    return path


def test_task_index_embed_names_every_bad_image_or_skips_them(index, folder):
    from taskindex import TaskIndex
    from taskindex.errors import TaskIndexError

    with TaskIndex.open(index, readonly=True) as idx:
        with pytest.raises(TaskError, match=r"\(3 of the 15 sampled\)") as info:
            idx.embed(folder, progress=False)
        assert all(str(folder / name) in str(info.value) for name in BAD) and "on_error='skip'" in str(info.value)
        emb = idx.embed(folder, progress=False, on_error="skip")
        assert emb.meta["skipped_images"] == 3 and emb.meta["n_samples"] == 12
        assert sorted(s["image"] for s in emb.meta["skipped_files"]) == sorted(str(folder / n) for n in BAD)
        with pytest.raises(TaskIndexError, match="on_error"):  # checked before the missing folder is read
            idx.embed(folder / "missing", on_error="ignore")


def test_cli_add_names_every_bad_file_or_skips_and_records_them(index, folder):
    from taskindex import TaskIndex

    runner, args = CliRunner(), ["add", str(index), "bad", str(folder)]
    line = assert_user_error(runner.invoke(cli, args), "(3 of the 15 sampled)")
    assert all(str(folder / n) in line for n in BAD) and "pass --skip-bad-images" in line and "on_error" not in line
    result = runner.invoke(cli, [*args, "--skip-bad-images", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["skipped_images"] == 3 and len(report["skipped_files"]) == 3
    with TaskIndex.open(index, readonly=True) as idx:
        assert idx.get("bad")[0].meta["skipped_images"] == 3  # recorded with the row
    text = runner.invoke(cli, [*args[:2], "bad2", str(folder), "--skip-bad-images"]).output
    assert "skipped 3 unreadable images" in text and all(str(folder / n) in text for n in BAD), text


@pytest.mark.parametrize("command", ["query", "select"])
def test_cli_query_and_select_name_every_bad_file_or_skip_them(index, folder, command):
    runner, args = CliRunner(), [command, str(index), str(folder)]
    line = assert_user_error(runner.invoke(cli, args), "(3 of the 15 sampled)")
    assert all(str(folder / n) in line for n in BAD) and "pass --skip-bad-images" in line and "on_error" not in line
    result = runner.invoke(cli, [*args, "--skip-bad-images", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["skipped_images"] == 3 and report["hits"], report
    assert sorted(s["image"] for s in report["skipped_files"]) == sorted(str(folder / n) for n in BAD)
    text = runner.invoke(cli, [*args, "--skip-bad-images"]).output
    assert "skipped 3 unreadable images" in text and all(str(folder / n) in text for n in BAD), text
    plain = runner.invoke(cli, [command, str(index), "--name", "good", "--skip-bad-images", "--json"])
    assert plain.exit_code == 0 and "skipped_images" not in json.loads(plain.output)


def _manifest(tmp_path, folder, extra=()) -> str:
    rows = [{"name": "round", "source": "sample:digits-round", "per_class": 4}, {"name": "bad", "source": str(folder)},
            *extra]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    text = "\n".join([",".join(keys)] + [",".join(str(r.get(k, "")) for k in keys) for r in rows]) + "\n"
    (tmp_path / "m.csv").write_text(text)
    return str(tmp_path / "m.csv")


def test_cli_rebuild_fails_the_bad_row_naming_its_files_or_skips_them_on_every_row(tmp_path, folder):
    from taskindex import TaskIndex

    runner, index = CliRunner(), tmp_path / "rebuilt"
    args = ["rebuild", str(index), "--manifest", _manifest(tmp_path, folder), *FAST_PROBE, "--workers", "1"]
    result = runner.invoke(cli, [*args, "--json"])
    assert result.exit_code == 1, result.output
    [failed] = json.loads(result.output)["failed"]
    assert failed["name"] == "bad" and "(3 of the 15 sampled)" in failed["reason"]
    assert all(str(folder / n) in failed["reason"] for n in BAD)
    assert "pass --skip-bad-images" in failed["reason"] and "on_error" not in failed["reason"]
    result = runner.invoke(cli, [*args, "--resume", "--skip-bad-images", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["committed"] and report["reused"] == 1 and report["failed"] == []
    assert [(s["name"], s["line"], s["skipped_images"]) for s in report["skipped"]] == [("bad", 3, 3)]
    assert sorted(f["image"] for f in report["skipped"][0]["skipped_files"]) == sorted(str(folder / n) for n in BAD)
    with TaskIndex.open(index, readonly=True) as idx:
        assert idx.get("bad")[0].meta["skipped_images"] == 3
    text = runner.invoke(cli, [*args, "--skip-bad-images"]).output
    assert "skipped 3 unreadable images of bad (manifest line 3): " in text, text
    assert all(str(folder / n) in text for n in BAD)


def test_rebuild_reports_skips_of_rows_staged_by_an_earlier_run(tmp_path, folder):
    """A run that ends with a failed row stages the row that skipped images; the run that commits it says so."""
    from taskindex.errors import TaskIndexError
    from taskindex.rebuilds.run import rebuild

    with pytest.raises(TaskIndexError, match="on_error"):
        rebuild(tmp_path / "never", _manifest(tmp_path, folder), on_error="ignore", **TINY)
    assert not (tmp_path / "never").exists()
    one_class = make_image_folder(tmp_path / "one", classes=("only",))
    manifest = _manifest(tmp_path, folder, [{"name": "one-class", "source": str(one_class)}])
    first = rebuild(tmp_path / "idx", manifest, workers=1, progress=False, on_error="skip", **TINY)
    assert not first.committed and [f["name"] for f in first.failed] == ["one-class"]
    assert [(s["name"], s["skipped_images"]) for s in first.skipped] == [("bad", 3)]
    second = rebuild(tmp_path / "idx", manifest, workers=1, progress=False, allow_failures=True)
    assert second.committed and second.reused == 2 and second.embedded == 0
    assert [(s["name"], s["skipped_images"]) for s in second.skipped] == [("bad", 3)]
