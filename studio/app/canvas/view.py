"""The canvas view: navigation, and turning mouse and keyboard gestures into intents.

Every edit goes through the controller (one undo step per gesture); the view only
moves items live during a drag and reports the end result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import QEvent, QLineF, QPoint, QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import (
    QColor,
    QContextMenuEvent,
    QCursor,
    QDropEvent,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QPen,
    QPixmap,
    QRegion,
    QTransform,
    QWheelEvent,
)
from PySide6.QtWidgets import QGraphicsItem, QGraphicsView, QWidget

from studio.app import theme
from studio.app.canvas.decor import FrameItem, NoteItem
from studio.app.canvas.editors import InlineEditor
from studio.app.canvas.link_item import CutLine, DragWire, LinkItem, RerouteItem, wire_path
from studio.app.canvas.node_item import LOD_SIMPLE, HitKind, NodeItem, ParamZone
from studio.app.canvas.scene import GraphScene
from studio.app.canvas.view_editing import EditingMixin, _ParamDrag
from studio.app.canvas.view_menus import NODE_TYPE_MIME, MenusMixin
from studio.app.search import NodeSearchPopup
from studio.graph.types import ValueType, can_connect

__all__ = ["NODE_TYPE_MIME", "GraphView"]

MIN_ZOOM, MAX_ZOOM = 0.08, 3.0
FIT_MARGIN_PX = 40
#: A zoom gesture (wheel or pinch) counts as over once no step came for this long.
ZOOM_SETTLE_MS = 140


@dataclass
class _ZoomGesture:
    """The view as painted when a zoom gesture began, scaled instead of redrawn while
    the gesture lasts (a full redraw of a large graph takes longer than a frame)."""

    pixmap: QPixmap
    transform: QTransform  # viewport transform when the pixmap was painted


@dataclass
class _WireDrag:
    node_id: str
    port: str
    from_output: bool
    type: ValueType | None
    wire: DragWire
    detach: str | None = None  # a link picked up from an input by this drag


@dataclass
class _MoveDrag:
    start: dict[QGraphicsItem, QPointF] = field(default_factory=dict)
    insert_link: str | None = None


class GraphView(EditingMixin, MenusMixin, QGraphicsView):
    open_file_requested = Signal(str)
    zoom_changed = Signal(float)
    paint_mask_requested = Signal(str)  # a node id
    image_activated = Signal(str)  # the image on a node was double-clicked
    image_dropped = Signal(str)  # an image file was dropped (the viewer shows its provenance)
    inpaint_requested = Signal(str)  # a Load Image node's "Inpaint…"

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
        self._search_at_cursor = False
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
        self._gesture: _ZoomGesture | None = None
        self.zoom_settle_ms = ZOOM_SETTLE_MS
        self._settle = QTimer(self)
        self._settle.setSingleShot(True)
        self._settle.timeout.connect(self.settle_zoom)
        self.centerOn(0, 0)

    # -- navigation ---------------------------------------------------------------------

    @property
    def zoom(self) -> float:
        return self.transform().m11()

    def set_zoom(self, z: float, center: QPointF | None = None) -> None:
        self.settle_zoom()
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
            self._zoom_step(factor)

    @property
    def zooming(self) -> bool:
        """True while a zoom gesture shows a scaled picture; a sharp redraw follows."""
        return self._gesture is not None

    def _zoom_step(self, factor: float) -> None:
        if self._gesture is None:
            # grab() paints the view as it is now (one ordinary frame); every further
            # step of the gesture only scales that picture.
            self._gesture = _ZoomGesture(self.viewport().grab(), self.viewportTransform())
        self.scale(factor, factor)
        self.zoom_changed.emit(self.zoom)
        self._settle.start(self.zoom_settle_ms)

    def settle_zoom(self) -> None:
        """End a zoom gesture now: redraw sharp at the zoom it reached."""
        self._settle.stop()
        if self._gesture is None:
            return
        self._gesture = None
        self._zoom_applied()
        self.viewport().update()

    def paintEvent(self, event: QPaintEvent) -> None:
        g = self._gesture
        if g is None:
            super().paintEvent(event)
            return
        inverse, _ = g.transform.inverted()
        to_view = inverse * self.viewportTransform()  # pixmap -> scene as painted -> view now
        size = g.pixmap.deviceIndependentSize()
        covered = to_view.mapRect(QRectF(0, 0, size.width(), size.height())).toAlignedRect()
        painter = QPainter(self.viewport())
        # Only what the picture leaves uncovered (zooming out) needs the background.
        for r in QRegion(event.rect()).subtracted(QRegion(covered.adjusted(1, 1, -1, -1))):
            painter.fillRect(r, self._bg)
        painter.setTransform(to_view)
        painter.drawPixmap(0, 0, g.pixmap)
        painter.end()

    def fit_items(self, items: list[QGraphicsItem] | None = None) -> None:
        r = self.graph.items_bounds(items)
        if r.isEmpty():
            self.set_zoom(1.0, QPointF(0, 0))
            return
        # A margin on screen (not in scene units, which shrink with the zoom): nothing
        # touches or crosses the edge, whatever the zoom comes out as.
        m = FIT_MARGIN_PX
        vw, vh = max(self.viewport().width() - 2 * m, 1), max(self.viewport().height() - 2 * m, 1)
        z = min(vw / max(r.width(), 1.0), vh / max(r.height(), 1.0), 1.0)
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
        self.settle_zoom()  # what the click lands on is drawn where it is
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
                if hit.kind is HitKind.PORT_OUT:
                    self._begin_wire(item, hit.name, True, pos)  # type: ignore[arg-type]
                    return
                if hit.kind is HitKind.PORT_IN:
                    self._begin_wire_from_input(item, hit.name, pos)  # type: ignore[arg-type]
                    return
                if hit.kind is HitKind.PARAM:
                    if not item.isSelected():
                        self.graph.clearSelection()
                        item.setSelected(True)
                    zone = hit.zone or ParamZone.FIELD
                    self._begin_param(item, hit.name, zone, pos)  # type: ignore[arg-type]
                    return
                if hit.kind is HitKind.COLLAPSE:
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
            if hit.kind is HitKind.TITLE:
                self.rename_node(item)
            elif hit.kind is HitKind.IMAGE:
                self.image_activated.emit(item.node_id)
            elif hit.kind is HitKind.PARAM:
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
        want = HitKind.PORT_IN if w.from_output else HitKind.PORT_OUT
        if hit.kind is want:
            return node, hit.name  # type: ignore[return-value]
        if hit.kind in (HitKind.PORT_IN, HitKind.PORT_OUT):
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
                if hit.kind in (HitKind.PORT_IN, HitKind.PORT_OUT) and hit.name:
                    # An explicit port of the wrong type: say why nothing happened.
                    if w.from_output and hit.kind is HitKind.PORT_IN:
                        self.controller.connect(w.node_id, w.port, node.node_id, hit.name)
                    elif not w.from_output and hit.kind is HitKind.PORT_OUT:
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
        cursor = self.viewport().mapFromGlobal(QCursor.pos())
        self._search_at_cursor = self.viewport().rect().contains(cursor)
        global_pos = self.viewport().mapToGlobal(self.mapFromScene(scene_pos))
        self.search.open_at(global_pos, accepts=accepts, gives=gives)

    def _search_chosen(self, type_id: str) -> None:
        from studio.app.canvas.placement import add_from_search

        kwargs, self._search_link = self._search_link, {}
        at_cursor = bool(kwargs) or self._search_at_cursor
        node_id = add_from_search(self, type_id, self._search_pos, kwargs, at_cursor=at_cursor)
        if node_id is not None:
            self.graph.select_nodes([node_id])


def _thin(a: QPointF, b: QPointF):
    from PySide6.QtGui import QPainterPath, QPainterPathStroker

    path = QPainterPath(a)
    path.lineTo(b)
    stroker = QPainterPathStroker()
    stroker.setWidth(2)
    return stroker.createStroke(path)
