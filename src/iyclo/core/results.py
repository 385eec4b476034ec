"""What operations answer: the same JSON shape on every front."""

from __future__ import annotations

from typing import Any

from attrs import frozen


@frozen
class ApplyResult:
    name: str
    kind: str
    generation: int
    changed: bool
    state: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "generation": self.generation,
            "changed": self.changed,
            "state": self.state,
        }


@frozen
class ReconcileReport:
    adopted: tuple[str, ...]
    recreated: tuple[str, ...]
    removed: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "adopted": list(self.adopted),
            "recreated": list(self.recreated),
            "removed": list(self.removed),
            "failed": [{"name": n, "error": e} for n, e in self.failed],
        }
