"""The history of outputs across runs: thumbnails, newest first.

Clicking one shows it in the viewer; double-clicking (or "Restore workflow") puts back
the workflow that made it, as one undoable step. Thumbnails drag out as PNG files.
"""

from __future__ import annotations

from PySide6.QtCore import QPoint, QSize, Qt, Signal
from PySide6.QtGui import QIcon, QMouseEvent, QPixmap
from PySide6.QtWidgets import QApplication, QListWidget, QListWidgetItem, QMenu, QWidget

from studio.app.runner import Output

MAX_OUTPUTS = 100
THUMB = 88


class HistoryPanel(QListWidget):
    chosen = Signal(object)  # Output
    restore_requested = Signal(object)
    compare_requested = Signal(object)
    paint_requested = Signal(object)
    drag_requested = Signal(object)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.outputs: list[Output] = []  # newest first, as shown
        self.setViewMode(QListWidget.ViewMode.IconMode)
        self.setIconSize(QSize(THUMB, THUMB))
        self.setGridSize(QSize(THUMB + 12, THUMB + 12))
        self.setResizeMode(QListWidget.ResizeMode.Adjust)
        self.setMovement(QListWidget.Movement.Static)
        self.setUniformItemSizes(True)
        self.setSpacing(2)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(self._menu)
        self.currentRowChanged.connect(self._row_changed)
        self.itemDoubleClicked.connect(
            lambda item: self.restore_requested.emit(self.outputs[self.row(item)])
        )
        self._press: QPoint | None = None

    def add_outputs(self, outputs: list[Output]) -> None:
        for out in outputs:
            thumb = QPixmap.fromImage(out.image).scaled(
                THUMB,
                THUMB,
                Qt.AspectRatioMode.KeepAspectRatio,
                Qt.TransformationMode.SmoothTransformation,
            )
            item = QListWidgetItem(QIcon(thumb), "")
            item.setToolTip(
                f"{out.node_title} · run {out.job_id}\n"
                "Click: show · Double-click: restore its workflow · Drag: take out as PNG"
            )
            self.blockSignals(True)
            self.insertItem(0, item)
            self.blockSignals(False)
            self.outputs.insert(0, out)
        while len(self.outputs) > MAX_OUTPUTS:
            self.outputs.pop()
            self.takeItem(self.count() - 1)

    def output_at(self, row: int) -> Output | None:
        return self.outputs[row] if 0 <= row < len(self.outputs) else None

    def _row_changed(self, row: int) -> None:
        out = self.output_at(row)
        if out is not None:
            self.chosen.emit(out)

    def _menu(self, pos: QPoint) -> None:
        item = self.itemAt(pos)
        if item is None:
            return
        out = self.outputs[self.row(item)]
        menu = QMenu(self)
        menu.addAction("Show", lambda: self.chosen.emit(out))
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
