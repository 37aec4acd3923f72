"""The queue panel: Run with a batch count, Stop, and the list of pending and finished runs."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

if TYPE_CHECKING:
    from studio.engine.queue import JobState

MAX_FINISHED = 40

# JobState is imported where jobs arrive, never at import: the window shows before the
# engine loads, and a job exists only once it has.


@functools.cache
def _marks() -> dict[JobState, str]:
    from studio.engine.queue import JobState

    return {
        JobState.PENDING: "⏳",
        JobState.RUNNING: "▶",
        JobState.DONE: "✓",
        JobState.FAILED: "✗",
        JobState.INVALID: "⚠",
        JobState.INTERRUPTED: "■",
        JobState.CANCELLED: "–",
    }


def describe(job: Any, state: JobState, progress: str = "") -> str:
    from studio.engine.queue import JobState

    mark = _marks().get(state, "·")
    text = f"{mark} Run {job.id}"
    if job.label:
        text += f" · {job.label}"
    if state is JobState.RUNNING:
        text += f" · {progress or 'starting'}"
    elif state is JobState.DONE and job.started and job.finished:
        text += f" · {job.finished - job.started:.1f} s"
    elif state is JobState.FAILED:
        errors = job.result.errors if job.result is not None else {}
        text += f" · {len(errors)} node(s) failed" if errors else f" · {job.message}"
    elif state is JobState.INVALID:
        text += f" · {len(job.problems)} problem(s)"
    else:
        text += f" · {state}"
    return text


class QueuePanel(QWidget):
    run_requested = Signal(int)  # batch count
    stop_requested = Signal()
    cancel_requested = Signal(int)  # job id
    clear_requested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.items: dict[int, QListWidgetItem] = {}
        self.jobs: dict[int, Any] = {}
        self.states: dict[int, JobState] = {}  # as last shown
        self.run_button = QPushButton("▶  Run")
        self.run_button.setToolTip("Queue the workflow (Ctrl+Enter)")
        self.run_button.clicked.connect(lambda: self.run_requested.emit(self.batch.value()))
        self.batch = QSpinBox()
        self.batch.setRange(1, 100)
        self.batch.setPrefix("× ")
        self.batch.setToolTip("How many runs one press queues (seeds change between them)")
        self.stop_button = QPushButton("■  Stop")
        self.stop_button.setToolTip("Stop the running workflow at its next step (Ctrl+Alt+Enter)")
        self.stop_button.clicked.connect(self.stop_requested.emit)
        self.stop_button.setEnabled(False)
        self.status = QLabel("Idle")
        self.status.setObjectName("dim")
        self.list = QListWidget()
        self.list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.list.customContextMenuRequested.connect(self._menu)
        clear = QPushButton("Clear queue")
        clear.setToolTip("Cancel every run that has not started")
        clear.clicked.connect(self.clear_requested.emit)
        top = QHBoxLayout()
        top.addWidget(self.run_button, 2)
        top.addWidget(self.batch, 1)
        top.addWidget(self.stop_button, 2)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(8, 8, 8, 8)
        lay.addLayout(top)
        lay.addWidget(self.status)
        lay.addWidget(self.list, 1)
        lay.addWidget(clear)

    def update_job(self, job: Any, state: JobState, progress: str = "") -> None:
        from studio.engine.queue import JobState

        shown = self.states.get(job.id)
        if shown is not None and shown.ended:
            return  # a progress event that was still queued when the run ended
        self.jobs[job.id] = job
        self.states[job.id] = state
        item = self.items.get(job.id)
        if item is None:
            item = QListWidgetItem()
            item.setData(Qt.ItemDataRole.UserRole, job.id)
            self.items[job.id] = item
            self.list.insertItem(0, item)
        item.setText(describe(job, state, progress))
        item.setToolTip(job.message or "")
        self._trim()
        running = JobState.RUNNING in self.states.values()
        pending = sum(s is JobState.PENDING for s in self.states.values())
        self.stop_button.setEnabled(running)
        self.status.setText(
            ("Running" if running else "Idle") + (f" · {pending} waiting" if pending else "")
        )

    def _trim(self) -> None:
        finished = [jid for jid, s in self.states.items() if s.ended]
        for jid in sorted(finished)[:-MAX_FINISHED] if len(finished) > MAX_FINISHED else []:
            item = self.items.pop(jid)
            self.list.takeItem(self.list.row(item))
            del self.jobs[jid]
            del self.states[jid]

    def _menu(self, pos) -> None:
        from studio.engine.queue import JobState

        item = self.list.itemAt(pos)
        if item is None:
            return
        jid = item.data(Qt.ItemDataRole.UserRole)
        state = self.states.get(jid)
        menu = QMenu(self)
        if state is JobState.PENDING:
            menu.addAction("Cancel", lambda: self.cancel_requested.emit(jid))
        elif state is JobState.RUNNING:
            menu.addAction("Stop", self.stop_requested.emit)
        else:
            return
        menu.exec(self.list.viewport().mapToGlobal(pos))
