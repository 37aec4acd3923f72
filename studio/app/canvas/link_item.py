"""Links (wires) between ports, their reroute points, and the wire being dragged."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QGraphicsItem, QGraphicsPathItem, QStyleOptionGraphicsItem, QWidget

from studio.graph.types import TYPE_COLORS, ValueType

LINK_Z = -1.0
REROUTE_R = 5.0


def wire_path(points: Sequence[QPointF]) -> QPainterPath:
    """A smooth wire through ``points``, leaving and entering each point horizontally."""
    path = QPainterPath(points[0])
    for a, b in itertools.pairwise(points):
        dx = max(abs(b.x() - a.x()) * 0.5, 30.0)
        path.cubicTo(QPointF(a.x() + dx, a.y()), QPointF(b.x() - dx, b.y()), b)
    return path


def type_pen(t: ValueType | None, width: float = 2.2, alpha: int = 230) -> QPen:
    color = QColor(TYPE_COLORS.get(t or ValueType.ANY, "#bdbdbd"))
    color.setAlpha(alpha)
    pen = QPen(color, width)
    pen.setCapStyle(Qt.PenCapStyle.RoundCap)
    return pen


class LinkItem(QGraphicsPathItem):
    """A link of the model; painted by Qt from its path (no Python paint per frame)."""

    def __init__(self, link_id: str, value_type: ValueType | None):
        super().__init__()
        self.link_id = link_id
        self.value_type = value_type
        self.reroute_items: list[RerouteItem] = []
        self._pen = type_pen(value_type)
        self._hover_pen = type_pen(value_type, 4.0, 255)
        self.setPen(self._pen)
        self.setZValue(LINK_Z)
        self.setAcceptHoverEvents(True)
        self.dimmed = False

    def set_points(self, points: Sequence[QPointF]) -> None:
        self.setPath(wire_path(points))

    def set_highlight(self, on: bool) -> None:
        self.setPen(self._hover_pen if on else self._pen)

    def set_dimmed(self, on: bool) -> None:
        if on != self.dimmed:
            self.dimmed = on
            self.setOpacity(0.35 if on else 1.0)

    def hoverEnterEvent(self, event: Any) -> None:
        self.set_highlight(True)

    def hoverLeaveEvent(self, event: Any) -> None:
        self.set_highlight(False)

    def shape(self) -> QPainterPath:
        from PySide6.QtGui import QPainterPathStroker

        stroker = QPainterPathStroker()
        stroker.setWidth(10)
        return stroker.createStroke(self.path())


class RerouteItem(QGraphicsItem):
    """A point a wire passes through; drag it to shape the wire."""

    def __init__(self, link_item: LinkItem, index: int, pos: tuple[float, float]):
        super().__init__()
        self.link_item = link_item
        self.index = index
        self._brush = QBrush(
            QColor(TYPE_COLORS.get(link_item.value_type or ValueType.ANY, "#bdbdbd"))
        )
        self.setFlags(
            QGraphicsItem.GraphicsItemFlag.ItemIsMovable
            | QGraphicsItem.GraphicsItemFlag.ItemIsSelectable
            | QGraphicsItem.GraphicsItemFlag.ItemSendsGeometryChanges
        )
        self.setZValue(LINK_Z + 0.5)
        self.setPos(*pos)

    def boundingRect(self) -> QRectF:
        return QRectF(-REROUTE_R - 2, -REROUTE_R - 2, 2 * REROUTE_R + 4, 2 * REROUTE_R + 4)

    def paint(
        self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None
    ) -> None:
        painter.setPen(QPen(QColor("#f0a040") if self.isSelected() else QColor("#15171a"), 1.5))
        painter.setBrush(self._brush)
        painter.drawEllipse(QPointF(0, 0), REROUTE_R, REROUTE_R)

    def itemChange(self, change: QGraphicsItem.GraphicsItemChange, value: Any) -> Any:
        if change == QGraphicsItem.GraphicsItemChange.ItemPositionHasChanged:
            sc = self.scene()
            if sc is not None:
                sc.reroute_moved(self)  # type: ignore[attr-defined]
        return super().itemChange(change, value)


class DragWire(QGraphicsPathItem):
    """The wire following the cursor while the artist connects ports."""

    def __init__(self, value_type: ValueType | None):
        super().__init__()
        pen = type_pen(value_type, 2.5, 255)
        pen.setStyle(Qt.PenStyle.DashLine)
        self.setPen(pen)
        self.setZValue(1000)


class CutLine(QGraphicsPathItem):
    """The line drawn by Ctrl+right-drag; wires it crosses are cut."""

    def __init__(self, start: QPointF):
        super().__init__()
        pen = QPen(QColor("#ff6b6b"), 1.5, Qt.PenStyle.DashLine)
        pen.setCosmetic(True)
        self.setPen(pen)
        self.setZValue(1001)
        self.start = start
        self.end = start

    def set_end(self, end: QPointF) -> None:
        self.end = end
        path = QPainterPath(self.start)
        path.lineTo(end)
        self.setPath(path)
