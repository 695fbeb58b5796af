"""Where a task's pixels live (arrays, encoded files or bytes, a dataset) and how they become uint8 tensors."""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from taskindex.data.checks import one_line
from taskindex.errors import TaskError

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


class Images(Protocol):
    """Where a task's pixels live; rows index the source, not the task."""

    def __len__(self) -> int: ...

    def batches(self, rows: np.ndarray, bad: list | None = None) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield (positions in rows, uint8 (b, C, H, W) with C in {1, 3}) groups of equal shape.

        With `bad`, an image that cannot be decoded is appended to it as (position in rows, where, why) and
        left out instead of raising, so one pass finds every bad file."""
        ...


class ArrayImages:
    """In-memory uint8 (N, C, H, W): one gather, one batched resize."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = torch.from_numpy(array)

    def __len__(self) -> int:
        return self.array.shape[0]

    def batches(self, rows: np.ndarray, bad: list | None = None) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        yield np.arange(len(rows)), self.array[torch.from_numpy(rows)]


class EncodedImages:
    """Image files or encoded bytes, decoded only when loaded so large tasks stay cheap to hold."""

    def __init__(self, items: list[Path | bytes], origin: str) -> None:
        self.items = items
        self.origin = origin

    def __len__(self) -> int:
        return len(self.items)

    def where(self, row: int) -> str:
        item = self.items[row]
        return str(item) if isinstance(item, Path) else f"row {row} of {self.origin}"

    def batches(self, rows: np.ndarray, bad: list | None = None) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        decoded = []
        for position, row in enumerate(rows):
            try:
                decoded.append((position, _decode(self.items[row])))
            except _DECODE_ERRORS as err:
                if bad is None:
                    raise TaskError(f"cannot read image {self.where(row)}: {decode_error(err)}; replace or remove "
                                    "that file") from err
                bad.append((position, self.where(row), decode_error(err)))
        yield from _group_by_shape(decoded)


class DatasetImages:
    """A torch-style dataset read item by item, so its own transforms and storage are used as they are."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, rows: np.ndarray, bad: list | None = None) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        yield from _group_by_shape([(i, _item_image(dataset_item(self.dataset, int(r))[0], f"dataset item {r}"))
                                    for i, r in enumerate(rows)])


def dataset_item(dataset: Any, i: int) -> Sequence[Any]:
    item = dataset[i]
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise TaskError(f"dataset[{i}] is a {type(item).__name__}; a dataset must return (image, label) pairs")
    return item


def resize(batch: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision Resize((size, size), antialias=True) on uint8: float bilinear, then round and clamp."""
    if batch.shape[-2:] != (size, size):
        resized = F.interpolate(batch.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        batch = resized.round_().clamp_(0, 255).to(torch.uint8)
    return batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch


def _group_by_shape(images: list[tuple[int, torch.Tensor]]) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Stack (position, image) pairs of equal shape so each shape is resized in one call."""
    groups: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = {}
    for position, image in images:
        groups.setdefault(tuple(image.shape), []).append((position, image))
    for group in groups.values():
        yield np.array([p for p, _ in group], dtype=np.int64), torch.stack([image for _, image in group])


def _decode(item: Path | bytes) -> torch.Tensor:
    with Image.open(item if isinstance(item, Path) else io.BytesIO(item)) as image:
        rgb = np.array(image.convert("RGB"))
    return torch.from_numpy(rgb).permute(2, 0, 1)


def decode_error(err: BaseException) -> str:
    """Why an image could not be decoded, without the file name (the caller names it) or an object's repr."""
    if isinstance(err, UnidentifiedImageError):
        return "unknown or corrupt image format"
    return re.sub(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>", "", one_line(err))


def _item_image(image: Any, where: str) -> torch.Tensor:
    """One dataset image (PIL, HWC/CHW array or CHW tensor) as uint8 (C, H, W)."""
    if isinstance(image, Image.Image):
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
    if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim in (2, 3):
        return torch.from_numpy(as_uint8_nchw(image[None], f"the image of {where}")[0])
    shape = f" of shape {tuple(image.shape)}" if hasattr(image, "shape") else ""
    raise TaskError(
        f"the image of {where} is a {type(image).__name__}{shape}; return a PIL image, an HWC/CHW uint8 array "
        "or a CHW tensor from __getitem__"
    )


def as_uint8_nchw(images: Any, what: str) -> np.ndarray:
    """Validate pixels and store them as uint8 (N, C, H, W), C in {1, 3}: one layout for every array."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu()
        array = (images.float() if images.dtype == torch.bfloat16 else images).numpy()
    else:
        array = np.asarray(images)
    shape = array.shape
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and shape[1] in (1, 3) and shape[-1] not in (1, 3, 4):
        pass
    elif array.ndim == 4 and shape[-1] in (1, 3, 4):
        array = array[..., :3].transpose(0, 3, 1, 2)
    else:
        raise TaskError(
            f"{what}: shape {shape} is not (N, H, W), (N, H, W, C) with C in 1/3/4 or (N, C, H, W) with C in 1/3"
        )
    if 0 in array.shape[2:]:
        raise TaskError(f"{what}: shape {shape} has an empty side; every image needs at least 1x1 pixels")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype.kind in "iu":
        low, high = (array.min(), array.max()) if array.size else (0, 0)
        if low < 0 or high > 255:
            raise TaskError(
                f"{what}: integer pixels must be within 0..255; got range [{low}, {high}]. "
                "Scale to 0..255 and cast to uint8, or pass floats in [0, 1]"
            )
        return np.ascontiguousarray(array, dtype=np.uint8)
    if array.dtype.kind != "f":
        raise TaskError(
            f"{what}: dtype {array.dtype} is not a pixel type; pass uint8 pixels (0..255) or floats in [0, 1]"
        )
    finite = np.isfinite(array)
    if not finite.all():
        first = int(np.flatnonzero(~finite.reshape(len(array), -1).all(axis=1))[0])
        raise TaskError(f"{what}: NaN or inf pixels (first in image {first}); drop or repair those images")
    if array.size and (array.min() < 0 or array.max() > 1):
        raise TaskError(
            f"{what}: float pixels must be within [0, 1]; got range [{array.min():.4g}, {array.max():.4g}]. "
            "Divide 0..255 pixels by 255 (or by their max), and pass them before any mean/std normalisation"
        )
    return np.ascontiguousarray(np.rint(array * 255), dtype=np.uint8)
