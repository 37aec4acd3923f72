"""Importers: other tools' files turned into a Studio Workflow and a report of what did not map.
No Qt, no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from studio.graph.workflow import Workflow


@dataclass
class ImportResult:
    """A foreign file as a Studio workflow, and what did not map (nothing is dropped silently)."""

    workflow: Workflow
    kind: str
    report: list[str] = field(default_factory=list)
