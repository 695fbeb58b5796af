"""The task index on disk: versions, segments, storage, candidates, re-rank and filters.

Importing it loads neither PyTorch nor pandas: a read-only query of a small index needs neither.
"""

from taskindex.index.task_index import Hit, TaskIndex, verify

__all__ = ["Hit", "TaskIndex", "verify"]
