"""The Embedding: a task's TASK2VEC vector with its provenance, and its file format.

File format (`.emb`): a ZIP archive (stored, not compressed) holding
`embedding.json` ({"format": "taskindex-embedding", "version": 1, "layout",
"meta"}), `vector.npy` and `prior.npy` (little-endian float32, read with
allow_pickle=False). Written to a temporary file and renamed, so a crash never
leaves a half-written embedding.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field

import numpy as np

from taskindex.errors import EmbeddingFileError
from taskindex.space import Space

FORMAT = "taskindex-embedding"
FORMAT_VERSION = 1
# t0 = PRIOR_SCALE / mean(w_layer^2): about 1e-3 of a typical filter's Fisher on the
# shipped probe (tools/bench_embed.py), so it floors dead filters without hiding live ones.
PRIOR_SCALE = 1e-8


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@dataclass
class Embedding:
    """A task's TASK2VEC vector: per-filter Fisher plus the prior t0, with its provenance.

    `vector` always includes the prior, so every entry is > 0 and distances are
    finite; `prior` is the trivial embedding (what a task without information
    embeds to); `fisher` is the estimate without the prior.
    """

    vector: np.ndarray
    prior: np.ndarray
    layout: list[tuple[str, int]]
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.vector = np.ascontiguousarray(self.vector, dtype=np.float32)
        self.prior = np.ascontiguousarray(self.prior, dtype=np.float32)
        self.layout = [(str(n), int(c)) for n, c in self.layout]
        if self.vector.ndim != 1 or self.vector.shape != self.prior.shape:
            raise EmbeddingFileError(
                f"vector and prior must be 1-D of the same length; got {self.vector.shape} and {self.prior.shape}")
        if sum(c for _, c in self.layout) != self.vector.size:
            raise EmbeddingFileError(
                f"layout counts {sum(c for _, c in self.layout)} filters but the vector has {self.vector.size}")

    @property
    def dim(self) -> int:
        return int(self.vector.size)

    @property
    def fisher(self) -> np.ndarray:
        return np.maximum(self.vector - self.prior, 0.0)

    @property
    def space(self) -> dict:
        """What must agree for two embeddings to be compared (probe identity + method)."""
        return Space.of(self.meta).to_dict()

    def __repr__(self) -> str:
        return (f"Embedding(task={self.meta.get('task')!r}, probe={self.meta.get('probe')!r}, "
                f"method={self.meta.get('method')!r}, dim={self.dim})")

    def save(self, path: str | os.PathLike) -> None:
        import tempfile  # here, not at the top: a query that never saves starts faster
        import zipfile

        path = os.fspath(path)
        header = {"format": FORMAT, "version": FORMAT_VERSION, "layout": self.layout, "meta": self.meta}
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".emb-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as z:
                    z.writestr("embedding.json", json.dumps(header, indent=1, sort_keys=True))
                    for member, arr in (("vector.npy", self.vector), ("prior.npy", self.prior)):
                        buf = io.BytesIO()
                        np.save(buf, arr.astype("<f4"), allow_pickle=False)
                        z.writestr(member, buf.getvalue())
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would survive the rename
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Embedding":
        import zipfile

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise EmbeddingFileError(f"embedding file {path!r} does not exist")
        try:
            with zipfile.ZipFile(path) as z:
                header = json.loads(z.read("embedding.json"))
                arrays = {m: np.load(io.BytesIO(z.read(m)), allow_pickle=False)
                          for m in ("vector.npy", "prior.npy")}
        except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as exc:
            raise EmbeddingFileError(
                f"{path!r} is not a taskindex embedding ({type(exc).__name__}): "
                "create one with `taskindex embed DATA -o FILE.emb`") from exc
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise EmbeddingFileError(f"{path!r} is not a taskindex embedding (format {header.get('format')!r})")
        if header.get("version", 0) > FORMAT_VERSION:
            raise EmbeddingFileError(
                f"{path!r} has format version {header['version']}; this taskindex reads up to "
                f"{FORMAT_VERSION}: upgrade taskindex")
        vec, prior = arrays["vector.npy"], arrays["prior.npy"]
        if not (np.all(np.isfinite(vec)) and np.all(np.isfinite(prior))) or (vec <= 0).any() or (prior <= 0).any():
            raise EmbeddingFileError(f"{path!r} holds non-finite or non-positive values: the file is damaged")
        return cls(vec, prior, [tuple(x) for x in header["layout"]], header.get("meta", {}))
