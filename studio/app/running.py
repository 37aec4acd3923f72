"""Runs as the artist sees them: node states on the canvas, previews, outputs, seeds.

:class:`RunView` takes the run bridge's signals (already on the GUI thread) and shows
them: each node's state (waiting, running with progress, cached, done with its time,
failed with its message), why a node re-ran (on hover), the sampler's live preview,
output images on their nodes, in the viewer and in the history.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QImage

from studio.app.canvas.node_item import RunState
from studio.app.runner import Output, RunBridge
from studio.graph.naming import node_name

if TYPE_CHECKING:
    from studio.app.canvas.scene import GraphScene
    from studio.app.controller import Controller
    from studio.engine.events import Event
    from studio.engine.queue import Job, JobState

# The engine's modules (EventKind, JobState) are imported where a run's signals arrive,
# never at import: the window shows before the engine loads, and by the time a run
# reports anything they are loaded.


class RunView(QObject):
    """Submits runs of the open workflow and shows what they do."""

    outputs_ready = Signal(object)  # list[Output], a finished job's images
    preview = Signal(object, str)  # QImage, node title
    job_updated = Signal(object, object, str)  # job, its JobState, progress text
    finished = Signal(object)  # job (done, failed, invalid, interrupted or cancelled)
    message = Signal(str)

    def __init__(self, controller: Controller, scene: GraphScene, bridge: RunBridge):
        super().__init__(controller)
        self.controller = controller
        self.scene = scene
        self.bridge = bridge
        self.current: Job | None = None
        self.ended: list[Job] = []  # finished runs, as the window has shown them
        bridge.event.connect(self._on_event)
        bridge.job_changed.connect(self._on_job)

    # -- submitting ---------------------------------------------------------------------------

    def run(self, count: int = 1) -> list[Job]:
        """Queue ``count`` runs of the workflow as it is now; seeds advance after each."""
        c = self.controller
        jobs = []
        for _ in range(max(1, count)):
            # The queue copies the workflow now: that copy, with the seeds it is run
            # with, is what Save Image embeds and what the history restores.
            job = self.bridge.submit(c.wf, meta={"doc": id(c.wf)})
            jobs.append(job)
            c.advance_seeds()
        return jobs

    def stop(self) -> None:
        q = self.bridge.queue if self.bridge.started else None
        job = q.current if q is not None else None
        # By id: a stop pressed just as the run begins still stops that run (the queue
        # sees to it), and never the next one.
        self.bridge.interrupt(job.id if job is not None else None)

    # -- following the runs ---------------------------------------------------------------

    def _mine(self, job: Job) -> bool:
        return job.meta.get("doc") == id(self.controller.wf)

    def _on_job(self, job: Job, state: JobState) -> None:
        from studio.engine.queue import JobState

        if state is JobState.RUNNING:
            self.current = job
            if self._mine(job):
                self._start_states(job)
            self.job_updated.emit(job, state, "")
            return
        self.job_updated.emit(job, state, "")
        if state is JobState.PENDING:
            return
        if self.current is job:
            self.current = None
        self.ended.append(job)
        del self.ended[:-100]
        if self._mine(job):
            self._end_states(state)
        outputs: list[Output] = job.meta.get("outputs", [])
        if outputs:
            if self._mine(job):
                by_node: dict[str, QImage] = {}
                for out in outputs:
                    by_node.setdefault(out.node_id, out.image)
                for node_id, image in by_node.items():
                    self.scene.set_node_image(node_id, image)
            self.outputs_ready.emit(outputs)
        if state is JobState.INVALID:
            for p in job.problems:
                self.scene.set_run_state(p.node_id, RunState.ERROR, None, p.message)
            self.message.emit(f"Run {job.id} cannot start: {_first_problem(job)}")
        elif state is JobState.FAILED:
            errors = job.result.errors if job.result is not None else {}
            first = job.message
            if errors:
                nid, msg = next(iter(errors.items()))
                first = f"{node_name(job.workflow, nid)}: {msg}"
            self.message.emit(f"Run {job.id} failed: {first}")
        elif state is JobState.INTERRUPTED:
            self.message.emit(f"Run {job.id} stopped")
        elif state is JobState.DONE and job.result is not None:
            self.message.emit(f"Run {job.id} finished in {job.result.seconds:.2f} s")
        self.finished.emit(job)

    def _start_states(self, job: Job) -> None:
        from studio.engine.validate import plan_workflow

        self.scene.clear_run_states()
        try:
            plan = plan_workflow(job.workflow, self.controller.registry)
        except Exception:  # the engine reports its own problems with this run
            return
        nodes = {n.id: n for n in job.workflow.nodes}
        for nid in plan.order:
            n = nodes.get(nid)
            if n is not None and not n.mute and not n.bypass:
                self.scene.set_run_state(nid, RunState.WAITING)

    def _end_states(self, state: JobState) -> None:
        from studio.engine.queue import JobState

        stopped = state is JobState.INTERRUPTED
        for item in self.scene.nodes.values():
            if item.run_state is RunState.WAITING:
                if stopped:
                    item.set_run_state(RunState.STOPPED, None, "not run")
                else:
                    item.set_run_state(RunState.IDLE)
            elif item.run_state is RunState.RUNNING:
                item.set_run_state(RunState.STOPPED, None, "stopped" if stopped else "")

    def _on_event(self, job: Job, event: Event, image: QImage | None) -> None:
        from studio.engine.events import EventKind
        from studio.engine.queue import JobState

        kind = event.event
        if kind is EventKind.PROGRESS:
            text = f"{event.title} {event.step}/{event.total}"
            self.job_updated.emit(job, JobState.RUNNING, text)
        if kind is EventKind.NOTICE and event.message:
            self.message.emit(event.message)  # the status bar
        if not self._mine(job) or event.node is None:
            return
        nid = event.node
        sc = self.scene
        item = sc.nodes.get(nid)
        if kind is EventKind.NODE_STARTED:
            sc.set_run_state(nid, RunState.RUNNING, 0.0)
            if item is not None:
                item.set_run_reason(event.message or "")
        elif kind is EventKind.PROGRESS:
            total = max(event.total or 1, 1)
            sc.set_run_state(nid, RunState.RUNNING, (event.step or 0) / total)
            if image is not None:
                sc.set_node_image(nid, image)
                self.preview.emit(image, event.title or "")
        elif kind is EventKind.NODE_CACHED:
            sc.set_run_state(nid, RunState.CACHED, None, "cached")
            if item is not None:
                item.set_run_reason("")
        elif kind is EventKind.NODE_FINISHED:
            sc.set_run_state(nid, RunState.DONE, None, _seconds(event.seconds))
        elif kind is EventKind.NODE_ERROR:
            sc.set_run_state(nid, RunState.ERROR, None, event.message or "failed")
            self.message.emit(f"{node_name(job.workflow, nid)}: {event.message}")
        elif kind is EventKind.NODE_SKIPPED:
            sc.set_run_state(nid, RunState.SKIPPED, None, event.message or "skipped")
        elif kind is EventKind.INTERRUPTED:
            sc.set_run_state(nid, RunState.STOPPED, None, "stopped")


def _first_problem(job: Job) -> str:
    """The first problem (naming its node by title), and how many more there are."""
    problems = list(job.problems or [])
    if not problems:
        return job.message or "the workflow is not valid"
    more = len(problems) - 1
    return str(problems[0]) + (f" (and {more} more: see the nodes)" if more else "")


def _seconds(s: Any) -> str:
    if not isinstance(s, int | float):
        return ""
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"
