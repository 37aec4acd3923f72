"""The GUI's side of running: the engine's run queue, its callbacks turned into Qt signals.

The queue's worker thread calls ``on_event`` and ``on_job``; here they become signals
emitted from that thread, which Qt delivers queued to the GUI thread. Images are turned
into QImages on the worker (QImage, unlike QPixmap, may be made off the GUI thread), so
the GUI thread only draws them. The engine is created on the first run: the window shows
before any of it loads.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QImage

if TYPE_CHECKING:
    from studio.engine.events import Event
    from studio.engine.queue import Job, RunQueue
    from studio.graph.registry import Registry
    from studio.graph.workflow import Workflow
    from studio.settings import Settings


#: Held while a thread imports the engine: two threads importing one package's
#: modules at once can deadlock in Python's import locks.
ENGINE_IMPORT_LOCK = threading.Lock()


def pil_to_qimage(im: Any) -> QImage:
    """A PIL image as a QImage that owns its pixels (safe on any thread)."""
    if im.mode not in ("RGB", "RGBA"):
        im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
    fmt = QImage.Format.Format_RGBA8888 if im.mode == "RGBA" else QImage.Format.Format_RGB888
    data = im.tobytes()
    w, h = im.size
    return QImage(data, w, h, w * len(im.mode), fmt).copy()


@dataclass
class Output:
    """One image a run produced: its pixels, the node and the workflow snapshot that made it."""

    image: QImage
    pil: Any
    node_id: str
    node_title: str
    job_id: int
    workflow: Workflow | None
    index: int = 0
    #: The saved file (Save Image's), when there is one; the history reads these back.
    path: str | None = None
    #: A caption's run label for an image of an earlier session (its file's name).
    run_label: str = ""
    #: What an earlier session's image says made it (its PNG metadata).
    seed: int | None = None
    prompt: str = ""


def _preload() -> None:
    from nodes.sdload import preload

    preload()


class RunBridge(QObject):
    """Owns the run queue; re-emits its callbacks as signals on the GUI thread.

    Signals:
        event(job, event, image): an engine event; ``image`` is the progress preview as a
            QImage (or None).
        job_changed(job, state): a job was queued, started, finished, failed or was
            cancelled; ``state`` is its state then (the job object itself moves on while
            the signal waits in the queue). A finished job's output images are in
            ``job.meta["outputs"]`` (list[Output]).
    """

    event = Signal(object, object, object)
    job_changed = Signal(object, object)  # job, its JobState then

    def __init__(
        self,
        registry: Registry,
        settings: Settings | None = None,
        parent: QObject | None = None,
    ):
        super().__init__(parent)
        self.registry = registry
        self.settings = settings
        self._queue: RunQueue | None = None

    @property
    def queue(self) -> RunQueue:
        if self._queue is None:
            with ENGINE_IMPORT_LOCK:
                from studio.engine.executor import Engine
                from studio.engine.queue import RunQueue

            engine = Engine(self.registry, settings=self.settings)
            self._queue = RunQueue(
                engine, on_event=self._on_event, on_job=self._on_job, prepare=_preload
            )
        return self._queue

    def start(self) -> None:
        """Start the engine's thread now (it imports torch and diffusers before the first
        run needs them)."""
        _ = self.queue

    @property
    def started(self) -> bool:
        return self._queue is not None

    def submit(self, workflow: Workflow, *, label: str = "", meta: dict | None = None) -> Job:
        return self.queue.submit(workflow, label=label, meta=meta)

    def interrupt(self, job_id: int | None = None) -> None:
        if self._queue is not None:
            self._queue.interrupt(job_id)

    def cancel(self, job_id: int) -> bool:
        return self._queue.cancel(job_id) if self._queue is not None else False

    def clear(self) -> None:
        if self._queue is not None:
            self._queue.clear()

    def busy(self) -> bool:
        q = self._queue
        return q is not None and (q.current is not None or bool(q.pending))

    def shutdown(self) -> None:
        if self._queue is not None:
            self._queue.shutdown(timeout=5.0)
            self._queue = None

    # -- worker thread ------------------------------------------------------------------------

    def _on_event(self, job: Job, event: Event) -> None:
        image = None
        if event.preview is not None:
            try:
                image = pil_to_qimage(event.preview)
            except Exception:  # a preview that cannot be shown is no reason to stop
                image = None
        self.event.emit(job, event, image)

    def _on_job(self, job: Job) -> None:
        if job.result is not None and "outputs" not in job.meta:
            job.meta["outputs"] = self._outputs(job)
        self.job_changed.emit(job, job.state)

    def _outputs(self, job: Job) -> list[Output]:
        result = job.result
        assert result is not None
        wf = job.workflow
        out = []
        for node_id, images in result.node_images.items():
            title = wf.display_title(node_id) if wf.has_node(node_id) else node_id
            for i, im in enumerate(images):
                try:
                    q = pil_to_qimage(im)
                except Exception:
                    continue
                path = getattr(im, "info", {}).get("studio_path")  # Save Image's file
                out.append(Output(q, im, node_id, title, job.id, wf, i, path=path))
        return out
