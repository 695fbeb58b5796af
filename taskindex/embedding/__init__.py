"""Turning a task into a vector: probes, the per-filter Fisher, estimators, the head, the embed pipeline.

The package is named `embedding`, not `embed`, so it never shadows the function `taskindex.embed`. Importing
it loads only the Embedding type; the modules that need PyTorch load it themselves.
"""

from taskindex.embedding.vector import Embedding

__all__ = ["Embedding"]
