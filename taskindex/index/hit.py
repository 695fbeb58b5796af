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
    ranked_by: str = "sym"  # sym, asym or model2vec: the score in `distance`

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "distance": self.distance, "complexity": self.complexity,
                "ranked_by": self.ranked_by, "metadata": self.metadata}
