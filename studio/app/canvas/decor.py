"""Frames (backdrops that carry their nodes) and notes."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QGraphicsItem, QStyleOptionGraphicsItem, QWidget

from studio.app import theme
from studio.graph.workflow import Frame, Note

FRAME_Z = -10.0
NOTE_Z = -0.5
FRAME_TITLE_H = 30.0
GRIP = 14.0


class FrameItem(QGraphicsItem):
    """Grabbed by its title bar (moves it with its nodes) or its corner grip (resizes)."""

    def __init__(self, frame: Frame):
        super().__init__()
        self.frame_id = frame.id
        self.frame = frame
        self.size = (frame.rect[2], frame.rect[3])
        self.setPos(frame.rect[0], frame.rect[1])
        self.setZValue(FRAME_Z)
        self.setFlags(
            QGraphicsItem.GraphicsItemFlag.ItemIsSelectable
            | QGraphicsItem.GraphicsItemFlag.ItemIsMovable
            | QGraphicsItem.GraphicsItemFlag.ItemSendsGeometryChanges
        )
        self._font = QFont(theme.ui_font())
        self._font.setPixelSize(16)
        self._font.setBold(True)

    def rect(self) -> QRectF:
        return QRectF(0, 0, *self.size)

    def scene_rect(self) -> QRectF:
        return self.rect().translated(self.pos())

    def boundingRect(self) -> QRectF:
        return self.rect().adjusted(-2, -2, 2, 2)

    def shape(self) -> QPainterPath:
        path = QPainterPath()
        path.addRect(QRectF(0, 0, self.size[0], FRAME_TITLE_H))
        path.addRect(QRectF(self.size[0] - GRIP, self.size[1] - GRIP, GRIP, GRIP))
        return path

    def in_grip(self, local: QPointF) -> bool:
        return local.x() > self.size[0] - GRIP and local.y() > self.size[1] - GRIP

    def set_size(self, w: float, h: float) -> None:
        self.prepareGeometryChange()
        self.size = (max(w, 120.0), max(h, 80.0))

    def paint(
        self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None
    ) -> None:
        color = QColor(self.frame.color)
        fill = QColor(color)
        fill.setAlpha(70)
        r = self.rect()
        painter.setPen(QPen(QColor(theme.ACCENT), 2) if self.isSelected() else QPen(color, 1.5))
        painter.setBrush(fill)
        painter.drawRoundedRect(r, 8, 8)
        bar = QColor(color)
        bar.setAlpha(170)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(bar)
        path = QPainterPath()
        path.addRoundedRect(QRectF(0, 0, r.width(), FRAME_TITLE_H), 8, 8)
        path.addRect(QRectF(0, FRAME_TITLE_H / 2, r.width(), FRAME_TITLE_H / 2))
        painter.drawPath(path.simplified())
        lod = option.levelOfDetailFromTransform(painter.worldTransform())
        if lod > 0.2:
            painter.setPen(QColor(theme.TEXT))
            painter.setFont(self._font)
            painter.drawText(
                QRectF(12, 0, r.width() - 24, FRAME_TITLE_H),
                Qt.AlignmentFlag.AlignVCenter,
                self.frame.title,
            )
        painter.setPen(QPen(QColor(255, 255, 255, 90), 1.2))
        for d in (4.0, 8.0):
            painter.drawLine(
                QPointF(r.right() - d, r.bottom() - 2), QPointF(r.right() - 2, r.bottom() - d)
            )

    def itemChange(self, change: QGraphicsItem.GraphicsItemChange, value: Any) -> Any:
        if change == QGraphicsItem.GraphicsItemChange.ItemPositionHasChanged:
            sc = self.scene()
            if sc is not None:
                sc.frame_item_moved(self)  # type: ignore[attr-defined]
        return super().itemChange(change, value)


class NoteItem(QGraphicsItem):
    def __init__(self, note: Note):
        super().__init__()
        self.note_id = note.id
        self.note = note
        self.setPos(*note.pos)
        self.setZValue(NOTE_Z)
        self.setFlags(
            QGraphicsItem.GraphicsItemFlag.ItemIsSelectable
            | QGraphicsItem.GraphicsItemFlag.ItemIsMovable
        )
        self._font = QFont(theme.ui_font())
        self._font.setPixelSize(13)

    def rect(self) -> QRectF:
        return QRectF(0, 0, *self.note.size)

    def boundingRect(self) -> QRectF:
        return self.rect().adjusted(-2, -2, 2, 2)

    def paint(
        self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None
    ) -> None:
        r = self.rect()
        painter.setPen(
            QPen(QColor(theme.ACCENT), 2) if self.isSelected() else QPen(QColor("#6b6246"), 1)
        )
        painter.setBrush(QColor("#3d3a2c"))
        painter.drawRoundedRect(r, 5, 5)
        if option.levelOfDetailFromTransform(painter.worldTransform()) < 0.35:
            return
        painter.setFont(self._font)
        painter.setPen(QColor("#e8e0c0") if self.note.text else QColor("#8a8266"))
        painter.drawText(
            r.adjusted(10, 8, -10, -8),
            Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop | Qt.TextFlag.TextWordWrap,
            self.note.text or "Double-click to write a note",
        )
