"""Manifest: one committed version of an index, as its manifest-NNNNNNNN.json records it, typed and frozen.

A commit builds the next version with `but(...)` instead of deep-copying a dict; the JSON keys are the field
names (storage adds the format marker), so indexes written before this type existed read unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

from taskindex import distance


@dataclass(frozen=True)
class Manifest:
    version: int
    space: dict  # the probe identity and embedding options (Space) plus the probe's weights name
    dim: int
    layout: tuple  # (layer, filters) pairs
    prior: dict  # file refs: {"name", "size", "sha256"}
    created: str
    segments: tuple = ()  # per segment, file refs of its vectors, rows, records (small ones) and projection
    deleted: tuple = ()  # ids of removed rows, ascending
    next_id: int = 0
    row_count: int = 0
    vectors: str = "float32"  # format 1 indexes predate bfloat16 storage
    projection: dict | None = None
    projection_rows: int = 0
    model2vec: dict | None = None
    alpha: float = distance.ALPHA
    results: dict | None = None  # file ref of the Parquet table of measured errors (select/results.py)

    @classmethod
    def from_json(cls, data: dict) -> "Manifest":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["layout"] = tuple(tuple(x) for x in data["layout"])
        values["segments"] = tuple(dict(s) for s in data.get("segments", ()))
        values["deleted"] = tuple(sorted(data.get("deleted", ())))
        return cls(**values)

    def to_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(layout=[list(x) for x in self.layout], segments=[dict(s) for s in self.segments],
                   deleted=list(self.deleted))
        return out

    def but(self, **changes) -> "Manifest":
        """This manifest with some fields changed: the next version's, before commit numbers it."""
        if "deleted" in changes:
            changes["deleted"] = tuple(sorted(set(changes["deleted"])))
        return dataclasses.replace(self, **changes)
