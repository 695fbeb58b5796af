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
    committed: str | None = None  # when this version was committed (UTC); indexes before versions() lack it
    operation: str | None = None  # what the commit did, in words: versions() lists it

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

    def change_from(self, old: "Manifest") -> str:
        """What the commit from `old` to this version did, in words."""
        said, held = [], [s["vectors"]["name"] for s in old.segments]
        if [s["vectors"]["name"] for s in self.segments[:len(held)]] != held:  # a retrained projection keeps them
            said.append("compacted" + (f" to {self.vectors}" if self.vectors != old.vectors else ""))
        else:
            added = sum(self.rows_in(s) for s in self.segments[len(old.segments):])
            gone = len(set(self.deleted) - set(old.deleted))
            if added:
                said.append(f"added {added} row{'s' * (added != 1)}")
            if gone:
                said.append(f"removed {gone} row{'s' * (gone != 1)}" if not added
                            else f"{gone} removed or replaced")
        if self.alpha != old.alpha:
            said.append(f"set alpha to {self.alpha:g}")
        if self.results != old.results:
            said.append("stored results")
        if self.model2vec != old.model2vec:
            said.append("fitted MODEL2VEC")
        return ", ".join(said) or "no change"

    def rows_in(self, segment: dict) -> int:
        """The rows a segment holds, removed ones too: its vector file's size over a row's."""
        return segment["vectors"]["size"] // (self.dim * (2 if segment["vectors"]["name"].endswith(".bf16") else 4))
