"""Space: what must agree for two embeddings to be compared, or for an embedding to join an index.

The probe identity (name, weights fingerprint, image size), the method, the prior scale and the estimator.
Every place that compares spaces compares Space values and describes a mismatch with `differences`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Mapping


@dataclass(frozen=True)
class Space:
    probe: str
    fingerprint: str
    image_size: int
    method: str
    prior_scale: float
    estimator: str = "mean"  # embeddings and indexes made before estimators existed hold the plain mean

    @classmethod
    def of(cls, mapping: Mapping) -> "Space":
        """The space an embedding's meta, an index's manifest or a staged rebuild plan names (other keys ignored)."""
        return cls(**{f.name: mapping[f.name] for f in fields(cls) if f.name in mapping})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def differences(self, other: "Space") -> str:
        """The one description of a mismatch: "probe: 'resnet18' vs 'resnet34'; image_size: 32 vs 64"."""
        return "; ".join(f"{f.name}: {getattr(self, f.name)!r} vs {getattr(other, f.name)!r}" for f in fields(self)
                         if getattr(self, f.name) != getattr(other, f.name))

    def embed_options(self) -> dict:
        """The keyword arguments of `taskindex.embed` that put a new task in this space (beside its probe)."""
        from taskindex.embedding.estimators import parse_estimator

        name, trim = parse_estimator(self.estimator)
        return {"method": self.method, "prior_scale": self.prior_scale, "estimator": name,
                "trim": trim if name != "mean" else None}
