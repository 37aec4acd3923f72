"""The history of outputs across runs and sessions: captioned thumbnails, newest first.

Each thumbnail says what made it (run, seed, the prompt's first words); the filter above
keeps those whose caption has every word typed. The history is rebuilt at start from
the images in the output folder (their own metadata says what made them), so it lasts
across sessions, and a file deleted there drops out.

Clicking one shows it in the viewer; double-clicking (or "Restore workflow") puts back
the workflow that made it, as one undoable step. Select two to four (Ctrl/Shift-click)
and press C (or "Compare side by side") to see them side by side. Thumbnails drag out
as PNG files.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QPoint, QSize, Qt, Signal
from PySide6.QtGui import QIcon, QKeyEvent, QMouseEvent, QPixmap
from PySide6.QtWidgets import (
    QApplication,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QVBoxLayout,
    QWidget,
)

from studio.app.runner import Output
from studio.saved_outputs import caption, describe

if TYPE_CHECKING:
    from studio.graph.registry import Registry

MAX_OUTPUTS = 100
THUMB = 88
CAPTION_W = 150
MAX_COMPARED = 4
#: Longest side of an earlier session's image until it is shown in the viewer.
SAVED_PREVIEW = 256


class HistoryPanel(QListWidget):
    chosen = Signal(object)  # Output
    restore_requested = Signal(object)
    compare_requested = Signal(object)
    compare_many_requested = Signal(object, object)  # list[Output], their captions
    paint_requested = Signal(object)
    drag_requested = Signal(object)
    _saved_read = Signal(object)  # from the reading thread: list[Output]

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.outputs: list[Output] = []  # newest first, as shown
        # Thumbnails in rows, each with its caption beside it (room for three lines).
        self.setViewMode(QListWidget.ViewMode.ListMode)
        self.setFlow(QListWidget.Flow.LeftToRight)
        self.setWrapping(True)
        self.setIconSize(QSize(THUMB, THUMB))
        self.setGridSize(QSize(THUMB + CAPTION_W, THUMB + 8))
        self.setWordWrap(True)
        self.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.setResizeMode(QListWidget.ResizeMode.Adjust)
        self.setMovement(QListWidget.Movement.Static)
        self.setUniformItemSizes(True)
        self.setSpacing(2)
        self.setSelectionMode(QListWidget.SelectionMode.ExtendedSelection)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(self._menu)
        self.currentRowChanged.connect(self._row_changed)
        self.itemDoubleClicked.connect(
            lambda item: self.restore_requested.emit(self.outputs[self.row(item)])
        )
        self._press: QPoint | None = None
        self._filter: list[str] = []
        self._saved_read.connect(self._add_saved)

    def caption_of(self, out: Output) -> str:
        item = self.item(self.outputs.index(out)) if out in self.outputs else None
        return item.text() if item is not None else _caption(out)

    def add_outputs(self, outputs: list[Output], *, older: bool = False) -> None:
        """Show new outputs first (``older``: after all shown, for an earlier session's)."""
        shown = {o.path for o in self.outputs if o.path}
        for out in outputs:
            if older and out.path in shown:
                continue
            thumb = QPixmap.fromImage(out.image).scaled(
                THUMB,
                THUMB,
                Qt.AspectRatioMode.KeepAspectRatio,
                Qt.TransformationMode.SmoothTransformation,
            )
            text = _caption(out)
            item = QListWidgetItem(QIcon(thumb), text)
            prompt = _describe(out)[1]
            item.setToolTip(
                f"{out.node_title} · {text.splitlines()[0]}"
                + (f"\n{prompt}" if prompt else "")
                + (f"\n{out.path}" if out.path else "")
                + "\nClick: show · Double-click: restore its workflow · Drag: take out as PNG"
                + "\nSelect 2 to 4 and press C: compare side by side"
            )
            self.blockSignals(True)
            row = self.count() if older else 0
            self.insertItem(row, item)
            self.blockSignals(False)
            self.outputs.insert(row, out)
            item.setHidden(not self._matches(item))
        while len(self.outputs) > MAX_OUTPUTS:
            self.outputs.pop()
            self.takeItem(self.count() - 1)

    # -- lasting across sessions ------------------------------------------------------------

    def load_saved(self, folder: Path, registry: Registry) -> threading.Thread:
        """Read the output folder's images back (off the GUI thread); they appear after
        whatever this session already shows. Files no longer there drop out."""
        self.drop_missing()
        thread = threading.Thread(
            target=self._read_saved, args=(folder, registry), name="studio-history", daemon=True
        )
        thread.start()
        return thread

    def _read_saved(self, folder: Path, registry: Registry) -> None:
        outputs = read_saved_outputs(folder, registry)
        with contextlib.suppress(RuntimeError):  # the window closed meanwhile
            self._saved_read.emit(outputs)

    def _add_saved(self, outputs: list[Output]) -> None:
        self.add_outputs(outputs, older=True)

    def drop_missing(self) -> int:
        """Forget outputs whose file is gone from the output folder; how many went."""
        gone = [i for i, o in enumerate(self.outputs) if o.path and not Path(o.path).is_file()]
        for i in reversed(gone):
            self.outputs.pop(i)
            self.takeItem(i)
        return len(gone)

    # -- filter and compare -----------------------------------------------------------------

    def set_filter(self, text: str) -> None:
        """Show only outputs whose caption (or file) holds every word of ``text``."""
        self._filter = text.lower().split()
        for i in range(self.count()):
            item = self.item(i)
            item.setHidden(not self._matches(item))

    def _matches(self, item: QListWidgetItem) -> bool:
        hay = f"{item.text()} {item.toolTip()}".lower()
        return all(w in hay for w in self._filter)

    def selected_outputs(self) -> list[Output]:
        rows = sorted(self.row(i) for i in self.selectedItems() if not i.isHidden())
        return [self.outputs[r] for r in rows]

    def compare_selected(self) -> bool:
        chosen = self.selected_outputs()[:MAX_COMPARED]
        if len(chosen) < 2:
            return False
        captions = [self.caption_of(o) for o in chosen]
        self.compare_many_requested.emit([full_size(o) for o in chosen], captions)
        return True

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() == Qt.Key.Key_C and not event.modifiers() and self.compare_selected():
            return
        super().keyPressEvent(event)

    def output_at(self, row: int) -> Output | None:
        return self.outputs[row] if 0 <= row < len(self.outputs) else None

    def _row_changed(self, row: int) -> None:
        out = self.output_at(row)
        if out is not None:
            self.chosen.emit(full_size(out))

    def _menu(self, pos: QPoint) -> None:
        item = self.itemAt(pos)
        if item is None:
            return
        out = self.outputs[self.row(item)]
        menu = QMenu(self)
        n = len(self.selected_outputs())
        if n >= 2:
            menu.addAction(
                f"Compare side by side ({min(n, MAX_COMPARED)})\tC", self.compare_selected
            )
        menu.addAction("Show", lambda: self.chosen.emit(full_size(out)))
        menu.addAction("Restore its workflow", lambda: self.restore_requested.emit(out))
        menu.addAction("Compare with the viewer's image", lambda: self.compare_requested.emit(out))
        menu.addAction("Inpaint it…", lambda: self.paint_requested.emit(out))
        menu.exec(self.viewport().mapToGlobal(pos))

    # A drag out of the list carries a PNG file, not the list's own item data.
    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            self._press = event.position().toPoint()
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        far = (
            self._press is not None
            and (event.position().toPoint() - self._press).manhattanLength()
            >= QApplication.startDragDistance()
        )
        if far and event.buttons() & Qt.MouseButton.LeftButton:
            item = self.itemAt(self._press)
            self._press = None
            if item is not None:
                self.drag_requested.emit(self.outputs[self.row(item)])
            return
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        self._press = None
        super().mouseReleaseEvent(event)


def full_size(out: Output) -> Output:
    """The output with its full picture (an earlier session's is read from its file now)."""
    if out.pil is None and out.path:
        from PySide6.QtGui import QImageReader

        from studio.app.thumbnails import read_image

        if QImageReader(out.path).size() != out.image.size():
            full = read_image(Path(out.path))
            if not full.isNull():
                out.image = full
    return out


def _describe(out: Output) -> tuple[int | None, str]:
    seed, prompt = describe(out.workflow, out.node_id) if out.workflow else (None, "")
    return (out.seed if seed is None else seed), (prompt or out.prompt)


def _caption(out: Output) -> str:
    seed, prompt = _describe(out)
    return caption(out.run_label or f"run {out.job_id}", seed, prompt)


def read_saved_outputs(folder: Path, registry: Registry) -> list[Output]:
    """The output folder's Studio images as outputs, newest first (any thread)."""
    from studio.app.thumbnails import read_image
    from studio.errors import StudioError
    from studio.graph.fileformat import loads_workflow
    from studio.saved_outputs import scan_outputs

    outputs = []
    for saved in scan_outputs(folder, MAX_OUTPUTS):
        # A small picture until it is shown (100 full images would take gigabytes).
        image = read_image(saved.path, SAVED_PREVIEW)
        if image.isNull():
            continue
        wf = None
        if saved.workflow_json:
            with contextlib.suppress(StudioError, ValueError):
                wf = loads_workflow(saved.workflow_json, registry=registry, path=str(saved.path))
        outputs.append(
            Output(
                image,
                None,
                "",
                "Saved image",
                0,
                wf,
                path=str(saved.path),
                run_label=saved.path.stem,
                seed=saved.seed,
                prompt=saved.prompt,
            )
        )
    return outputs


class HistoryBox(QWidget):
    """The history with its filter field above it (the history dock's content)."""

    def __init__(self, history: HistoryPanel, parent: QWidget | None = None):
        super().__init__(parent)
        self.history = history
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Filter: words of the prompt, a seed, a run…")
        self.filter.setClearButtonEnabled(True)
        self.filter.textChanged.connect(history.set_filter)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addWidget(self.filter)
        lay.addWidget(history, 1)
