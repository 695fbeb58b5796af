"""Re-embedding a whole index from a manifest, on a local pool or a Ray cluster, resumable.

The package is named `rebuilds`, not `rebuild`, so it never shadows the function `taskindex.rebuild`.
"""

from taskindex.rebuilds.changes import Changes
from taskindex.rebuilds.inputs import ManifestRow, read_manifest
from taskindex.rebuilds.run import RebuildReport, default_workers, rebuild
from taskindex.rebuilds.stage import staging_dir

__all__ = ["Changes", "ManifestRow", "RebuildReport", "default_workers", "read_manifest", "rebuild", "staging_dir"]
