"""What ships inside the package: the default index of sample tasks and experts, and the experts' error table.

Both are package data, so `taskindex query --name fashion-footwear` works from any folder after a plain
`pip install` of the wheel, not only from a checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA = Path(__file__).resolve().parent / "package_data"
DEFAULT_INDEX = DATA / "default.index"
EXPERT_ERRORS = DATA / "expert_errors.csv"  # tools/experiments/meta_benchmark.py --errors-out writes it


def default_index_path() -> str:
    """$TASKINDEX_INDEX where set, else the shipped index: what every command without INDEX opens."""
    return os.environ.get("TASKINDEX_INDEX") or str(DEFAULT_INDEX)


def default_index(readonly: bool = True):
    """Open the default index (read-only unless asked): the shipped one, or $TASKINDEX_INDEX."""
    from taskindex.index.task_index import TaskIndex

    return TaskIndex.open(default_index_path(), readonly=readonly)
