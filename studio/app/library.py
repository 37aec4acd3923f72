"""The node library panel: search box and categories; double-click or drag to add."""

from __future__ import annotations

from PySide6.QtCore import QMimeData, Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import QLineEdit, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget

from studio.app import theme
from studio.app.canvas.view_menus import NODE_TYPE_MIME
from studio.graph.registry import Registry

TYPE_ROLE = Qt.ItemDataRole.UserRole


class _Tree(QTreeWidget):
    def mimeData(self, items: list[QTreeWidgetItem]) -> QMimeData:
        md = QMimeData()
        type_ids = [i.data(0, TYPE_ROLE) for i in items if i.data(0, TYPE_ROLE)]
        if type_ids:
            md.setData(NODE_TYPE_MIME, type_ids[0].encode())
        return md

    def mimeTypes(self) -> list[str]:
        return [NODE_TYPE_MIME]


class LibraryPanel(QWidget):
    add_requested = Signal(str)

    def __init__(self, registry: Registry, parent: QWidget | None = None):
        super().__init__(parent)
        self.registry = registry
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.setSpacing(6)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search nodes…")
        self.search.setClearButtonEnabled(True)
        self.tree = _Tree()
        self.tree.setHeaderHidden(True)
        self.tree.setDragEnabled(True)
        self.tree.setDragDropMode(QTreeWidget.DragDropMode.DragOnly)
        self.tree.setIndentation(14)
        self.tree.setRootIsDecorated(True)
        self.tree.setUniformRowHeights(True)
        lay.addWidget(self.search)
        lay.addWidget(self.tree)
        self.search.textChanged.connect(self.refresh)
        self.tree.itemActivated.connect(self._activated)
        self.refresh()

    def refresh(self) -> None:
        self.tree.clear()
        text = self.search.text().strip()
        if text:
            for spec in self.registry.search(text, limit=80):
                if not spec.frontend_only:
                    self.tree.addTopLevelItem(self._node_item(spec, show_category=True))
            return
        for cat in self.registry.categories():
            top = QTreeWidgetItem([cat.capitalize()])
            top.setFlags(Qt.ItemFlag.ItemIsEnabled)
            top.setForeground(0, QBrush(QColor(theme.TEXT_DIM)))
            swatch = QColor(theme.category_color(cat))
            top.setData(0, Qt.ItemDataRole.DecorationRole, swatch)
            specs = sorted((s for s in self.registry if s.category == cat), key=lambda s: s.title)
            for spec in specs:
                top.addChild(self._node_item(spec))
            self.tree.addTopLevelItem(top)
            top.setExpanded(True)

    def _node_item(self, spec, show_category: bool = False) -> QTreeWidgetItem:
        label = f"{spec.title}   ·  {spec.category}" if show_category else spec.title
        item = QTreeWidgetItem([label])
        item.setData(0, TYPE_ROLE, spec.type_id)
        item.setToolTip(0, spec.description or spec.type_id)
        item.setFlags(
            Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsDragEnabled
        )
        return item

    def _activated(self, item: QTreeWidgetItem, column: int = 0) -> None:
        type_id = item.data(0, TYPE_ROLE)
        if type_id:
            self.add_requested.emit(type_id)
