"""The node finder: a small popup with a search box and a list of node types."""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, QPoint, Qt, Signal
from PySide6.QtGui import QColor, QKeyEvent
from PySide6.QtWidgets import QFrame, QLabel, QLineEdit, QListWidget, QListWidgetItem, QVBoxLayout

from studio.graph.registry import Registry
from studio.graph.types import ValueType

TYPE_ROLE = Qt.ItemDataRole.UserRole


class NodeSearchPopup(QFrame):
    """Type to find a node type (title, category, type id, description); Enter adds it.

    ``accepts``/``gives`` filter to types that fit a wire dragged to empty canvas.
    """

    chosen = Signal(str)
    cancelled = Signal()

    def __init__(self, registry: Registry, parent=None):
        super().__init__(parent, Qt.WindowType.Popup)
        self.setObjectName("searchPopup")
        self.registry = registry
        self.accepts: ValueType | None = None
        self.gives: ValueType | None = None
        self._done = False
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.setSpacing(4)
        self.hint = QLabel("")
        self.hint.setObjectName("dim")
        self.edit = QLineEdit()
        self.edit.setPlaceholderText("Search nodes…")
        self.edit.setClearButtonEnabled(True)
        self.list = QListWidget()
        self.list.setUniformItemSizes(True)
        lay.addWidget(self.hint)
        lay.addWidget(self.edit)
        lay.addWidget(self.list)
        self.resize(340, 380)
        self.edit.textChanged.connect(self.refresh)
        self.edit.installEventFilter(self)
        self.list.itemActivated.connect(self._activate)
        self.list.itemClicked.connect(self._activate)

    def open_at(
        self,
        global_pos: QPoint,
        *,
        accepts: ValueType | None = None,
        gives: ValueType | None = None,
    ) -> None:
        self.accepts, self.gives = accepts, gives
        self._done = False
        if accepts is not None:
            self.hint.setText(f"Nodes that take {accepts}")
        elif gives is not None:
            self.hint.setText(f"Nodes that give {gives}")
        else:
            self.hint.setText("Add a node")
        self.edit.clear()
        self.refresh()
        self.move(global_pos)
        self.show()
        self.raise_()
        self.edit.setFocus()

    def refresh(self) -> None:
        self.list.clear()
        specs = self.registry.search(
            self.edit.text(), accepts=self.accepts, gives=self.gives, limit=60
        )
        for spec in specs:
            if spec.frontend_only:
                continue
            item = QListWidgetItem(f"{spec.title}    ·  {spec.category}")
            item.setData(TYPE_ROLE, spec.type_id)
            item.setToolTip(spec.description or spec.type_id)
            item.setForeground(QColor("#e4e6ea"))
            self.list.addItem(item)
        if self.list.count():
            self.list.setCurrentRow(0)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if obj is self.edit and event.type() == QEvent.Type.KeyPress:
            key = event.key() if isinstance(event, QKeyEvent) else None
            if key in (Qt.Key.Key_Down, Qt.Key.Key_Up, Qt.Key.Key_PageDown, Qt.Key.Key_PageUp):
                row = self.list.currentRow()
                step = {Qt.Key.Key_Down: 1, Qt.Key.Key_Up: -1, Qt.Key.Key_PageDown: 8}.get(key, -8)
                self.list.setCurrentRow(max(0, min(self.list.count() - 1, row + step)))
                return True
            if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
                item = self.list.currentItem()
                if item is not None:
                    self._activate(item)
                return True
            if key == Qt.Key.Key_Escape:
                self.hide()
                return True
        return super().eventFilter(obj, event)

    def _activate(self, item: QListWidgetItem) -> None:
        if self._done:
            return
        self._done = True
        type_id = item.data(TYPE_ROLE)
        self.hide()
        self.chosen.emit(type_id)

    def hideEvent(self, event) -> None:
        super().hideEvent(event)
        if not self._done:
            self._done = True
            self.cancelled.emit()
