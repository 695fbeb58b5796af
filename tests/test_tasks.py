"""Task: every source yields the same pixels and labels, and every bad input fails with a useful line."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from taskindex.errors import TaskError
from taskindex.data.task import Task, balanced_order

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (8, 8), dtype=np.uint8)
RGBA = RNG.integers(0, 256, (8, 8, 4), dtype=np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def as_chw(pixels: np.ndarray) -> torch.Tensor:
    """What load() must return at native size: RGB, grayscale replicated, alpha dropped."""
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(pixels[..., :3])).permute(2, 0, 1)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "pets"
    (root / "cat").mkdir(parents=True)
    (root / "dog" / "more").mkdir(parents=True)
    (root / ".cache").mkdir()
    Image.fromarray(RGB).save(root / "cat" / "a.png")
    Image.fromarray(GRAY).save(root / "cat" / "b.PNG")
    Image.fromarray(RGBA).save(root / "dog" / "c.png")
    Image.fromarray(RGB).save(root / "dog" / "more" / "d.bmp")
    Image.fromarray(RGB).save(root / ".cache" / "skip.png")
    (root / "dog" / ".hidden.png").write_bytes(b"not an image")
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


# ---- from_arrays ---------------------------------------------------------------------------------


def test_from_arrays_grayscale_nhw_keeps_pixels_and_replicates_channels():
    images = RNG.integers(0, 256, (5, 8, 8), dtype=np.uint8)
    task = Task.from_arrays(images, [0, 1, 0, 1, 2])
    out = task.load([4, 0], 8)
    assert out.shape == (2, 3, 8, 8) and out.dtype == torch.uint8
    assert torch.equal(out[0], as_chw(images[4]))
    assert torch.equal(out[1], as_chw(images[0]))
    assert task.classes == ["0", "1", "2"] and task.n_classes == 3 and len(task) == 5
    assert task.labels.dtype == np.int64 and task.source == "arrays"


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_from_arrays_nhwc(channels: int):
    images = RNG.integers(0, 256, (3, 8, 8, channels), dtype=np.uint8)
    out = Task.from_arrays(images, [0, 1, 1]).load([0, 1, 2], 8)
    expected = torch.stack([as_chw(im[..., 0] if channels == 1 else im) for im in images])
    assert torch.equal(out, expected)


@pytest.mark.parametrize("channels", [1, 3])
def test_from_arrays_nchw_torch_tensor(channels: int):
    images = torch.randint(0, 256, (3, channels, 8, 8), dtype=torch.uint8)
    out = Task.from_arrays(images, torch.tensor([0, 1, 1])).load([0, 1, 2], 8)
    assert torch.equal(out, images.expand(-1, 3, -1, -1))


def test_from_arrays_float_in_unit_range_maps_to_0_255():
    images = np.array([[[0.0, 0.5], [1.0, 0.25]]], dtype=np.float32)
    out = Task.from_arrays(images, [0]).load([0], 2)
    assert out[0, 0].tolist() == [[0, 128], [255, 64]]


def test_from_arrays_accepts_small_ints_and_bool_labels():
    images = np.full((2, 4, 4), 200, dtype=np.int64)
    task = Task.from_arrays(images, np.array([True, False]))
    assert task.labels.tolist() == [1, 0]
    assert int(task.load([0], 4).min()) == 200


def test_resize_is_torchvision_resize_on_uint8():
    images = torch.randint(0, 256, (4, 3, 30, 20), dtype=torch.uint8)
    out = Task.from_arrays(images, [0, 1, 0, 1]).load([0, 1, 2, 3], 13)
    expected = v2.Resize((13, 13), antialias=True)(images)
    assert out.shape == (4, 3, 13, 13)
    assert (out.int() - expected.int()).abs().max() <= 1


def test_resize_of_a_constant_image_is_constant():
    out = Task.from_arrays(np.full((1, 7, 11), 77, dtype=np.uint8), [0]).load([0], 32)
    assert out.unique().tolist() == [77]


def test_arrays_and_files_go_through_the_same_resize(tmp_path: Path):
    Image.fromarray(RGB).save(tmp_path / "x.png")
    with open(tmp_path / "t.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "label"], ["x.png", 0]])
    from_file = Task.from_csv(tmp_path / "t.csv").load([0], 5)
    from_array = Task.from_arrays(RGB[None], [0]).load([0], 5)
    assert torch.equal(from_file, from_array)


def test_classes_names_and_one_class_task_is_allowed():
    task = Task.from_arrays(np.zeros((3, 4, 4), np.uint8), [0, 0, 0], classes=["only"], name="one")
    assert task.n_classes == 1 and task.classes == ["only"] and task.name == "one"
    task = Task.from_arrays(np.zeros((3, 4, 4), np.uint8), [0, 2, 2])
    assert task.classes == ["0", "1", "2"] and task.n_classes == 2


def test_labels_are_read_only_and_repr_says_what_the_task_is():
    task = Task.from_arrays(np.zeros((3, 4, 4), np.uint8), [0, 1, 1], name="toy")
    with pytest.raises(ValueError):
        task.labels[0] = 1
    assert repr(task) == "Task(name='toy', n=3, n_classes=2, source='arrays')"


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (np.zeros((0, 4, 4), np.uint8), [], "the task has no images"),
        (np.zeros((3, 4, 4), np.uint8), [0, 1], "got 3 images but 2 labels"),
        (np.zeros((3, 4, 4), np.uint8), [0.0, 1.0, 1.0], "labels.astype(np.int64)"),
        (np.zeros((3, 4, 4), np.uint8), [0.5, 1.0, 1.0], "map each class to an id"),
        (np.zeros((3, 4, 4), np.uint8), ["cat", "dog", "cat"], "np.unique(names, return_inverse=True)"),
        (np.zeros((6, 4, 4), np.uint8), [0, 1, 2, 0, 1, -3], "got -3 at position 5"),
        (np.zeros((2, 4, 4), np.uint8), [[0], [1]], "1-D sequence"),
        (np.zeros((2, 5, 6, 6), np.uint8), [0, 1], "is not (N, H, W)"),
        (np.zeros((2, 4, 4), np.int32) + 300, [0, 1], "got range [300, 300]"),
        (np.full((2, 4, 4), 255.0), [0, 1], "got range [255, 255]. Divide"),
        (np.full((2, 4, 4), -0.5), [0, 1], "got range [-0.5, -0.5]"),
        (np.array([np.zeros((4, 4)), np.full((4, 4), np.nan)]), [0, 1], "NaN or inf pixels (first in image 1)"),
        (np.array([np.full((4, 4), np.inf), np.zeros((4, 4))]), [0, 1], "NaN or inf pixels (first in image 0)"),
        (np.zeros((2, 4, 4), object), [0, 1], "dtype object is not a pixel type"),
    ],
)
def test_from_arrays_rejects_bad_input_with_one_line(images, labels, message):
    with pytest.raises(TaskError) as err:
        Task.from_arrays(images, labels)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_classes_must_cover_labels_and_be_unique():
    with pytest.raises(TaskError, match="classes has 2 names but labels go up to 2"):
        Task.from_arrays(np.zeros((3, 4, 4), np.uint8), [0, 1, 2], classes=["a", "b"])
    with pytest.raises(TaskError, match="'a' appears more than once"):
        Task.from_arrays(np.zeros((2, 4, 4), np.uint8), [0, 1], classes=["a", "a"])


def test_load_rejects_bad_indices_and_size():
    task = Task.from_arrays(np.zeros((3, 4, 4), np.uint8), [0, 1, 1])
    with pytest.raises(TaskError, match="indices must be in 0..2; got 3 at position 1"):
        task.load([0, 3], 4)
    with pytest.raises(TaskError, match="size must be a positive integer; got 0"):
        task.load([0], 0)
    assert task.load([], 4).shape == (0, 3, 4, 4)


# ---- balanced_indices and subset --------------------------------------------------------------


def unbalanced_task() -> Task:
    labels = np.repeat([0, 1, 2], [50, 10, 5])
    return Task.from_arrays(np.zeros((65, 2, 2), np.uint8), labels)


def test_balanced_indices_give_each_class_its_fair_share():
    task = unbalanced_task()
    idx = task.balanced_indices(30, seed=0)
    assert len(idx) == 30 and len(set(idx.tolist())) == 30
    assert np.bincount(task.labels[idx]).tolist() == [15, 10, 5]
    assert sorted(task.labels[idx[:3]].tolist()) == [0, 1, 2]  # class-interleaved, not grouped
    assert np.bincount(task.labels[task.balanced_indices(6, seed=3)]).tolist() == [2, 2, 2]


def test_balanced_indices_are_deterministic_per_seed_and_cover_all_for_none():
    task = unbalanced_task()
    assert np.array_equal(task.balanced_indices(20, 7), task.balanced_indices(20, 7))
    assert not np.array_equal(task.balanced_indices(20, 7), task.balanced_indices(20, 8))
    everything = task.balanced_indices(None, 0)
    assert sorted(everything.tolist()) == list(range(65))
    assert len(task.balanced_indices(1000, 0)) == 65
    with pytest.raises(TaskError, match="max_samples must be a positive integer; got 0"):
        task.balanced_indices(0, 0)


def test_balanced_order_of_a_prefix_is_balanced_at_every_length():
    labels = np.repeat([3, 7], [40, 40])
    order = balanced_order(labels, None, np.random.default_rng(1))
    for k in range(2, 80, 2):
        assert np.sum(labels[order[:k]] == 3) == k // 2


def test_subset_keeps_classes_and_maps_rows():
    images = RNG.integers(0, 256, (6, 4, 4), dtype=np.uint8)
    task = Task.from_arrays(images, [0, 1, 2, 0, 1, 2], classes=["a", "b", "c"], name="full")
    sub = task.subset([5, 1, 4])
    assert sub.labels.tolist() == [2, 1, 1] and sub.classes == ["a", "b", "c"] and sub.n_classes == 2
    assert sub.name == "full" and task.subset([0], name="one").name == "one"
    subsub = sub.subset([2, 0])
    assert torch.equal(subsub.load([0, 1], 4), task.load([4, 5], 4))
    assert torch.equal(task.subset(task.labels == 0).load([0, 1], 4), task.load([0, 3], 4))
    with pytest.raises(TaskError, match="the task has no images"):
        task.subset([])


# ---- from_folder ------------------------------------------------------------------------------


def test_from_folder_reads_classes_in_sorted_order(folder: Path):
    task = Task.from_folder(folder)
    assert task.classes == ["cat", "dog"]
    assert task.labels.tolist() == [0, 0, 1, 1]
    assert task.name == "pets" and task.source == str(folder)
    out = task.load([0, 1, 2, 3], 8)
    assert torch.equal(out[0], as_chw(RGB))
    assert torch.equal(out[1], as_chw(GRAY))  # grayscale replicated
    assert torch.equal(out[2], as_chw(RGBA))  # alpha dropped, like PIL convert('RGB')
    assert torch.equal(out[3], as_chw(RGB))  # nested folder, .bmp
    assert task.load([2], 3).shape == (1, 3, 3, 3)


def test_from_folder_corrupt_image_names_the_file(folder: Path):
    (folder / "dog" / "x.png").write_bytes(b"\x89PNG garbage garbage")
    task = Task.from_folder(folder, name="broken")
    assert len(task) == 5 and task.name == "broken"
    task.load([0, 1], 8)  # the good files still load
    with pytest.raises(TaskError) as err:
        task.load([4], 8)
    assert f"cannot read image {folder / 'dog' / 'x.png'}:" in str(err.value)


def test_from_folder_errors(tmp_path: Path):
    with pytest.raises(TaskError, match="is not a folder"):
        Task.from_folder(tmp_path / "missing")
    Image.fromarray(RGB).save(tmp_path / "loose.png")
    with pytest.raises(TaskError, match="no class sub-folders in"):
        Task.from_folder(tmp_path)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "readme.txt").write_text("x")
    with pytest.raises(TaskError, match="the task has no images"):
        Task.from_folder(tmp_path)


# ---- from_parquet / from_csv ------------------------------------------------------------------


def write_images(folder: Path) -> list[str]:
    (folder / "img").mkdir()
    Image.fromarray(RGB).save(folder / "img" / "rgb.png")
    Image.fromarray(GRAY).save(folder / "img" / "gray.png")
    Image.fromarray(RGBA).save(folder / "img" / "rgba.png")
    return ["img/rgb.png", "img/gray.png", "img/rgba.png"]


def test_from_parquet_with_relative_paths_and_string_labels(tmp_path: Path):
    paths = write_images(tmp_path)
    pq.write_table(pa.table({"file": paths, "species": ["dog", "cat", "dog"]}), tmp_path / "pets.parquet")
    task = Task.from_parquet(tmp_path / "pets.parquet", image_column="file", label_column="species")
    assert task.classes == ["cat", "dog"] and task.labels.tolist() == [1, 0, 1]
    assert task.name == "pets" and task.source == str(tmp_path / "pets.parquet")
    out = task.load([0, 1, 2], 8)
    assert torch.equal(out, torch.stack([as_chw(RGB), as_chw(GRAY), as_chw(RGBA)]))


def test_from_parquet_with_raw_bytes_and_int_labels(tmp_path: Path):
    table = pa.table({"image": [png_bytes(GRAY), png_bytes(RGB)], "label": pa.array([3, 0], pa.int32())})
    pq.write_table(table, tmp_path / "b.parquet")
    task = Task.from_parquet(tmp_path / "b.parquet")
    assert task.labels.tolist() == [3, 0] and task.classes == ["0", "1", "2", "3"] and task.n_classes == 2
    assert torch.equal(task.load([1, 0], 8), torch.stack([as_chw(RGB), as_chw(GRAY)]))


def test_from_parquet_hugging_face_struct_and_class_names(tmp_path: Path):
    write_images(tmp_path)
    images = pa.array(
        [{"bytes": png_bytes(RGB), "path": "ignored.png"}, {"bytes": None, "path": "img/gray.png"}],
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    features = {"image": {"_type": "Image"}, "label": {"names": ["airplane", "bird"], "_type": "ClassLabel"}}
    metadata = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    table = pa.table({"image": images, "label": [1, 0]}).replace_schema_metadata(metadata)
    pq.write_table(table, tmp_path / "hf.parquet")
    task = Task.from_parquet(tmp_path / "hf.parquet")
    assert task.classes == ["airplane", "bird"] and task.labels.tolist() == [1, 0]
    assert torch.equal(task.load([0, 1], 8), torch.stack([as_chw(RGB), as_chw(GRAY)]))


def test_from_parquet_errors(tmp_path: Path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"img": [png_bytes(RGB)], "y": [0]}), path)
    with pytest.raises(TaskError, match=r"column 'image' not found in .*t.parquet; available columns: img, y"):
        Task.from_parquet(path)
    with pytest.raises(TaskError, match="column 'label' not found"):
        Task.from_parquet(path, image_column="img")
    pq.write_table(pa.table({"image": [png_bytes(RGB), b"garbage"], "label": [0, 1]}), path)
    with pytest.raises(TaskError, match=r"cannot read image row 1 of .*t.parquet"):
        Task.from_parquet(path).load([1], 8)
    pq.write_table(pa.table({"image": [png_bytes(RGB)], "label": [0.5]}), path)
    with pytest.raises(TaskError, match=r"column 'label' of .*t.parquet has float64 labels that are not class ids "
                                        r"0..K-1 \(e.g. 0.5\): store class ids"):
        Task.from_parquet(path)
    pq.write_table(pa.table({"image": [1, 2], "label": [0, 1]}), path)
    with pytest.raises(TaskError, match="has type int64; it must hold image file paths"):
        Task.from_parquet(path)
    pq.write_table(pa.table({"image": [png_bytes(RGB), None], "label": [0, 1]}), path)
    with pytest.raises(TaskError, match="column 'image' is empty at row 1"):
        Task.from_parquet(path)
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(TaskError, match="cannot read Parquet file"):
        Task.from_parquet(tmp_path / "bad.parquet")


def test_from_csv_with_relative_paths(tmp_path: Path):
    paths = write_images(tmp_path)
    (tmp_path / "sub").mkdir()
    with open(tmp_path / "sub" / "t.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "y"], *[["../" + p, y] for p, y in zip(paths, [2, 0, 2])]])
    task = Task.from_csv(tmp_path / "sub" / "t.csv", image_column="path", label_column="y")
    assert task.labels.tolist() == [2, 0, 2] and task.classes == ["0", "1", "2"] and task.name == "t"
    assert torch.equal(task.load([1], 8)[0], as_chw(GRAY))


def test_from_csv_string_labels_and_errors(tmp_path: Path):
    paths = write_images(tmp_path)
    path = tmp_path / "t.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["image", "label"], *[[p, c] for p, c in zip(paths, ["b", "a", "b"])]])
    assert Task.from_csv(path).labels.tolist() == [1, 0, 1]
    with pytest.raises(TaskError, match="column 'file' not found .* available columns: image, label"):
        Task.from_csv(path, image_column="file")
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["image", "label"], [paths[0], ""]])
    with pytest.raises(TaskError, match="1 missing labels"):
        Task.from_csv(path)


# ---- from_dataset -----------------------------------------------------------------------------


class TinyDataset(torch.utils.data.Dataset):
    """A PIL image, an HWC uint8 array and a CHW float tensor: the three things datasets return."""

    classes = ["zero", "one"]

    def __init__(self, transform_scale: float = 1.0) -> None:
        self.scale = transform_scale
        self.reads = 0

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int):
        self.reads += 1
        image = [Image.fromarray(GRAY), RGB, torch.from_numpy(RGB).permute(2, 0, 1).float() / 255 * self.scale][i]
        return image, torch.tensor([1, 0, 1][i])


def test_from_dataset_reads_labels_once_and_images_lazily():
    dataset = TinyDataset()
    task = Task.from_dataset(dataset)
    assert dataset.reads == 3  # labels read by indexing, no targets attribute
    assert task.labels.tolist() == [1, 0, 1] and task.classes == ["zero", "one"]
    assert task.name == "TinyDataset" and task.source == "torch-dataset"
    out = task.load([0, 1, 2], 8)
    assert torch.equal(out, torch.stack([as_chw(GRAY), as_chw(RGB), as_chw(RGB)]))
    assert dataset.reads == 6


def test_from_dataset_uses_targets_and_rejects_normalised_images():
    dataset = TinyDataset(transform_scale=3.0)
    dataset.targets = [0, 0, 1]
    task = Task.from_dataset(dataset, name="t", classes=["x", "y"])
    assert dataset.reads == 0 and task.labels.tolist() == [0, 0, 1] and task.classes == ["x", "y"]
    with pytest.raises(TaskError, match=r"dataset item 2: float pixels must be within \[0, 1\]; got range"):
        task.load([2], 8)
    dataset.targets = [0, 1]
    with pytest.raises(TaskError, match="dataset.targets has 2 labels but len"):
        Task.from_dataset(dataset)
