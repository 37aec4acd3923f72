"""Importers of other tools' files: each turns a foreign file into a :class:`Workflow`
and a report of what did not map. No Qt, no torch, no engine.

- :mod:`studio.graph.importers.comfyui`: ComfyUI's UI ("workflow") and API ("prompt")
  JSON formats;
- :mod:`studio.graph.importers.a1111`: Automatic1111 / Forge generation parameters.

docs/importing.md says what maps to what.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from studio.graph.workflow import Workflow


@dataclass
class ImportResult:
    """A workflow read from a file, with what did not map.

    ``kind`` says what the file was: ``"studio"`` (Studio's own format, nothing to
    report), ``"comfyui-ui"``, ``"comfyui-api"`` or ``"a1111"``.
    """

    workflow: Workflow
    report: list[str] = field(default_factory=list)
    kind: str = "studio"

    @property
    def imported(self) -> bool:
        """Whether the file was another tool's (so saving must not overwrite it)."""
        return self.kind != "studio"


def saveable(result: ImportResult, source: str) -> ImportResult:
    """``result``, once its workflow is known to hold only values a workflow file can
    (the file format's one rule); a WorkflowFileError naming ``source`` otherwise, so an
    import never gives a document that cannot be saved."""
    from studio.errors import WorkflowFileError
    from studio.graph.fileformat import find_unsaveable, workflow_to_dict

    problem = find_unsaveable(workflow_to_dict(result.workflow))
    if problem is not None:
        raise WorkflowFileError(source, f"holds a value Studio cannot keep: {problem}")
    return result


__all__ = ["ImportResult", "saveable"]
