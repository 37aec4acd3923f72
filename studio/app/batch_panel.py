"""Run > Batch...: sweep params of the selected nodes, paste a prompt list, set a count;
the batch runs on local worker processes (the GUI computes nothing), its progress shows in
the queue panel, and its images open in a grid to compare and pick from (a pick goes to
the history)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QSize, Qt, Signal, Slot
from PySide6.QtGui import QIcon, QImage, QPixmap
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from studio.graph.types import ValueType

SWEEPABLE = (ValueType.INT, ValueType.FLOAT, ValueType.STRING, ValueType.CHOICE, ValueType.BOOLEAN)
CELL = 128


class BatchDialog(QDialog):
    """What to vary: a values field per param of the selected nodes (``4,5,6`` or a range
    ``4:9:1``), prompts one a line, and a count of new seeds."""

    def __init__(
        self, workflow: Any, node_ids: list[str], output_root: Path, parent: QWidget | None = None
    ):
        super().__init__(parent)
        self.setWindowTitle("Batch")
        self.workflow = workflow
        self.fields: dict[str, QLineEdit] = {}
        form = QFormLayout()
        for nid in node_ids:
            spec = workflow.spec_of(nid)
            title = workflow.display_title(nid)
            for inp in spec.params if spec else ():
                if inp.type not in SWEEPABLE or (inp.type is ValueType.STRING and inp.multiline):
                    continue
                edit = QLineEdit()
                current = workflow.get_node(nid).params.get(inp.name, inp.default)
                edit.setPlaceholderText(f"{current}  (values a,b,c or start:stop:step)")
                edit.textChanged.connect(self._update)
                ref = f"{nid}.{inp.name}"
                self.fields[ref] = edit
                form.addRow(f"{title} · {inp.name}", edit)
        if not self.fields:
            form.addRow(QLabel("Select nodes on the canvas to sweep their params."))
        self.prompts = QPlainTextEdit()
        self.prompts.setPlaceholderText("Prompts, one a line (optional)")
        self.prompts.textChanged.connect(self._update)
        self.count = QSpinBox()
        self.count.setRange(0, 10_000)
        self.count.setSpecialValueText("keep the seed")
        self.count.setToolTip("New random seeds per combination (recorded with the batch)")
        self.count.valueChanged.connect(self._update)
        self.workers = QSpinBox()
        self.workers.setRange(1, 64)
        self.workers.setToolTip("Worker processes, each with its own warm engine")
        self.out = QLineEdit(str(output_root / time.strftime("batch-%Y%m%d-%H%M%S")))
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        self.ok = buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.ok.setText("Run batch")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        more = QFormLayout()
        more.addRow("Prompts", self.prompts)
        more.addRow("Seeds", self.count)
        more.addRow("Workers", self.workers)
        more.addRow("Folder", self.out)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(more)
        lay.addWidget(self.summary)
        lay.addWidget(buttons)
        self._update()

    def sweeps(self) -> dict[str, str]:
        return {ref: e.text().strip() for ref, e in self.fields.items() if e.text().strip()}

    def prompt_list(self) -> list[str] | None:
        lines = [ln.strip() for ln in self.prompts.toPlainText().splitlines() if ln.strip()]
        return lines or None

    def make_batch(self) -> Any:
        from studio.batch import Batch

        return Batch(
            self.workflow,
            sweeps=self.sweeps(),
            prompts=self.prompt_list(),
            count=self.count.value() or None,
        )

    def _update(self, *_: Any) -> None:
        from studio.batch import BatchError

        try:
            jobs = len(self.make_batch().expand().jobs)
        except BatchError as exc:
            self.summary.setText(f"⚠ {exc}")
            self.ok.setEnabled(False)
            return
        self.summary.setText(f"{jobs} image{'s' if jobs != 1 else ''}")
        self.ok.setEnabled(jobs > 0)


class BatchRun(QObject):
    """A batch on a Python thread that only drives the worker processes; its events come
    back as signals on the GUI thread."""

    event = Signal(dict)
    finished = Signal(list)
    failed = Signal(str)

    def __init__(self, batch: Any, out: Path, workers: int, settings: Any = None):
        super().__init__()
        self.batch, self.out, self.workers = batch, Path(out), workers
        if settings is not None:
            batch.settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="studio-batch")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        from studio.errors import StudioError

        try:
            records = self.batch.run(
                self.out, workers=self.workers, on_event=self.event.emit, stop=self._stop
            )
        except StudioError as exc:
            self.failed.emit(str(exc))
            return
        except Exception as exc:  # never a silent dead thread
            self.failed.emit(f"{type(exc).__name__}: {exc}")
            return
        self.finished.emit(records)


class QueueLine(QObject):
    """The batch's line in the queue panel: done/total, images per second, ETA, failures.
    A QObject of the GUI thread, so the batch thread's signals reach it queued."""

    def __init__(self, panel: Any, label: str):
        super().__init__(panel)
        self.item = QListWidgetItem(f"⏳ Batch · {label} · starting")
        panel.list.insertItem(0, self.item)
        self.label = label
        self.total = self.done = self.failed = 0
        self.t0 = time.monotonic()

    @Slot(dict)
    def on_event(self, e: dict[str, Any]) -> None:
        kind = e.get("event")
        if kind == "batch_started":
            self.total, self.done = e["jobs"], e["skipped"]
            self.t0 = time.monotonic()
            self._done_at_start = self.done
        elif kind in ("job_finished", "job_failed"):
            self.done += 1
            self.failed += kind == "job_failed"
        elif kind == "batch_finished":
            mark = "■" if e.get("interrupted") else ("✗" if e["failed"] else "✓")
            text = f"{mark} Batch · {self.label} · {e['ok'] + e['skipped']}/{e['jobs']} images"
            if e["failed"]:
                text += f" · {e['failed']} failed"
            self.item.setText(text + f" · {e['seconds']:.0f} s")
            return
        else:
            return
        ran = self.done - getattr(self, "_done_at_start", 0)
        secs = max(time.monotonic() - self.t0, 1e-6)
        rate = ran / secs
        text = f"▶ Batch · {self.label} · {self.done}/{self.total}"
        if ran:
            eta = (self.total - self.done) / rate if rate else 0
            text += f" · {rate:.2f} img/s · ETA {eta:.0f} s"
        if self.failed:
            text += f" · {self.failed} failed"
        self.item.setText(text)

    @Slot(str)
    def fail(self, message: str) -> None:
        self.item.setText(f"✗ Batch · {self.label} · {message.splitlines()[0]}")
        self.item.setToolTip(message)


class BatchGrid(QDialog):
    """A batch's images as a grid, filled as they arrive: rows by the first param that
    varies, columns by the rest. Clicking shows an image in the viewer; Pick (or a
    double-click) puts it in the history; Stop ends the batch (finished images stay)."""

    chosen = Signal(object)  # an Output
    picked = Signal(object)  # an Output
    stop_requested = Signal()

    def __init__(
        self,
        jobs: list[Any],
        out: Path,
        registry: Any,
        fallback: Any = None,
        parent: QWidget | None = None,
    ):
        super().__init__(parent)
        self.setWindowTitle(f"Batch · {Path(out).name}")
        self.out, self.registry, self.fallback = Path(out), registry, fallback
        keys = _varying(jobs)
        row_key, col_keys = (keys[0], keys[1:]) if keys else (None, [])
        rows = list(dict.fromkeys(_fmt(j.params.get(row_key)) for j in jobs)) if row_key else [""]
        cols = list(dict.fromkeys(_combo(j, col_keys) for j in jobs)) or [""]
        self.table = QTableWidget(len(rows), len(cols))
        self.table.setIconSize(QSize(CELL, CELL))
        self.table.setVerticalHeaderLabels([f"{row_key}={v}" if row_key else "" for v in rows])
        self.table.setHorizontalHeaderLabels(cols)
        self.cells: dict[str, tuple[int, int]] = {}
        self.files: dict[tuple[int, int], tuple[str, str]] = {}  # cell -> (job id, file)
        for job in jobs:
            i = rows.index(_fmt(job.params.get(row_key)) if row_key else "")
            j = cols.index(_combo(job, col_keys))
            if (i, j) in self.cells.values():  # a third axis: one more row, all visible
                self.table.insertRow(self.table.rowCount())
                i = self.table.rowCount() - 1
            item = QTableWidgetItem("…")
            item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
            item.setToolTip("\n".join(f"{k} = {v}" for k, v in job.params.items()))
            self.table.setItem(i, j, item)
            self.cells[job.id] = (i, j)
        for j in range(self.table.columnCount()):
            self.table.setColumnWidth(j, CELL + 12)
        for i in range(self.table.rowCount()):
            self.table.setRowHeight(i, CELL + 12)
        self.table.cellClicked.connect(lambda i, j: self._emit(self.chosen, i, j))
        self.table.cellDoubleClicked.connect(lambda i, j: self._emit(self.picked, i, j))
        self.status = QLabel(f"{len(jobs)} images to make, in {self.out}")
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop_requested.emit)
        pick = QPushButton("Pick into history")
        pick.clicked.connect(self._pick_selected)
        bottom = QHBoxLayout()
        bottom.addWidget(self.status, 1)
        bottom.addWidget(self.stop_button)
        bottom.addWidget(pick)
        lay = QVBoxLayout(self)
        lay.addWidget(self.table, 1)
        lay.addLayout(bottom)
        self.resize(
            min(1200, 160 + len(cols) * (CELL + 14)), min(900, 120 + len(rows) * (CELL + 14))
        )

    @Slot(dict)
    def on_event(self, e: dict[str, Any]) -> None:
        kind = e.get("event")
        if kind == "job_finished" and e.get("files"):
            self._show(e["job"], e["files"][0])
        elif kind == "job_failed" and e.get("job") in self.cells:
            item = self.table.item(*self.cells[e["job"]])
            item.setText("✗")
            item.setToolTip(f"{item.toolTip()}\n\n{e.get('error')}")

    @Slot(list)
    def finish(self, records: list[Any]) -> None:
        for r in records:
            if r.status == "skipped" and r.files:
                self._show(r.job, r.files[0])
        done = sum(r.status in ("ok", "skipped") for r in records)
        self.status.setText(f"{done} of {len(records)} images in {self.out}")
        self.stop_button.setEnabled(False)

    def _show(self, job_id: str, name: str) -> None:
        cell = self.cells.get(job_id)
        if cell is None:
            return
        pix = QPixmap(str(self.out / name))
        item = self.table.item(*cell)
        item.setText("")
        item.setIcon(QIcon(pix.scaled(CELL, CELL, Qt.AspectRatioMode.KeepAspectRatio)))
        self.files[cell] = (job_id, name)

    def _pick_selected(self) -> None:
        for idx in self.table.selectedIndexes():
            self._emit(self.picked, idx.row(), idx.column())

    def _emit(self, signal: Any, i: int, j: int) -> None:
        found = self.files.get((i, j))
        if found is not None:
            signal.emit(self.output_of(*found))

    def output_of(self, job_id: str, name: str) -> Any:
        """An image of the grid as a history Output, with the workflow it carries."""
        from PIL import Image

        from studio.app.runner import Output
        from studio.graph.fileformat import open_any

        path = self.out / name
        try:
            wf = open_any(path, self.registry).workflow
        except Exception:  # a previewed image carries no workflow: the batch's own
            wf = self.fallback
        with Image.open(path) as im:
            pil = im.convert("RGB")
        return Output(QImage(str(path)), pil, "", f"Batch {job_id}", 0, wf)


def _varying(records: list[Any]) -> list[str]:
    keys: dict[str, set[str]] = {}
    for r in records:
        for k, v in r.params.items():
            keys.setdefault(k, set()).add(_fmt(v))
    return [k for k, vs in keys.items() if len(vs) > 1]


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _combo(r: Any, keys: list[str]) -> str:
    return " · ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(r.params.get(k))}" for k in keys)


def open_batch_dialog(window: Any) -> BatchRun | None:
    """Run > Batch...: ask, then run on local workers with a line in the queue panel and
    the grid when it ends. Returns the run (None when cancelled)."""
    settings = window.controller.settings
    dlg = BatchDialog(
        window.controller.wf, window.scene.selected_node_ids(), settings.output_path, window
    )
    if dlg.exec() != QDialog.DialogCode.Accepted:
        return None
    return start_batch(window, dlg.make_batch(), Path(dlg.out.text()), dlg.workers.value())


def start_batch(window: Any, batch: Any, out: Path, workers: int) -> BatchRun:
    """Run ``batch`` into ``out`` on local workers: a line in the queue panel, and the grid
    window at once, filling as images arrive."""
    run = BatchRun(batch, out, workers, window.controller.settings)
    run.line = QueueLine(window.queue_panel, out.name)
    grid = BatchGrid(batch.expand(out).jobs, out, window.registry, batch.workflow, window)
    grid.chosen.connect(window.viewer.show_output)
    grid.picked.connect(lambda o: (window.history.add_outputs([o]), window.viewer.show_output(o)))
    grid.stop_requested.connect(run.stop)
    run.event.connect(run.line.on_event)
    run.event.connect(grid.on_event)
    run.finished.connect(grid.finish)
    run.failed.connect(run.line.fail)
    run.failed.connect(grid.close)
    run.failed.connect(lambda msg: window.show_error("The batch cannot run", msg))
    run.grid = window._batch_grid = grid
    window._batch_runs = [*getattr(window, "_batch_runs", []), run]
    window.queue_dock.raise_()
    grid.show()
    run.start()
    return run
