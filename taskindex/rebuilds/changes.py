"""What a rebuild does to its index, by row name: added, changed, removed and kept, known before any embedding."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Changes:
    """added: manifest rows the index does not hold; changed: rows it holds, embedded again from the manifest;
    removed: rows it holds that the manifest does not list; kept: rows it holds that stay as committed (a row
    that failed, when failures are allowed)."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    @classmethod
    def plan(cls, held, names: list[str]) -> "Changes":
        held = set(held)
        wanted = set(names)
        return cls(added=[n for n in names if n not in held], changed=[n for n in names if n in held],
                   removed=sorted(held - wanted))

    def after_failures(self, failed: set[str]) -> "Changes":
        """The changes once `failed` rows are left out: a new one is not added, a held one keeps its version."""
        return Changes(added=[n for n in self.added if n not in failed],
                       changed=[n for n in self.changed if n not in failed], removed=list(self.removed),
                       kept=[n for n in self.changed if n in failed])

    def alters(self) -> bool:
        """Whether committing these changes makes a different index."""
        return bool(self.added or self.changed or self.removed)
