"""taskindex: a vector database of image-classification tasks (TASK2VEC).

Names are imported on first use, so index and distance work starts without
loading PyTorch.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "Embedding": "embedding.vector", "embed": "embedding.pipeline", "Task": "data.task", "Probe": "embedding.probes",
    "load_probe": "embedding.probes", "list_probes": "embedding.probes", "TaskIndex": "index.task_index",
    "Hit": "index.task_index", "d_sym": "distance", "d_asym": "distance", "complexity": "distance",
    "one_to_many": "distance", "pairwise": "distance", "TaskIndexError": "errors", "TaskError": "errors",
    "ProbeError": "errors", "EmbeddingFileError": "errors", "IncompatibleEmbeddingsError": "errors",
    "IndexCorruptError": "errors", "IndexLockedError": "errors", "IndexUsageError": "errors",
    "ManifestError": "errors", "CommitError": "errors", "VersionGoneError": "errors", "rebuild": "rebuilds.run",
    "read_manifest": "rebuilds.inputs", "default_index": "shipped", "Space": "space",
}
_MODULES = {"samples": "data.samples", "distance": "distance", "plots": "plots"}  # public modules, by attribute

__all__ = sorted({*_EXPORTS, *_MODULES})


def __getattr__(name):
    if name in _MODULES:
        return import_module(f".{_MODULES[name]}", __name__)
    if name not in _EXPORTS:
        raise AttributeError(f"module 'taskindex' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
