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
