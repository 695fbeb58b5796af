"""Hit: one answer of a query or an expert selection, as the API returns it and `--json` prints it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Hit:
    """One query result."""

    name: str
    kind: str
    distance: float
    complexity: float
    metadata: dict = field(default_factory=dict)
    ranked_by: str = "sym"  # sym, asym, model2vec or neighbors: the score in `distance`
    evidence: list = field(default_factory=list)  # neighbors: the known tasks, and the errors, behind the score

    def to_dict(self) -> dict:
        out = {"name": self.name, "kind": self.kind, "distance": self.distance, "complexity": self.complexity,
               "ranked_by": self.ranked_by, "metadata": self.metadata}
        return {**out, "evidence": self.evidence} if self.evidence else out
