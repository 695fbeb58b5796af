"""taskindex: a vector database of image-classification tasks (TASK2VEC)."""

__version__ = "0.1.0"

from .distance import complexity, d_asym, d_sym, one_to_many, pairwise  # noqa: E402
from .embedding import Embedding, embed  # noqa: E402
from .errors import (  # noqa: E402
    EmbeddingFileError,
    IncompatibleEmbeddingsError,
    ProbeError,
    TaskError,
    TaskIndexError,
)
from .probes import Probe, list_probes, load_probe  # noqa: E402
from .tasks import Task  # noqa: E402

__all__ = [
    "Embedding", "EmbeddingFileError", "IncompatibleEmbeddingsError", "Probe", "ProbeError", "Task", "TaskError",
    "TaskIndexError", "complexity", "d_asym", "d_sym", "embed", "list_probes", "load_probe", "one_to_many",
    "pairwise",
]
