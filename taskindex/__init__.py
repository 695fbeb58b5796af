"""taskindex: a vector database of image-classification tasks (TASK2VEC).

Names are imported on first use, so index and distance work starts without
loading PyTorch.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "Embedding": "embedding", "embed": "task2vec", "Task": "tasks", "Probe": "probes", "load_probe": "probes",
    "list_probes": "probes", "TaskIndex": "index", "Hit": "index", "d_sym": "distance", "d_asym": "distance",
    "complexity": "distance", "one_to_many": "distance", "pairwise": "distance", "TaskIndexError": "errors",
    "TaskError": "errors", "ProbeError": "errors", "EmbeddingFileError": "errors",
    "IncompatibleEmbeddingsError": "errors", "IndexCorruptError": "errors", "IndexLockedError": "errors",
    "IndexUsageError": "errors", "ManifestError": "errors", "rebuild": "rebuilds", "read_manifest": "manifest",
    "samples": None, "distance": None, "plots": None,
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'taskindex' has no attribute {name!r}")
    module = import_module(f".{_EXPORTS[name] or name}", __name__)
    return module if _EXPORTS[name] is None else getattr(module, name)
