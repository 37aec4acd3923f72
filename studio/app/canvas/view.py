"""The canvas view: navigation, and turning mouse and keyboard gestures into intents.

Every edit goes through the controller (one undo step per gesture); the view only
moves items live during a drag and reports the end result.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import QEvent, QLineF, QPoint, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QContextMenuEvent,
    QDragEnterEvent,
    QDropEvent,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPen,
    QWheelEvent,
)
from PySide6.QtWidgets import QGraphicsItem, QGraphicsView, QMenu, QWidget

from studio.app import theme
from studio.app.canvas.decor import FrameItem, NoteItem
from studio.app.canvas.editors import InlineEditor, parse_number
from studio.app.canvas.link_item import CutLine, DragWire, LinkItem, RerouteItem, wire_path
from studio.app.canvas.node_item import LOD_SIMPLE, NodeItem
from studio.app.canvas.scene import GraphScene
from studio.app.canvas.shape import ARROW_W, DICE_W, TITLE_H
from studio.app.search import NodeSearchPopup
from studio.graph.types import ValueType, can_connect

NODE_TYPE_MIME = "application/x-studio-node-type"
MIN_ZOOM, MAX_ZOOM = 0.08, 3.0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
SEED_MAX = 2**32 - 1
NODE_COLORS = {
    "Red": "#8a3232",
    "Orange": "#8a5a2b",
    "Yellow": "#7d6d22",
    "Green": "#3f6e3f",
    "Teal": "#2b6b6e",
    "Blue": "#2d5a8a",
    "Purple": "#5b4a8a",
    "Grey": "#4a525c",
}


@dataclass
class _WireDrag:
    node_id: str
    port: str
    from_output: bool
    type: ValueType | None
    wire: DragWire
    detach: str | None = None  # a link picked up from an input by this drag


@dataclass
class _ParamDrag:
    node_id: str
    name: str
    zone: str
    press_x: float
    start: Any
    gesture: int
    field_width: float
    moved: bool = False


@dataclass
class _MoveDrag:
    start: dict[QGraphicsItem, QPointF] = field(default_factory=dict)
    insert_link: str | None = None


class GraphView(QGraphicsView):
    open_file_requested = Signal(str)
    zoom_changed = Signal(float)

    def __init__(self, scene: GraphScene, parent: QWidget | None = None):
        super().__init__(scene, parent)
        self.graph = scene
        self.controller = scene.controller
        self.setRenderHints(QPainter.RenderHint.Antialiasing | QPainter.RenderHint.TextAntialiasing)
        self.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.MinimalViewportUpdate)
        self.setOptimizationFlags(
            QGraphicsView.OptimizationFlag.DontSavePainterState
            | QGraphicsView.OptimizationFlag.DontAdjustForAntialiasing
        )
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setDragMode(QGraphicsView.DragMode.RubberBandDrag)
        self.setRubberBandSelectionMode(Qt.ItemSelectionMode.IntersectsItemShape)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setFrameShape(QGraphicsView.Shape.NoFrame)
        self.setAcceptDrops(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMouseTracking(True)
        self._bg = QColor(theme.CANVAS_BG)
        self._minor = QPen(QColor(theme.GRID_MINOR), 0)
        self._major = QPen(QColor(theme.GRID_MAJOR), 0)
        self.search = NodeSearchPopup(self.controller.registry, self)
        self.search.chosen.connect(self._search_chosen)
        self._search_pos = QPointF()
        self._search_link: dict[str, tuple[str, str]] = {}
        self._wire: _WireDrag | None = None
        self._param: _ParamDrag | None = None
        self._move: _MoveDrag | None = None
        self._pan_last: QPoint | None = None
        self._cut: CutLine | None = None
        self._resize: tuple[FrameItem, QPointF, tuple[float, float]] | None = None
        self._space = False
        self._suppress_menu = False
        self.editor: InlineEditor | None = None
        self.last_scene_pos = QPointF(0, 0)
        self.centerOn(0, 0)

    # -- navigation ---------------------------------------------------------------------

    @property
    def zoom(self) -> float:
        return self.transform().m11()

    def set_zoom(self, z: float, center: QPointF | None = None) -> None:
        z = max(MIN_ZOOM, min(MAX_ZOOM, z))
        c = center if center is not None else self.mapToScene(self.viewport().rect().center())
        self.resetTransform()
        self.scale(z, z)
        self.centerOn(c)
        self._zoom_applied()

    def _zoom_applied(self) -> None:
        # Antialiasing costs most and shows least when zoomed far out.
        self.setRenderHint(QPainter.RenderHint.Antialiasing, self.zoom > 0.3)
        self.graph.set_overview(self.zoom < LOD_SIMPLE)
        self.zoom_changed.emit(self.zoom)

    def wheelEvent(self, event: QWheelEvent) -> None:
        self._close_editor()
        delta = event.angleDelta().y() or event.angleDelta().x()
        if not delta:
            return
        factor = 1.0015**delta
        target = max(MIN_ZOOM, min(MAX_ZOOM, self.zoom * factor))
        factor = target / self.zoom
        if abs(factor - 1.0) > 1e-6:
            self.scale(factor, factor)
            self._zoom_applied()

    def fit_items(self, items: list[QGraphicsItem] | None = None) -> None:
        r = self.graph.items_bounds(items)
        if r.isEmpty():
            self.set_zoom(1.0, QPointF(0, 0))
            return
        r = r.adjusted(-60, -60, 60, 60)
        vw, vh = max(self.viewport().width(), 1), max(self.viewport().height(), 1)
        z = min(vw / r.width(), vh / r.height(), 1.0)
        self.set_zoom(z, r.center())

    def fit_selection(self) -> None:
        sel = self.graph.selectedItems()
        self.fit_items(sel or None)

    def pan_by(self, dx: float, dy: float) -> None:
        h, v = self.horizontalScrollBar(), self.verticalScrollBar()
        h.setValue(round(h.value() + dx))
        v.setValue(round(v.value() + dy))

    def viewport_state(self) -> dict[str, Any]:
        c = self.mapToScene(self.viewport().rect().center())
        return {"center": [round(c.x(), 1), round(c.y(), 1)], "zoom": round(self.zoom, 4)}

    def apply_viewport_state(self, state: dict[str, Any]) -> bool:
        try:
            cx, cy = (float(v) for v in state["center"])
            z = float(state["zoom"])
        except (KeyError, TypeError, ValueError):
            return False
        if not all(map(math.isfinite, (cx, cy, z))) or z <= 0:
            return False
        self.set_zoom(z, QPointF(cx, cy))
        return True

    def drawForeground(self, painter: QPainter, rect: QRectF) -> None:
        if self.graph._overview_on:
            self.graph.paint_overview(painter)

    def drawBackground(self, painter: QPainter, rect: QRectF) -> None:
        painter.fillRect(rect, self._bg)
        z = self.zoom
        if z < 0.25:
            return
        step = 24.0
        left = math.floor(rect.left() / step) * step
        top = math.floor(rect.top() / step) * step
        minor, major = [], []
        x = left
        while x < rect.right():
            (major if round(x / step) % 5 == 0 else minor).append(
                QLineF(x, rect.top(), x, rect.bottom())
            )
            x += step
        y = top
        while y < rect.bottom():
            (major if round(y / step) % 5 == 0 else minor).append(
                QLineF(rect.left(), y, rect.right(), y)
            )
            y += step
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        if z > 0.5:
            painter.setPen(self._minor)
            painter.drawLines(minor)
        painter.setPen(self._major)
        painter.drawLines(major)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, z > 0.3)

    # -- keyboard -------------------------------------------------------------------------

    def event(self, event: QEvent) -> bool:
        # Tab opens the node finder instead of moving focus.
        if (
            event.type() == QEvent.Type.KeyPress
            and isinstance(event, QKeyEvent)
            and event.key() == Qt.Key.Key_Tab
            and not event.modifiers()
        ):
            self.open_search(self.last_scene_pos)
            return True
        return super().event(event)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = event.key()
        if key == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space = True
            self.viewport().setCursor(Qt.CursorShape.OpenHandCursor)
            return
        if key == Qt.Key.Key_Home:
            self.fit_items()
            return
        if key == Qt.Key.Key_Period:
            self.fit_selection()
            return
        if key == Qt.Key.Key_Escape and self._wire is not None:
            self._end_wire()
            return
        super().keyPressEvent(event)

    def keyReleaseEvent(self, event: QKeyEvent) -> None:
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space = False
            self.viewport().unsetCursor()
            return
        super().keyReleaseEvent(event)

    # -- mouse ------------------------------------------------------------------------------

    def _scene_pos(self, event: QMouseEvent | QDropEvent | QContextMenuEvent) -> QPointF:
        p = event.position().toPoint() if hasattr(event, "position") else event.pos()
        return self.mapToScene(p)

    def _item_at(self, scene_pos: QPointF) -> QGraphicsItem | None:
        for item in self.graph.items(
            scene_pos, Qt.ItemSelectionMode.IntersectsItemShape, Qt.SortOrder.DescendingOrder
        ):
            if isinstance(item, DragWire | CutLine):
                continue
            return item
        return None

    def mousePressEvent(self, event: QMouseEvent) -> None:
        self._close_editor()
        pos = self._scene_pos(event)
        self.last_scene_pos = pos
        button, mods = event.button(), event.modifiers()
        if button == Qt.MouseButton.MiddleButton or (
            button == Qt.MouseButton.LeftButton and self._space
        ):
            self._pan_last = event.position().toPoint()
            self.viewport().setCursor(Qt.CursorShape.ClosedHandCursor)
            return
        if button == Qt.MouseButton.RightButton and mods & Qt.KeyboardModifier.ControlModifier:
            self._cut = CutLine(pos)
            self.graph.addItem(self._cut)
            self._suppress_menu = True
            return
        if button == Qt.MouseButton.LeftButton:
            item = self._item_at(pos)
            if isinstance(item, NodeItem):
                hit = item.hit(item.mapFromScene(pos))
                if hit.kind == "port_out":
                    self._begin_wire(item, hit.name, True, pos)  # type: ignore[arg-type]
                    return
                if hit.kind == "port_in":
                    self._begin_wire_from_input(item, hit.name, pos)  # type: ignore[arg-type]
                    return
                if hit.kind == "param":
                    if not item.isSelected():
                        self.graph.clearSelection()
                        item.setSelected(True)
                    self._begin_param(item, hit.name, hit.zone or "field", pos)  # type: ignore[arg-type]
                    return
                if hit.kind == "collapse":
                    self.controller.toggle_collapse([item.node_id])
                    return
                if mods & Qt.KeyboardModifier.ShiftModifier:
                    item.setSelected(not item.isSelected())
                    return
            if isinstance(item, FrameItem) and item.in_grip(item.mapFromScene(pos)):
                self._resize = (item, pos, item.size)
                return
        super().mousePressEvent(event)
        if button == Qt.MouseButton.LeftButton:
            self._begin_move()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        pos = self._scene_pos(event)
        self.last_scene_pos = pos
        if self._pan_last is not None:
            p = event.position().toPoint()
            d = p - self._pan_last
            self._pan_last = p
            self.pan_by(-d.x(), -d.y())
            return
        if self._cut is not None:
            self._cut.set_end(pos)
            return
        if self._wire is not None:
            self._update_wire(pos)
            return
        if self._param is not None:
            self._drag_param(pos)
            return
        if self._resize is not None:
            item, start, size = self._resize
            d = pos - start
            item.set_size(size[0] + d.x(), size[1] + d.y())
            return
        super().mouseMoveEvent(event)
        if self._move is not None and event.buttons() & Qt.MouseButton.LeftButton:
            self._track_insert_target()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        pos = self._scene_pos(event)
        if self._pan_last is not None:
            self._pan_last = None
            if self._space:
                self.viewport().setCursor(Qt.CursorShape.OpenHandCursor)
            else:
                self.viewport().unsetCursor()
            return
        if self._cut is not None:
            self._finish_cut()
            return
        if self._wire is not None:
            self._finish_wire(pos)
            return
        if self._param is not None:
            self._finish_param()
            return
        if self._resize is not None:
            item, _, _ = self._resize
            self._resize = None
            r = item.scene_rect()
            self.controller.move(
                {},
                frames={item.frame_id: (r.x(), r.y(), r.width(), r.height())},
                label="Resize frame",
            )
            return
        super().mouseReleaseEvent(event)
        self._finish_move()

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        pos = self._scene_pos(event)
        item = self._item_at(pos)
        if isinstance(item, NodeItem):
            hit = item.hit(item.mapFromScene(pos))
            if hit.kind == "title":
                self.rename_node(item)
            elif hit.kind == "param":
                self._edit_param_text(item, hit.name)  # type: ignore[arg-type]
            return
        if isinstance(item, RerouteItem):
            self.controller.remove_reroute(item.link_item.link_id, item.index)
            return
        if isinstance(item, LinkItem):
            self.add_reroute(item, pos)
            return
        if isinstance(item, FrameItem):
            self.rename_frame(item)
            return
        if isinstance(item, NoteItem):
            self.edit_note(item)
            return
        self.open_search(pos)

    # -- moving -----------------------------------------------------------------------------

    def _begin_move(self) -> None:
        start: dict[QGraphicsItem, QPointF] = {}
        for item in self.graph.selectedItems():
            if item.flags() & QGraphicsItem.GraphicsItemFlag.ItemIsMovable:
                start[item] = item.pos()
        for item in list(start):
            if isinstance(item, FrameItem):
                carried = [i for i in self.graph.nodes_in_frame(item) if not i.isSelected()]
                item.carried = carried  # type: ignore[attr-defined]
                item.last_pos = item.pos()  # type: ignore[attr-defined]
                for c in carried:
                    start[c] = c.pos()
        self._move = _MoveDrag(start) if start else None

    def _track_insert_target(self) -> None:
        mv = self._move
        assert mv is not None
        nodes = [i for i in mv.start if isinstance(i, NodeItem)]
        target: str | None = None
        if len(nodes) == 1 and len(mv.start) == 1:
            node = nodes[0]
            if not self.graph._links_of.get(node.node_id):
                r = node.sceneBoundingRect()
                probe = QRectF(r.center().x() - 20, r.top() + 6, 40, min(r.height() - 12, 40))
                for it in self.graph.items(probe):
                    if isinstance(it, LinkItem) and self.controller.insert_on_link_ops(
                        node.node_id, it.link_id
                    ):
                        target = it.link_id
                        break
        if target != mv.insert_link:
            if mv.insert_link in self.graph.links:
                self.graph.links[mv.insert_link].set_highlight(False)
            if target is not None:
                self.graph.links[target].set_highlight(True)
            mv.insert_link = target

    def _finish_move(self) -> None:
        mv, self._move = self._move, None
        if mv is None:
            return
        for item in mv.start:
            if isinstance(item, FrameItem):
                item.carried = None  # type: ignore[attr-defined]
        nodes: dict[str, tuple[float, float]] = {}
        frames: dict[str, tuple[float, float, float, float]] = {}
        notes: dict[str, tuple[float, float]] = {}
        reroutes: dict[str, list[tuple[float, float]]] = {}
        for item, p0 in mv.start.items():
            if item.pos() == p0:
                continue
            p = (item.pos().x(), item.pos().y())
            if isinstance(item, NodeItem):
                nodes[item.node_id] = p
            elif isinstance(item, FrameItem):
                frames[item.frame_id] = (p[0], p[1], *item.size)
            elif isinstance(item, NoteItem):
                notes[item.note_id] = p
            elif isinstance(item, RerouteItem):
                link = item.link_item
                reroutes[link.link_id] = [(h.pos().x(), h.pos().y()) for h in link.reroute_items]
        extra: list[Any] = []
        label = None
        if mv.insert_link is not None:
            if mv.insert_link in self.graph.links:
                self.graph.links[mv.insert_link].set_highlight(False)
            if len(nodes) == 1:
                nid = next(iter(nodes))
                extra = self.controller.insert_on_link_ops(nid, mv.insert_link)
                label = f"Insert {self.controller.title(nid)}" if extra else None
        if nodes or frames or notes or reroutes:
            self.controller.move(nodes, frames, notes, reroutes, extra_ops=extra, label=label)

    # -- wires ------------------------------------------------------------------------------

    def _begin_wire(
        self, item: NodeItem, port: str, from_output: bool, pos: QPointF, detach: str | None = None
    ) -> None:
        t = item.port_type(port, from_output)
        wire = DragWire(t)
        self.graph.addItem(wire)
        self._wire = _WireDrag(item.node_id, port, from_output, t, wire, detach)
        if detach is not None and detach in self.graph.links:
            self.graph.links[detach].set_dimmed(True)
        self.graph.set_drag_hint((t, from_output) if t is not None else None)
        self._update_wire(pos)

    def _begin_wire_from_input(self, item: NodeItem, port: str, pos: QPointF) -> None:
        link = self.controller.wf.link_into(item.node_id, port)
        if link is None:
            self._begin_wire(item, port, False, pos)
            return
        # Pick the wire up from the input: it now trails from its source.
        src = self.graph.nodes.get(link.source)
        if src is None:
            return
        self._begin_wire(src, link.output, True, pos, detach=link.id)

    def _update_wire(self, pos: QPointF) -> None:
        w = self._wire
        assert w is not None
        item = self.graph.nodes.get(w.node_id)
        if item is None:
            return
        port = item.port_scene_pos(w.port, w.from_output)
        target = self._wire_target(pos)
        end = pos
        if target is not None:
            t_item, t_port = target
            end = t_item.port_scene_pos(t_port, not w.from_output)
        w.wire.setPath(wire_path([port, end] if w.from_output else [end, port]))

    def _wire_target(self, pos: QPointF) -> tuple[NodeItem, str] | None:
        """The port a dragged wire would connect to if released at ``pos``."""
        w = self._wire
        assert w is not None
        node = self.graph.node_at(pos)
        if node is None:
            # Ports stick out of the node's edge; look a little around the cursor too.
            for item in self.graph.items(QRectF(pos.x() - 8, pos.y() - 8, 16, 16)):
                if isinstance(item, NodeItem):
                    node = item
                    break
        if node is None or node.node_id == w.node_id:
            return None
        hit = node.hit(node.mapFromScene(pos))
        want = "port_in" if w.from_output else "port_out"
        if hit.kind == want:
            return node, hit.name  # type: ignore[return-value]
        if hit.kind.startswith("port"):
            return None
        # Released on a node's body: take its first port that fits, a free one first.
        ports = node.shape_.inputs if w.from_output else node.shape_.outputs
        fits = [
            p.name
            for p in ports.values()
            if w.type is None
            or (can_connect(w.type, p.type) if w.from_output else can_connect(p.type, w.type))
        ]
        if w.from_output:
            free = [n for n in fits if n not in node.linked and not node.shape_.inputs[n].is_param]
            fits = free or [n for n in fits if not node.shape_.inputs[n].is_param] or fits
        return (node, fits[0]) if fits else None

    def _end_wire(self) -> None:
        w, self._wire = self._wire, None
        if w is None:
            return
        self.graph.removeItem(w.wire)
        if w.detach is not None and w.detach in self.graph.links:
            self.graph.links[w.detach].set_dimmed(False)
        self.graph.set_drag_hint(None)

    def _finish_wire(self, pos: QPointF) -> None:
        w = self._wire
        assert w is not None
        self._end_wire()
        node = self.graph.node_at(pos)
        if node is None:
            for item in self.graph.items(QRectF(pos.x() - 8, pos.y() - 8, 16, 16)):
                if isinstance(item, NodeItem):
                    node = item
                    break
        if node is not None:
            if node.node_id == w.node_id:
                return
            self._wire = w  # _wire_target reads it
            target = self._wire_target(pos)
            self._wire = None
            if target is None:
                hit = node.hit(node.mapFromScene(pos))
                if hit.kind in ("port_in", "port_out") and hit.name:
                    # An explicit port of the wrong type: say why nothing happened.
                    if w.from_output and hit.kind == "port_in":
                        self.controller.connect(w.node_id, w.port, node.node_id, hit.name)
                    elif not w.from_output and hit.kind == "port_out":
                        self.controller.connect(node.node_id, hit.name, w.node_id, w.port)
                else:
                    self.controller.message.emit(
                        f"{self.controller.title(node.node_id)} has no port for {w.type}"
                    )
                return
            t_node, t_port = target
            if w.from_output:
                self.controller.connect(w.node_id, w.port, t_node.node_id, t_port, detach=w.detach)
            else:
                self.controller.connect(t_node.node_id, t_port, w.node_id, w.port)
            return
        if w.detach is not None:
            self.controller.disconnect([w.detach])
            return
        if w.from_output:
            self._search_link = {"link_from": (w.node_id, w.port)}
            self.open_search(pos, accepts=w.type, keep_link=True)
        else:
            self._search_link = {"link_to": (w.node_id, w.port)}
            self.open_search(pos, gives=w.type, keep_link=True)

    def _finish_cut(self) -> None:
        cut, self._cut = self._cut, None
        assert cut is not None
        self.graph.removeItem(cut)
        if (cut.end - cut.start).manhattanLength() < 3:
            self._suppress_menu = False
            return
        path = cut.path()
        hit = [
            it.link_id
            for it in self.graph.items(path, Qt.ItemSelectionMode.IntersectsItemShape)
            if isinstance(it, LinkItem) and it.path().intersects(_thin(cut.start, cut.end))
        ]
        if hit:
            self.controller.disconnect(hit, label=f"Cut {len(hit)} wire(s)")

    # -- params -----------------------------------------------------------------------------

    def _begin_param(self, item: NodeItem, name: str, zone: str, pos: QPointF) -> None:
        f = item.shape_.params[name]
        value = item.node.params.get(name, f.spec.default)
        self._param = _ParamDrag(
            item.node_id, name, zone, pos.x(), value, self.controller.new_gesture(), f.rect.width()
        )

    def _drag_param(self, pos: QPointF) -> None:
        p = self._param
        assert p is not None
        spec = self.controller.spec(p.node_id)
        inp = spec.input(p.name) if spec else None
        if inp is None or inp.type not in (ValueType.INT, ValueType.FLOAT):
            return
        dx = (pos.x() - p.press_x) * self.zoom
        if not p.moved and abs(dx) < 4:
            return
        p.moved = True
        start = p.start if isinstance(p.start, int | float) else 0
        lo, hi = inp.min, inp.max
        if lo is not None and hi is not None and 0 < hi - lo <= 10_000:
            value = start + (pos.x() - p.press_x) / max(p.field_width, 1) * (hi - lo)
        else:
            step = inp.step or (1 if inp.type is ValueType.INT else 0.01)
            value = start + round(dx / 4) * step
        self.controller.set_param(p.node_id, p.name, _fit(inp, value), gesture=p.gesture)

    def _finish_param(self) -> None:
        p, self._param = self._param, None
        assert p is not None
        if p.moved:
            return
        item = self.graph.nodes.get(p.node_id)
        spec = self.controller.spec(p.node_id)
        inp = spec.input(p.name) if spec else None
        if item is None or inp is None:
            return
        value = item.node.params.get(p.name, inp.default)
        t = inp.type
        if t is ValueType.BOOLEAN:
            self.controller.set_param(p.node_id, p.name, not bool(value))
        elif t is ValueType.CHOICE:
            self._choose(item, p.name)
        elif t in (ValueType.INT, ValueType.FLOAT):
            step = inp.step or (1 if t is ValueType.INT else 0.01)
            base = value if isinstance(value, int | float) else 0
            if p.zone == "dice":
                self.controller.set_param(p.node_id, p.name, _fit(inp, random.randint(0, SEED_MAX)))
            elif p.zone == "dec":
                self.controller.set_param(p.node_id, p.name, _fit(inp, base - step))
            elif p.zone == "inc":
                self.controller.set_param(p.node_id, p.name, _fit(inp, base + step))
            else:
                self._edit_param_text(item, p.name)
        else:
            self._edit_param_text(item, p.name)

    def _field_rect_in_view(self, item: NodeItem, name: str):
        f = item.shape_.params[name]
        return self.mapFromScene(item.mapToScene(f.rect)).boundingRect()

    def _edit_param_text(self, item: NodeItem, name: str) -> None:
        spec = self.controller.spec(item.node_id)
        inp = spec.input(name) if spec else None
        if inp is None or name in item.linked or inp.type in (ValueType.BOOLEAN, ValueType.CHOICE):
            return
        value = item.node.params.get(name, inp.default)
        rect = self._field_rect_in_view(item, name)
        node_id = item.node_id
        if inp.type in (ValueType.INT, ValueType.FLOAT):
            rect = rect.adjusted(round(ARROW_W * self.zoom), 0, -round(ARROW_W * self.zoom), 0)
            if inp.seed:
                rect.adjust(0, 0, -round(DICE_W * self.zoom), 0)

            def commit(text: str) -> None:
                v = parse_number(text, inp.type is ValueType.INT)
                if v is None:
                    self.controller.message.emit(f"{text!r} is not a number")
                    return
                self.controller.set_param(node_id, name, _fit(inp, v))

            self._open_editor(rect, str(value if value is not None else ""), commit)
        else:
            self._open_editor(
                rect,
                str(value or ""),
                lambda text: self.controller.set_param(node_id, name, text),
                multiline=inp.multiline,
            )

    def _choose(self, item: NodeItem, name: str) -> None:
        spec = self.controller.spec(item.node_id)
        inp = spec.input(name) if spec else None
        if inp is None:
            return
        menu = QMenu(self)
        current = item.node.params.get(name, inp.default)
        choices = inp.choice_list()
        if not choices:
            act = menu.addAction("(nothing to choose from)")
            act.setEnabled(False)
        for choice in choices:
            act = menu.addAction(choice)
            act.setCheckable(True)
            act.setChecked(choice == current)
            act.triggered.connect(
                lambda _=False, v=choice: self.controller.set_param(item.node_id, name, v)
            )
        rect = self._field_rect_in_view(item, name)
        menu.setMinimumWidth(rect.width())
        menu.exec(self.viewport().mapToGlobal(rect.bottomLeft()))

    def _open_editor(self, rect, text: str, on_commit, multiline: bool = False) -> None:
        self._close_editor()
        if multiline:
            rect = rect.adjusted(0, 0, 0, round(80 * self.zoom))
        self.editor = InlineEditor(
            self.viewport(), rect, text, on_commit, multiline=multiline, zoom=self.zoom
        )

    def _close_editor(self, commit: bool = True) -> None:
        ed, self.editor = self.editor, None
        if ed is not None and not ed.closed:
            ed.commit() if commit else ed.cancel()

    def rename_node(self, item: NodeItem) -> None:
        rect = self.mapFromScene(
            item.mapToScene(QRectF(20, 2, item.shape_.width - 24, TITLE_H - 4))
        )
        self._open_editor(
            rect.boundingRect(),
            item.title_text(),
            lambda text: self.controller.set_title(
                item.node_id,
                "" if text.strip() == (item.spec.title if item.spec else "") else text.strip(),
            ),
        )

    def rename_frame(self, item: FrameItem) -> None:
        rect = self.mapFromScene(item.mapToScene(QRectF(6, 2, item.size[0] - 12, 26)))
        self._open_editor(
            rect.boundingRect(),
            item.frame.title,
            lambda text: self.controller.edit_frame(item.frame_id, "Rename frame", title=text),
        )

    def edit_note(self, item: NoteItem) -> None:
        rect = self.mapFromScene(item.mapToScene(item.rect())).boundingRect()
        note_id = item.note_id
        self._open_editor(
            rect.adjusted(0, 0, 0, -round(80 * self.zoom)),
            item.note.text,
            lambda text: self.controller.edit_note(note_id, "Edit note", text=text),
            multiline=True,
        )

    def add_reroute(self, link: LinkItem, pos: QPointF) -> None:
        lk = self.controller.wf.get_link(link.link_id)
        if lk is None:
            return
        pts = [(h.pos().x(), h.pos().y()) for h in link.reroute_items]
        src = self.graph.nodes[lk.source].port_scene_pos(lk.output, True)
        dst = self.graph.nodes[lk.target].port_scene_pos(lk.input, False)
        chain = [(src.x(), src.y()), *pts, (dst.x(), dst.y())]
        p = (pos.x(), pos.y())
        best = min(
            range(len(chain) - 1),
            key=lambda i: (
                math.dist(chain[i], p)
                + math.dist(p, chain[i + 1])
                - math.dist(chain[i], chain[i + 1])
            ),
        )
        self.controller.add_reroute(link.link_id, p, best)

    # -- search -------------------------------------------------------------------------------

    def open_search(
        self,
        scene_pos: QPointF,
        *,
        accepts: ValueType | None = None,
        gives: ValueType | None = None,
        keep_link: bool = False,
    ) -> None:
        if not keep_link:
            self._search_link = {}
        self._search_pos = scene_pos
        global_pos = self.viewport().mapToGlobal(self.mapFromScene(scene_pos))
        self.search.open_at(global_pos, accepts=accepts, gives=gives)

    def _search_chosen(self, type_id: str) -> None:
        pos = self._search_pos
        kwargs, self._search_link = self._search_link, {}
        spec = self.controller.registry.get(type_id)
        x, y = pos.x(), pos.y()
        if spec is not None and "link_to" in kwargs:
            x -= 230  # a node feeding an input goes to the left of the cursor
        node_id = self.controller.add_node(type_id, (x, y), **kwargs)
        if node_id is not None:
            self.graph.select_nodes([node_id])

    # -- context menus ------------------------------------------------------------------------

    def contextMenuEvent(self, event: QContextMenuEvent) -> None:
        if self._suppress_menu or event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            self._suppress_menu = False
            return
        pos = self.mapToScene(event.pos())
        self.last_scene_pos = pos
        item = self._item_at(pos)
        menu = QMenu(self)
        c = self.controller
        if isinstance(item, NodeItem):
            if not item.isSelected():
                self.graph.clearSelection()
                item.setSelected(True)
            ids = self.graph.selected_node_ids()
            menu.addAction("Rename…", lambda: self.rename_node(item))
            menu.addAction("Collapse / Expand", lambda: c.toggle_collapse(ids))
            menu.addAction("Bypass\tCtrl+B", lambda: c.toggle_bypass(ids))
            menu.addAction("Mute\tCtrl+M", lambda: c.toggle_mute(ids))
            pinned = item.layout.pinned
            menu.addAction(
                "Unpin" if pinned else "Pin", lambda: c.set_layout(ids, "Pin", pinned=not pinned)
            )
            colors = menu.addMenu("Colour")
            colors.addAction("Default", lambda: c.set_layout(ids, "Colour", color=None))
            for label, hexcolor in NODE_COLORS.items():
                colors.addAction(label, lambda h=hexcolor: c.set_layout(ids, "Colour", color=h))
            menu.addSeparator()
            menu.addAction("Duplicate\tCtrl+D", lambda: self.graph.select_nodes(c.duplicate(ids)))
            menu.addAction("Delete\tDel", lambda: c.delete(ids))
        elif isinstance(item, RerouteItem):
            menu.addAction(
                "Remove reroute", lambda: c.remove_reroute(item.link_item.link_id, item.index)
            )
        elif isinstance(item, LinkItem):
            menu.addAction("Add reroute here", lambda: self.add_reroute(item, pos))
            menu.addAction("Delete wire", lambda: c.disconnect([item.link_id], "Delete wire"))
        elif isinstance(item, FrameItem):
            menu.addAction("Rename frame…", lambda: self.rename_frame(item))
            colors = menu.addMenu("Colour")
            for label, hexcolor in NODE_COLORS.items():
                colors.addAction(
                    label, lambda h=hexcolor: c.edit_frame(item.frame_id, "Frame colour", color=h)
                )
            menu.addAction("Delete frame", lambda: c.delete(frame_ids=[item.frame_id]))
        elif isinstance(item, NoteItem):
            menu.addAction("Edit note…", lambda: self.edit_note(item))
            menu.addAction("Delete note", lambda: c.delete(note_ids=[item.note_id]))
        else:
            add = menu.addMenu("Add node")
            reg = c.registry
            for cat in reg.categories():
                sub = add.addMenu(cat.capitalize())
                for spec in sorted((s for s in reg if s.category == cat), key=lambda s: s.title):
                    sub.addAction(
                        spec.title,
                        lambda t=spec.type_id: self.graph.select_nodes(
                            [n] if (n := c.add_node(t, (pos.x(), pos.y()))) else []
                        ),
                    )
            menu.addAction("Search nodes…\tTab", lambda: self.open_search(pos))
            menu.addSeparator()
            menu.addAction("Add frame", lambda: self.add_frame_around_selection(pos))
            menu.addAction("Add note", lambda: c.add_note((pos.x(), pos.y())))
            menu.addSeparator()
            menu.addAction("Fit all\tHome", self.fit_items)
        menu.exec(event.globalPos())

    def add_frame_around_selection(self, pos: QPointF | None = None) -> None:
        sel = [i for i in self.graph.selectedItems() if isinstance(i, NodeItem | NoteItem)]
        if sel:
            r = self.graph.items_bounds(sel).adjusted(-24, -50, 24, 24)
        else:
            p = pos or self.last_scene_pos
            r = QRectF(p.x(), p.y(), 420, 300)
        self.controller.add_frame((r.x(), r.y(), r.width(), r.height()))

    # -- drops ------------------------------------------------------------------------------

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        md = event.mimeData()
        if md.hasFormat(NODE_TYPE_MIME) or md.hasUrls():
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event: Any) -> None:
        event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        md = event.mimeData()
        pos = self._scene_pos(event)
        if md.hasFormat(NODE_TYPE_MIME):
            type_id = bytes(md.data(NODE_TYPE_MIME).data()).decode()
            node_id = self.controller.add_node(type_id, (pos.x(), pos.y()))
            if node_id:
                self.graph.select_nodes([node_id])
            event.acceptProposedAction()
            return
        for url in md.urls():
            path = url.toLocalFile()
            if not path:
                continue
            if path.lower().endswith(".json"):
                self.open_file_requested.emit(path)
            elif path.lower().endswith(IMAGE_SUFFIXES):
                self.drop_image(path, pos)
        event.acceptProposedAction()

    def drop_image(self, path: str, pos: QPointF) -> None:
        """An image dropped on an image-loading node replaces its image; elsewhere adds one."""
        reg = self.controller.registry

        def image_param(type_id: str) -> str | None:
            spec = reg.get(type_id)
            if spec is None:
                return None
            return next((i.name for i in spec.params if i.file_kind == "image"), None)

        node = self.graph.node_at(pos)
        if node is not None and (name := image_param(node.node.type)):
            self.controller.set_param(node.node_id, name, path)
            return
        loader = next((s for s in reg if image_param(s.type_id)), None)
        if loader is None:
            self.controller.message.emit("no node type here loads images")
            return
        name = image_param(loader.type_id)
        assert name is not None
        self.controller.add_node(loader.type_id, (pos.x(), pos.y()), params={name: str(Path(path))})


def _fit(inp: Any, value: float) -> int | float:
    """Clamp to the spec's range and snap to its step."""
    if inp.min is not None:
        value = max(inp.min, value)
    if inp.max is not None:
        value = min(inp.max, value)
    if inp.type is ValueType.INT:
        return round(value)
    step = inp.step
    if step:
        value = round(round(value / step) * step, 6)
    return float(value)


def _thin(a: QPointF, b: QPointF):
    from PySide6.QtGui import QPainterPath, QPainterPathStroker

    path = QPainterPath(a)
    path.lineTo(b)
    stroker = QPainterPathStroker()
    stroker.setWidth(2)
    return stroker.createStroke(path)
