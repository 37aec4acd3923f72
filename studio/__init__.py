"""Studio: a node-graph application for diffusion image workflows.

The Python API::

    import studio
    wf = studio.load_workflow("resources/workflows/txt2img.json")
    wf.set_param("Sampler", "seed", 7)
    engine = studio.Engine(wf.registry)  # with the user's settings file
    result = engine.run(wf)
    result.images[0].save("out.png")

An engine takes its own settings (``studio.Engine(registry, settings=studio.Settings(
models_root="/models"))``); several engines with different settings live side by side.
``studio.installed_registry()`` gives the node types (the built-in nodes and installed
packs) for workflows built in code: ``studio.Workflow(studio.installed_registry())``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from studio.errors import NodeError, StudioError, WorkflowEditError, WorkflowFileError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from studio.engine import Engine, RunResult
    from studio.graph import Registry, Workflow
    from studio.settings import Settings


def installed_registry() -> Registry:
    """The node types of this installation: the built-in nodes and every node pack."""
    from studio.library import installed_registry as _installed

    return _installed()


def load_workflow(path: str | Path, registry: Registry | None = None) -> Workflow:
    """Read a workflow file (raises WorkflowFileError naming the file on problems), with
    ``registry``'s node types (default: :func:`installed_registry`).

    Besides Studio's own files, ComfyUI workflows and prompts and PNGs carrying a workflow
    are read (imported: see docs/importing.md); those come back without a ``path``."""
    from studio.graph.fileformat import load_workflow as _load

    return _load(path, registry if registry is not None else installed_registry())


def __getattr__(name: str) -> Any:
    if name in ("Engine", "RunResult"):
        import studio.engine as engine

        return getattr(engine, name)
    if name == "Workflow":
        from studio.graph import Workflow

        return Workflow
    if name == "Batch":
        from studio.batch import Batch

        return Batch
    if name == "Settings":
        from studio.settings import Settings

        return Settings
    raise AttributeError(f"module 'studio' has no attribute {name!r}")


__all__ = [
    "Batch",
    "Engine",
    "NodeError",
    "RunResult",
    "Settings",
    "StudioError",
    "Workflow",
    "WorkflowEditError",
    "WorkflowFileError",
    "installed_registry",
    "load_workflow",
]
