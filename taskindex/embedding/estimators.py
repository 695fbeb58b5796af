"""Per-filter aggregation of per-image Fisher contributions: the paper's mean and robust alternatives.

The Fisher of filter k is an average over images of ||d log p(y|x_n)/dw_k||^2. Those
per-image terms are heavy-tailed: a few images (those the head gets wrong or is unsure
of) carry most of a filter's sum, so the plain mean of one sample of a task is decided
by which few images it happened to draw, and two samples of the same task land as far
apart as two different tasks (tools/bench_quality.py measures it). A trimmed mean per
filter drops the extreme images on both sides and keeps the scale of the typical one.

Streaming: per filter, only the k + 1 largest and smallest values seen so far and the
running sum are kept, so memory is 2 (k + 1) x filters, not images x filters. Images are
taken in chunks of at most `chunk` (4,096) images, each chunk trimmed on its own and the
chunk estimates averaged by their sizes: memory stays bounded for any number of images.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from taskindex import validation
from taskindex.errors import TaskIndexError

ESTIMATORS = ("trimmed", "winsorized", "mean")
DEFAULT_ESTIMATOR = "trimmed"
DEFAULT_TRIM = 0.1
CHUNK = 4096

if TYPE_CHECKING:  # torch is imported on use: index code reads identities without it
    import torch


def estimator_id(estimator: str, trim: float | None = None) -> str:
    """The estimator's identity as stored in an embedding's meta: 'mean' or e.g. 'trimmed:0.1'."""
    if estimator not in ESTIMATORS:
        raise TaskIndexError(f"unknown estimator {estimator!r}: use one of {', '.join(ESTIMATORS)} "
                             f"('mean' is the paper's plain mean over images)")
    if estimator == "mean":
        return "mean"
    trim = DEFAULT_TRIM if trim is None else trim
    if not (validation.is_number(trim) and 0 < trim < 0.5):
        raise TaskIndexError(f"trim must be a fraction in (0, 0.5); got {trim!r} (the share of images cut at each "
                             "end per filter)")
    return f"{estimator}:{float(trim):g}"


def parse_estimator(identity: str) -> tuple[str, float]:
    """Inverse of estimator_id: ('trimmed', 0.1), ('mean', 0.0)."""
    name, _, trim = str(identity).partition(":")
    estimator_id(name, float(trim) if trim else None)  # validates
    return name, float(trim) if trim else (0.0 if name == "mean" else DEFAULT_TRIM)


class FilterEstimator:
    """Streams (images x filters) blocks of per-image contributions and returns one value per filter.

    `n` is the number of images that will be fed (known before the pass: the balanced subset),
    so each chunk knows how many images to cut at each end before it sees them.
    """

    def __init__(self, identity: str, n: int, dim: int, device: torch.device | str = "cpu",
                 chunk: int = CHUNK):
        import torch

        self.name, self.trim = parse_estimator(identity)
        self.n, self.dim, self.device, self.chunk = int(n), int(dim), torch.device(device), int(chunk)
        self._estimate = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        self._seen = 0
        self._open_chunk()

    def _open_chunk(self) -> None:
        import torch

        size = min(self.chunk, self.n - self._seen)
        self._size = size
        self._k = 0 if self.name == "mean" else int(math.floor(self.trim * size))
        self._fill = 0
        self._sum = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        keep = self._k + 1
        self._top = torch.full((keep, self.dim), -math.inf, dtype=torch.float32, device=self.device)
        self._bottom = torch.full((keep, self.dim), math.inf, dtype=torch.float32, device=self.device)

    def update(self, block: torch.Tensor) -> None:
        """block: (images, filters), each row one image's contribution."""
        import torch

        block = block.to(self.device)
        if self._seen + self._fill + block.shape[0] > self.n:
            raise RuntimeError(f"the estimator was told {self.n} images and received more")
        while block.shape[0]:
            take = min(block.shape[0], self._size - self._fill)
            part, block = block[:take], block[take:]
            self._sum += part.sum(0, dtype=torch.float64)
            if self._k:
                part = part.float()
                self._top = torch.topk(torch.cat([self._top, part]), self._k + 1, dim=0, sorted=False).values
                self._bottom = torch.topk(torch.cat([self._bottom, part]), self._k + 1, dim=0, largest=False,
                                          sorted=False).values
            self._fill += take
            if self._fill == self._size:
                self._close_chunk()

    def _close_chunk(self) -> None:
        import torch

        k, m = self._k, self._size
        if k == 0:
            value = self._sum / m
        else:
            top = torch.sort(self._top.double(), dim=0, descending=True).values
            bottom = torch.sort(self._bottom.double(), dim=0).values
            cut = top[:k].sum(0) + bottom[:k].sum(0)
            if self.name == "trimmed":
                value = (self._sum - cut) / (m - 2 * k)
            else:  # winsorized: the cut images count as the nearest kept value
                value = (self._sum - cut + k * (top[k] + bottom[k])) / m
        self._estimate += value * (m / self.n)
        self._seen += m
        if self._seen < self.n:
            self._open_chunk()

    def result(self) -> torch.Tensor:
        if self._seen != self.n:
            raise RuntimeError(f"the estimator was told {self.n} images but received {self._seen + self._fill}")
        return self._estimate
