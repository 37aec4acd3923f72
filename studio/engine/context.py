"""What a node's execute function gets as ``ctx``."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from studio.engine.events import Event, EventKind
from studio.errors import Interrupted

if TYPE_CHECKING:
    from studio.engine.fingerprint import FileFingerprinter
    from studio.engine.models import ModelManager
    from studio.graph.workflow import Workflow
    from studio.modelfiles import ModelFiles
    from studio.settings import Settings


class NodeContext:
    """The engine's services for one node execution.

    Attributes:
        node_id, node_type, title: the node being run.
        settings: the engine's settings (models root, output folder, device).
        model_files: the engine's :class:`~studio.modelfiles.ModelFiles` for those
            settings (``ctx.model_files.resolve("checkpoints", name)``).
        models: the shared :class:`~studio.engine.models.ModelManager`.
        files: the engine's :class:`~studio.engine.fingerprint.FileFingerprinter`.
        workflow: the workflow being run (Save Image embeds it in the PNG).
        run_info: values the run shares between nodes (for example the seeds used).
    """

    def __init__(
        self,
        *,
        node_id: str,
        node_type: str,
        title: str,
        settings: Settings,
        model_files: ModelFiles,
        models: ModelManager,
        files: FileFingerprinter,
        workflow: Workflow | None,
        interrupt_flag: threading.Event,
        emit: Callable[[Event], None],
        run_info: dict[str, Any] | None = None,
    ):
        self.node_id = node_id
        self.node_type = node_type
        self.title = title
        self.settings = settings
        self.model_files = model_files
        self.models = models
        self.files = files
        self.workflow = workflow
        self._interrupt = interrupt_flag
        self._emit = emit
        self._device: str | None = None
        self.images: list[Any] = []
        self.run_info = run_info if run_info is not None else {}

    @property
    def device(self) -> str:
        """The compute device for this run (cuda, mps or cpu)."""
        if self._device is None:
            from studio.engine.devices import pick_device

            self._device = pick_device(self.settings.device)
        return self._device

    @property
    def dtype(self) -> Any:
        from studio.engine.devices import default_dtype

        return default_dtype(self.device, getattr(self.settings, "precision", "auto"))

    def check_interrupt(self) -> None:
        """Raise :class:`~studio.errors.Interrupted` if the user asked to stop."""
        if self._interrupt.is_set():
            raise Interrupted("interrupted")

    def progress(self, step: int, total: int, preview: Any = None) -> None:
        """Report progress (and an optional preview image); stops here if interrupted."""
        self.check_interrupt()
        self._emit(
            Event(
                EventKind.PROGRESS,
                node=self.node_id,
                type=self.node_type,
                title=self.title,
                step=step,
                total=total,
                preview=preview,
            )
        )

    def show(self, images: list[Any]) -> None:
        """Output nodes: images to show for this node (kept with its cached result)."""
        self.images.extend(images)
