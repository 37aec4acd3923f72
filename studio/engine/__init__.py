"""The engine: executor, caches, model manager, devices, events. No Qt.

torch is imported only when a node computes or a device is asked for.
"""

from studio.engine.cache import OutputCache
from studio.engine.context import NodeContext
from studio.engine.events import Event
from studio.engine.executor import Engine, RunResult
from studio.engine.fingerprint import FileFingerprinter
from studio.engine.models import ModelManager
from studio.engine.validate import Problem, WorkflowInvalid

__all__ = [
    "Engine",
    "Event",
    "FileFingerprinter",
    "ModelManager",
    "NodeContext",
    "OutputCache",
    "Problem",
    "RunResult",
    "WorkflowInvalid",
]
