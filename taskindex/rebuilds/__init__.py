"""Re-embedding a whole index from a manifest, on a local pool or a Ray cluster, resumable.

The package is named `rebuilds`, not `rebuild`, so it never shadows the function `taskindex.rebuild`.
"""

from taskindex.rebuilds.inputs import ManifestRow, read_manifest
from taskindex.rebuilds.run import RebuildReport, default_workers, rebuild, staging_dir

__all__ = ["ManifestRow", "RebuildReport", "default_workers", "read_manifest", "rebuild", "staging_dir"]
