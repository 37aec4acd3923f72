"""Studio: a node-graph application for diffusion image workflows.

The Python API::

    import studio
    wf = studio.load_workflow("resources/workflows/txt2img.json")
    wf.set_param("Sampler", "seed", 7)
    engine = studio.Engine()
    result = engine.run(wf)
    result.images[0].save("out.png")
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from studio.errors import NodeError, StudioError, WorkflowEditError, WorkflowFileError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from studio.engine import Engine, RunResult
    from studio.graph import Workflow


def load_workflow(path: str | Path) -> Workflow:
    """Read a Studio workflow file (raises WorkflowFileError naming the file on problems)."""
    from studio.graph.fileformat import load_workflow as _load

    return _load(path)


def __getattr__(name: str) -> Any:
    if name in ("Engine", "RunResult"):
        import studio.engine as engine

        return getattr(engine, name)
    if name == "Workflow":
        from studio.graph import Workflow

        return Workflow
    raise AttributeError(f"module 'studio' has no attribute {name!r}")


__all__ = [
    "Engine",
    "NodeError",
    "RunResult",
    "StudioError",
    "Workflow",
    "WorkflowEditError",
    "WorkflowFileError",
    "load_workflow",
]
