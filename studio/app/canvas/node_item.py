"""One painted item per node: title, typed ports, params drawn as fields, badges.

No child widgets: params are painted, and the view opens an editor on demand.
When zoomed out, a node is drawn as two rectangles (level of detail).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import (
    QBrush,
    QColor,
    QFont,
    QFontMetricsF,
    QImage,
    QPainter,
    QPainterPath,
    QPen,
    QPixmap,
)
from PySide6.QtWidgets import QGraphicsItem, QStyleOptionGraphicsItem, QWidget

from studio.app import theme
from studio.app.canvas.shape import (
    ARROW_W,
    DICE_W,
    PAD,
    PORT_R,
    ROW_H,
    TITLE_H,
    NodeShape,
    build_shape,
    shape_for_spec,
)
from studio.graph.seeds import EXTRA_KEY as SEED_EXTRA_KEY
from studio.graph.seeds import SeedControl
from studio.graph.spec import InputSpec, NodeSpec
from studio.graph.types import TYPE_COLORS, ValueType, can_connect
from studio.graph.workflow import Node, NodeLayout

if TYPE_CHECKING:
    from studio.app.canvas.scene import GraphScene

#: Levels of detail, by zoom. From LOD_TEXT up: everything. From LOD_VALUES: the title and
#: each param's value in a larger font (still about 7 px on screen), no small labels. From
#: LOD_SIMPLE: the title only, as large as the node allows. Below: plain rectangles (drawn
#: all at once by the scene's overview).
LOD_TEXT = 0.6
LOD_VALUES = 0.38
LOD_SIMPLE = 0.2
#: The smallest text on screen (pixels) that the zoomed-out levels aim for.
MIN_SCREEN_PX = 8.0
#: Room under a node for its run message (time, error), inside its bounds.
MESSAGE_H = 46.0
#: Short marks for seed controls, shown beside the seed's name.
SEED_MARKS = {
    SeedControl.INCREMENT: "+1",
    SeedControl.DECREMENT: "−1",
    SeedControl.RANDOMIZE: "random",
}


class HitKind(StrEnum):
    """The part of a node a point is on."""

    PORT_IN = "port_in"
    PORT_OUT = "port_out"
    PARAM = "param"
    COLLAPSE = "collapse"
    BADGE = "badge"
    TITLE = "title"
    IMAGE = "image"
    BODY = "body"


class ParamZone(StrEnum):
    """The part of a param field a point is on: its arrows, its dice, or the field itself."""

    FIELD = "field"
    DEC = "dec"
    INC = "inc"
    DICE = "dice"


class RunState(StrEnum):
    """A node's part in the last run, as its outline shows it."""

    IDLE = ""  # not part of a run
    WAITING = "waiting"
    RUNNING = "running"
    CACHED = "cached"
    DONE = "done"
    ERROR = "error"
    SKIPPED = "skipped"
    STOPPED = "stopped"


#: States whose message (time, error, reason) is written under the node.
_STATES_WITH_MESSAGE = (
    RunState.DONE,
    RunState.ERROR,
    RunState.CACHED,
    RunState.SKIPPED,
    RunState.STOPPED,
)


@dataclass(frozen=True)
class Hit:
    """What a point on a node is: a port, a param field (and which zone of it), the title."""

    kind: HitKind
    name: str | None = None
    zone: ParamZone | None = None  # for params


class _Style:
    """Pens, brushes and fonts, made once (after the QApplication exists)."""

    ready = False

    @classmethod
    def init(cls) -> None:
        if cls.ready:
            return
        cls.body = QBrush(QColor(theme.NODE_BODY))
        cls.border = QPen(QColor(theme.NODE_BORDER), 1.2)
        cls.selected = QPen(QColor(theme.NODE_SELECTED), 2.0)
        cls.error_pen = QPen(QColor(theme.ERROR), 2.0)
        cls.fault_pen = QPen(QColor(theme.ERROR), 2.5)
        cls.text = QPen(QColor(theme.TEXT))
        cls.dim = QPen(QColor(theme.TEXT_DIM))
        cls.field = QBrush(QColor(theme.FIELD_BG))
        cls.field_fill = QBrush(QColor(theme.FIELD_FILL))
        cls.port_border = QPen(QColor("#15171a"), 1.5)
        cls.type_brushes = {t: QBrush(QColor(c)) for t, c in TYPE_COLORS.items()}
        cls.dim_brush = QBrush(QColor("#3a3d42"))
        cls.title_font = QFont(theme.ui_font())
        cls.title_font.setPixelSize(12)
        cls.title_font.setBold(True)
        cls.label_font = QFont(theme.ui_font())
        cls.label_font.setPixelSize(11)
        cls.small_font = QFont(theme.ui_font())
        cls.small_font.setPixelSize(10)
        cls.title_metrics = QFontMetricsF(cls.title_font)
        cls.label_metrics = QFontMetricsF(cls.label_font)
        cls.badge = QBrush(QColor(theme.ERROR))
        cls.bypass_brush = QBrush(QColor(160, 92, 200, 70))
        cls.state_pens = {
            RunState.RUNNING: QPen(QColor("#4fc3f7"), 2.5),
            RunState.WAITING: QPen(QColor("#6b7785"), 1.5, Qt.PenStyle.DashLine),
            RunState.CACHED: QPen(QColor("#8bc34a"), 1.5),
            RunState.DONE: QPen(QColor("#8bc34a"), 2.0),
            RunState.ERROR: QPen(QColor(theme.ERROR), 2.5),
            RunState.SKIPPED: QPen(QColor("#8a6d3b"), 1.5, Qt.PenStyle.DashLine),
            RunState.STOPPED: QPen(QColor("#ffb74d"), 2.0),
        }
        cls.ready = True


_title_paths: dict[tuple[float, bool], QPainterPath] = {}


def _title_path(width: float, collapsed: bool) -> QPainterPath:
    """The title bar: rounded on top (and below too when collapsed)."""
    key = (width, collapsed)
    path = _title_paths.get(key)
    if path is None:
        path = QPainterPath()
        path.setFillRule(Qt.FillRule.WindingFill)
        path.addRoundedRect(QRectF(0, 0, width, TITLE_H), 7, 7)
        if not collapsed:
            path.addRect(QRectF(0, TITLE_H / 2, width, TITLE_H / 2))
        path = path.simplified()
        _title_paths[key] = path
    return path


def format_value(spec: InputSpec, value: Any) -> str:
    if value is None:
        return "—"
    if spec.type is ValueType.FLOAT:
        step = spec.step or 0.01
        decimals = max(0, min(4, len(f"{step:.6f}".rstrip("0").split(".")[1])))
        return f"{float(value):.{max(decimals, 1)}f}"
    if spec.type is ValueType.BOOLEAN:
        return "on" if value else "off"
    if spec.type is ValueType.CHOICE and spec.file_kind and isinstance(value, str):
        return value.replace("\\", "/").rsplit("/", 1)[-1] or "(none)"
    return str(value)


_scaled_fonts: dict[tuple[str, int, int], QFont] = {}


def _scaled(base: QFont, lod: float, max_px: float = TITLE_H - 8) -> QFont:
    """``base`` enlarged so that it is about MIN_SCREEN_PX on screen at ``lod`` (never
    beyond ``max_px`` scene pixels, the room it has)."""
    px = round(max(base.pixelSize(), min(max_px, MIN_SCREEN_PX / max(lod, 0.01))))
    key = (base.family(), px, int(base.bold()))
    font = _scaled_fonts.get(key)
    if font is None:
        font = QFont(base)
        font.setPixelSize(px)
        _scaled_fonts[key] = font
    return font


class NodeItem(QGraphicsItem):
    def __init__(self, node: Node, spec: NodeSpec | None, layout: NodeLayout, links: Any = ()):
        super().__init__()
        _Style.init()
        self.node = node
        self.node_id = node.id
        self.spec = spec
        self.layout = layout
        self.linked: set[str] = set()
        self.problems: list[str] = []
        self.bad_ports: frozenset[str] = frozenset()
        self.drag_hint: tuple[ValueType, bool] | None = None
        self.run_state = RunState.IDLE
        self.progress: float | None = None
        self.run_message = ""
        self.run_reason = ""  # why it re-ran in the last run (shown on hover)
        self.image: QPixmap | None = None
        self.image_rect = QRectF()
        self.highlight = False
        self._elided: dict[tuple[str, float], str] = {}
        self.shape_: NodeShape = self._make_shape(links)
        self.setFlags(
            QGraphicsItem.GraphicsItemFlag.ItemIsSelectable
            | QGraphicsItem.GraphicsItemFlag.ItemIsMovable
            | QGraphicsItem.GraphicsItemFlag.ItemSendsGeometryChanges
        )
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIsMovable, not layout.pinned)
        self.setAcceptHoverEvents(False)
        # Panning then blits cached pixmaps instead of repainting nodes in Python.
        self.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
        self.setPos(*layout.pos)

    # -- geometry -------------------------------------------------------------------------

    def _make_shape(self, links: Any = ()) -> NodeShape:
        shape = self._compute_shape(links)
        self.shape_key = (self.layout.width, self.layout.collapsed)
        self.image_rect = QRectF()
        if self.image is not None and not self.layout.collapsed:
            w = shape.width - 2 * PAD
            iw, ih = max(self.image.width(), 1), max(self.image.height(), 1)
            h = min(w * ih / iw, w * 1.5)
            fit_w = min(w, h * iw / ih)
            top = shape.height
            self.image_rect = QRectF(PAD + (w - fit_w) / 2, top, fit_w, h)
            # The shared per-type shape stays as it is; this node gets a taller copy.
            shape = replace(shape, height=top + h + PAD)
        self._bounds = QRectF(
            -PORT_R - 2, -4, shape.width + 2 * PORT_R + 8, shape.height + 10 + MESSAGE_H
        )
        self._shape_path = QPainterPath()
        self._shape_path.addRect(QRectF(-PORT_R - 2, 0, shape.width + 2 * PORT_R + 4, shape.height))
        return shape

    def _compute_shape(self, links: Any = ()) -> NodeShape:
        if self.spec is not None:
            return shape_for_spec(self.spec, self.layout.width, self.layout.collapsed)
        # An unknown type: show the ports its links use, so nothing looks lost.
        ins = sorted({lk.input for lk in links if lk.target == self.node_id})
        outs = sorted({lk.output for lk in links if lk.source == self.node_id})
        return build_shape(
            [(n, ValueType.ANY) for n in ins],
            [(n, ValueType.ANY) for n in outs],
            [],
            self.layout.width or 230.0,
            self.layout.collapsed,
        )

    def relayout(self, links: Any = ()) -> None:
        self.prepareGeometryChange()
        self.shape_ = self._make_shape(links)
        self._elided.clear()
        self.update()

    def boundingRect(self) -> QRectF:
        return self._bounds  # asked for constantly by the scene index: computed once

    def shape(self) -> QPainterPath:
        return self._shape_path

    def port_scene_pos(self, name: str, is_output: bool) -> QPointF:
        ports = self.shape_.outputs if is_output else self.shape_.inputs
        port = ports.get(name)
        if port is None:  # a link to a port the type does not have: draw it at the edge
            local = QPointF(self.shape_.width if is_output else 0.0, TITLE_H / 2)
        else:
            local = port.pos
        return self.pos() + local

    def port_type(self, name: str, is_output: bool) -> ValueType | None:
        port = (self.shape_.outputs if is_output else self.shape_.inputs).get(name)
        return port.type if port else None

    def hit(self, local: QPointF) -> Hit:
        s = self.shape_
        x, y = local.x(), local.y()
        reach = PORT_R + 5
        for port in s.outputs.values():
            if abs(x - port.pos.x()) <= reach and abs(y - port.pos.y()) <= reach:
                return Hit(HitKind.PORT_OUT, port.name)
        for port in s.inputs.values():
            hidden = port.is_param and not self._shows_param_port(port.name)
            if hidden and not self.layout.collapsed and x > reach:
                continue
            if abs(x - port.pos.x()) <= reach and abs(y - port.pos.y()) <= reach:
                return Hit(HitKind.PORT_IN, port.name)
        if not self.image_rect.isEmpty() and self.image_rect.contains(local):
            return Hit(HitKind.IMAGE)
        if y < TITLE_H:
            if x < 22:
                return Hit(HitKind.COLLAPSE)
            if self.problems and x > s.width - 24:
                return Hit(HitKind.BADGE)
            return Hit(HitKind.TITLE)
        for name, f in s.params.items():
            if f.rect.contains(local):
                if name in self.linked:
                    return Hit(HitKind.BODY)
                zone = ParamZone.FIELD
                if f.spec.type in (ValueType.INT, ValueType.FLOAT):
                    if f.spec.seed and x > f.rect.right() - DICE_W:
                        zone = ParamZone.DICE
                    elif x < f.rect.left() + ARROW_W:
                        zone = ParamZone.DEC
                    elif x > f.rect.right() - ARROW_W - (DICE_W if f.spec.seed else 0):
                        zone = ParamZone.INC
                return Hit(HitKind.PARAM, name, zone)
        return Hit(HitKind.BODY)

    def _shows_param_port(self, name: str) -> bool:
        if name in self.linked:
            return True
        hint = self.drag_hint
        if hint is None or not hint[1]:
            return False
        port = self.shape_.inputs[name]
        return can_connect(hint[0], port.type)

    # -- state ----------------------------------------------------------------------------

    def set_problems(self, messages: list[str], ports: set[str] | frozenset = frozenset()) -> None:
        """Show a node's problems: the badge, the tooltip, and the ports (inputs or param
        fields) at fault ringed in red."""
        if messages != self.problems or ports != self.bad_ports:
            self.problems = messages
            self.bad_ports = frozenset(ports)
            self._update_tooltip()
            self.update()

    def set_run_reason(self, reason: str) -> None:
        if reason != self.run_reason:
            self.run_reason = reason
            self._update_tooltip()

    def _update_tooltip(self) -> None:
        lines = list(self.problems)
        if self.run_reason:
            lines.append(f"Re-ran: {self.run_reason}")
        if self.run_state is RunState.ERROR and self.run_message:
            lines.append(f"Failed: {self.run_message}")
        self.setToolTip("\n".join(lines))

    def set_image(self, image: QImage | None) -> None:
        """Show ``image`` under the params (None removes it)."""
        old_size = self.image.size() if self.image is not None else None
        self.image = QPixmap.fromImage(image) if image is not None and not image.isNull() else None
        new_size = self.image.size() if self.image is not None else None
        if old_size != new_size:
            # A thumbnail the node's width cannot show larger is all that needs keeping.
            self.relayout()
        else:
            self.update()

    def set_drag_hint(self, hint: tuple[ValueType, bool] | None) -> None:
        if hint != self.drag_hint:
            self.drag_hint = hint
            self.update()

    def set_run_state(
        self, state: RunState, progress: float | None = None, message: str = ""
    ) -> None:
        changed = (state, message) != (self.run_state, self.run_message)
        self.run_state, self.progress, self.run_message = state, progress, message
        if changed:
            self._update_tooltip()
        self.update()

    def itemChange(self, change: QGraphicsItem.GraphicsItemChange, value: Any) -> Any:
        if change == QGraphicsItem.GraphicsItemChange.ItemPositionHasChanged:
            sc = self.scene()
            if sc is not None:
                sc.node_item_moved(self)  # type: ignore[attr-defined]
        return super().itemChange(change, value)

    @property
    def graph_scene(self) -> GraphScene:
        return self.scene()  # type: ignore[return-value]

    # -- painting -------------------------------------------------------------------------

    def title_text(self) -> str:
        if self.node.title:
            return self.node.title
        return self.spec.title if self.spec else f"Unknown: {self.node.type}"

    def title_color(self) -> QColor:
        if self.layout.color:
            return QColor(self.layout.color)
        if self.spec is None:
            return QColor(theme.UNKNOWN_TYPE_COLOR)
        return QColor(theme.category_color(self.spec.category))

    def _elide(self, text: str, width: float, metrics: QFontMetricsF) -> str:
        key = (text, width)
        got = self._elided.get(key)
        if got is None:
            got = metrics.elidedText(text, Qt.TextElideMode.ElideRight, width)
            if len(self._elided) > 64:
                self._elided.clear()
            self._elided[key] = got
        return got

    def paint(
        self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None
    ) -> None:
        s = self.shape_
        node = self.node
        lod = option.levelOfDetailFromTransform(painter.worldTransform())
        if node.mute:
            painter.setOpacity(0.4)
        if lod < LOD_SIMPLE:
            self._paint_simple(painter, s)
            return
        if lod < LOD_VALUES and not self.layout.collapsed:
            self._paint_simple(painter, s)
            self._paint_big_title(painter, s, lod)
            return
        rect = s.rect
        # Outline as a filled rect behind the body: antialiased strokes cost twice a fill.
        outline = self._outline_pen()
        ow = outline.widthF()
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(outline.color())
        painter.drawRoundedRect(rect.adjusted(-ow, -ow, ow, ow), 7 + ow, 7 + ow)
        painter.setBrush(_Style.body)
        painter.drawRoundedRect(rect, 7, 7)
        painter.setBrush(self.title_color())
        painter.drawPath(_title_path(s.width, self.layout.collapsed))
        if node.bypass:
            painter.setBrush(_Style.bypass_brush)
            painter.drawRoundedRect(rect, 7, 7)
        # Collapse arrow.
        painter.setBrush(QColor(255, 255, 255, 150))
        cx, cy = 11.0, TITLE_H / 2
        if self.layout.collapsed:
            tri = [QPointF(cx - 3, cy - 4.5), QPointF(cx + 3.5, cy), QPointF(cx - 3, cy + 4.5)]
        else:
            tri = [QPointF(cx - 4.5, cy - 2.5), QPointF(cx + 4.5, cy - 2.5), QPointF(cx, cy + 3.5)]
        painter.drawPolygon(tri)
        # Title text.
        painter.setFont(_Style.title_font if lod >= LOD_TEXT else _scaled(_Style.title_font, lod))
        painter.setPen(_Style.text)
        label = self.title_text()
        if node.bypass:
            label += "  (bypassed)"
        elif node.mute:
            label += "  (muted)"
        right = 26 if self.problems else 8
        text_rect = QRectF(22, 0, s.width - 22 - right, TITLE_H)
        painter.drawText(
            text_rect,
            Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
            self._elide(label, text_rect.width(), QFontMetricsF(painter.font()))
            if lod < LOD_TEXT
            else self._elide(label, text_rect.width(), _Style.title_metrics),
        )
        if self.problems:
            self._paint_badge(painter, QPointF(s.width - 13, TITLE_H / 2))
        if self.progress is not None and self.run_state is RunState.RUNNING:
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(QColor("#4fc3f7"))
            painter.drawRect(
                QRectF(1, TITLE_H - 3, (s.width - 2) * max(0.0, min(1.0, self.progress)), 3)
            )
        if self.layout.collapsed:
            self._paint_collapsed_ports(painter, s)
            return
        self._paint_ports(painter, s, lod)
        if lod < LOD_TEXT:  # labels this small cannot be read: the values, larger
            font = _scaled(_Style.label_font, lod, max_px=ROW_H - 4)
            painter.setFont(font)
            for name, f in s.params.items():
                self._paint_value_only(painter, f.spec, f.rect, name, font)
        else:
            painter.setFont(_Style.label_font)
            for name, f in s.params.items():
                self._paint_param(painter, f.spec, f.rect, name)
        if self.image is not None and not self.image_rect.isEmpty():
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
            painter.drawPixmap(self.image_rect, self.image, QRectF(self.image.rect()))
        if self.run_message and self.run_state in _STATES_WITH_MESSAGE:
            painter.setFont(_Style.small_font)
            error = self.run_state is RunState.ERROR
            painter.setPen(QColor(theme.ERROR) if error else _Style.dim.color())
            painter.drawText(
                QRectF(2, s.height + 3, s.width - 4, MESSAGE_H - 4),
                Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop | Qt.TextFlag.TextWordWrap,
                self.run_message,
            )

    def _outline_pen(self) -> QPen:
        if self.isSelected():
            return _Style.selected
        if self.run_state in _Style.state_pens:
            return _Style.state_pens[self.run_state]
        if self.problems:
            return _Style.error_pen
        if self.highlight:
            return _Style.selected
        return _Style.border

    def _paint_simple(self, painter: QPainter, s: NodeShape) -> None:
        painter.setPen(Qt.PenStyle.NoPen)
        if self.isSelected() or self.problems:
            painter.setBrush(QColor(theme.NODE_SELECTED if self.isSelected() else theme.ERROR))
            painter.drawRect(s.rect.adjusted(-4, -4, 4, 4))
        painter.setBrush(_Style.body)
        painter.drawRect(s.rect)
        painter.setBrush(self.title_color())
        painter.drawRect(QRectF(0, 0, s.width, TITLE_H))

    def _paint_big_title(self, painter: QPainter, s: NodeShape, lod: float) -> None:
        """Far out: the title alone, in letters that stay legible, over the whole node."""
        font = _scaled(_Style.title_font, lod, max_px=min(64.0, s.height / 2.5))
        painter.setFont(font)
        painter.setPen(_Style.text)
        painter.drawText(
            s.rect.adjusted(6, 2, -6, -2),
            Qt.AlignmentFlag.AlignHCenter
            | Qt.AlignmentFlag.AlignVCenter
            | Qt.TextFlag.TextWordWrap,
            self.title_text(),
        )

    def _paint_value_only(
        self, painter: QPainter, spec: InputSpec, r: QRectF, name: str, font: QFont
    ) -> None:
        """A param as its value alone (a prompt as its text), in a font read at this zoom."""
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(_Style.field)
        painter.drawRoundedRect(r, 4, 4)
        if name in self.linked:
            text, pen = "← linked", _Style.dim
        elif spec.file_kind == "mask":
            value = self.node.params.get(name)
            text, pen = ("mask painted" if value else "no mask"), _Style.dim
        else:
            text, pen = format_value(spec, self.node.params.get(name, spec.default)), _Style.text
            if not spec.file_kind and not spec.multiline:
                text = f"{name.replace('_', ' ')}  {text}"
        painter.setPen(pen)
        inner = r.adjusted(4, 0, -4, 0)
        if spec.type is ValueType.STRING and spec.multiline:
            painter.drawText(
                inner,
                Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop | Qt.TextFlag.TextWordWrap,
                text,
            )
            return
        painter.drawText(
            inner,
            Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignHCenter,
            QFontMetricsF(font).elidedText(text, Qt.TextElideMode.ElideMiddle, inner.width()),
        )

    def _paint_badge(self, painter: QPainter, c: QPointF) -> None:
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(_Style.badge)
        painter.drawEllipse(c, 8, 8)
        painter.setPen(QPen(QColor("#ffffff")))
        painter.setFont(_Style.title_font)
        painter.drawText(QRectF(c.x() - 8, c.y() - 8, 16, 16), Qt.AlignmentFlag.AlignCenter, "!")

    def _port_brush(self, t: ValueType, is_output: bool) -> QBrush:
        hint = self.drag_hint
        if hint is not None:
            drag_type, from_output = hint
            if from_output == is_output:
                return _Style.dim_brush
            ok = can_connect(drag_type, t) if from_output else can_connect(t, drag_type)
            if not ok:
                return _Style.dim_brush
        return _Style.type_brushes.get(t, _Style.type_brushes[ValueType.ANY])

    def _paint_ports(self, painter: QPainter, s: NodeShape, lod: float) -> None:
        painter.setFont(_Style.label_font)
        w = s.width
        labels = lod >= LOD_TEXT
        for port in s.outputs.values():
            painter.setPen(_Style.port_border)
            painter.setBrush(self._port_brush(port.type, True))
            painter.drawEllipse(port.pos, PORT_R, PORT_R)
            if not labels:
                continue
            painter.setPen(_Style.text)
            painter.drawText(
                QRectF(w / 2, port.pos.y() - 9, w / 2 - 12, 18),
                Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight,
                port.name,
            )
        for port in s.inputs.values():
            if port.name in self.bad_ports:
                self._paint_fault(painter, port)
            if port.is_param and not self._shows_param_port(port.name):
                continue
            painter.setPen(_Style.port_border)
            painter.setBrush(self._port_brush(port.type, False))
            r = PORT_R if not port.is_param else PORT_R - 1
            painter.drawEllipse(port.pos, r, r)
            if port.is_param or not labels:
                continue
            painter.setPen(_Style.text)
            text = port.name
            spec = self.spec.input(port.name) if self.spec else None
            if spec is not None and spec.optional:
                painter.setPen(_Style.dim)
            if port.name in self.bad_ports:
                painter.setPen(_Style.error_pen.color())
                text = f"{text}  ⚠"
            painter.drawText(
                QRectF(12, port.pos.y() - 9, w / 2 - 12, 18),
                Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                text,
            )

    def _paint_fault(self, painter: QPainter, port: Any) -> None:
        """A red ring around an input at fault (a red frame around a param's field)."""
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.setPen(_Style.fault_pen)
        field = self.shape_.params.get(port.name)
        if field is not None and port.name not in self.linked:
            painter.drawRoundedRect(field.rect.adjusted(-2, -2, 2, 2), 5, 5)
        else:
            painter.drawEllipse(port.pos, PORT_R + 3.5, PORT_R + 3.5)

    def _paint_collapsed_ports(self, painter: QPainter, s: NodeShape) -> None:
        painter.setPen(_Style.port_border)
        if s.inputs:
            painter.setBrush(QColor(theme.TEXT_DIM))
            painter.drawEllipse(QPointF(0, TITLE_H / 2), PORT_R - 1, PORT_R - 1)
        if s.outputs:
            painter.setBrush(QColor(theme.TEXT_DIM))
            painter.drawEllipse(QPointF(s.width, TITLE_H / 2), PORT_R - 1, PORT_R - 1)

    def _paint_param(self, painter: QPainter, spec: InputSpec, r: QRectF, name: str) -> None:
        value = self.node.params.get(name, spec.default)
        linked = name in self.linked
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(_Style.field)
        painter.drawRoundedRect(r, 4, 4)
        t = spec.type
        label_rect = r.adjusted(8, 0, -8, 0)
        label = name.replace("_", " ")
        if spec.seed:
            modes = self.node.extra.get(SEED_EXTRA_KEY)
            mark = SEED_MARKS.get(modes.get(name, "") if isinstance(modes, dict) else "")
            if mark:
                label = f"{label} · {mark}"
        if linked:
            painter.setPen(_Style.dim)
            painter.drawText(label_rect, Qt.AlignmentFlag.AlignVCenter, f"{label}  ← linked")
            return
        if t in (ValueType.INT, ValueType.FLOAT):
            lo, hi = spec.min, spec.max
            inner = r.adjusted(ARROW_W, 0, -ARROW_W - (DICE_W if spec.seed else 0), 0)
            if (
                lo is not None
                and hi is not None
                and hi > lo
                and (hi - lo) <= 10_000
                and isinstance(value, int | float)
            ):
                frac = max(0.0, min(1.0, (float(value) - lo) / (hi - lo)))
                if frac > 0:
                    painter.setPen(Qt.PenStyle.NoPen)
                    painter.setBrush(_Style.field_fill)
                    painter.drawRoundedRect(
                        QRectF(r.left() + 1, r.top() + 1, (r.width() - 2) * frac, r.height() - 2),
                        3,
                        3,
                    )
            painter.setPen(_Style.dim)
            painter.drawText(
                QRectF(r.left(), r.top(), ARROW_W, r.height()), Qt.AlignmentFlag.AlignCenter, "‹"
            )
            right = r.right() - ARROW_W - (DICE_W if spec.seed else 0)
            painter.drawText(
                QRectF(right, r.top(), ARROW_W, r.height()), Qt.AlignmentFlag.AlignCenter, "›"
            )
            if spec.seed:
                self._paint_dice(painter, QRectF(r.right() - DICE_W, r.top(), DICE_W, r.height()))
            painter.setPen(_Style.dim)
            painter.drawText(inner.adjusted(2, 0, 0, 0), Qt.AlignmentFlag.AlignVCenter, label)
            painter.setPen(_Style.text)
            painter.drawText(
                inner.adjusted(0, 0, -2, 0),
                Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight,
                format_value(spec, value),
            )
        elif t is ValueType.BOOLEAN:
            painter.setPen(_Style.dim)
            painter.drawText(label_rect, Qt.AlignmentFlag.AlignVCenter, label)
            sw = QRectF(r.right() - 34, r.center().y() - 7, 26, 14)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(QColor(theme.ACCENT) if value else QColor("#454a52"))
            painter.drawRoundedRect(sw, 7, 7)
            painter.setBrush(QColor("#f2f2f2"))
            knob_x = sw.right() - 7 if value else sw.left() + 7
            painter.drawEllipse(QPointF(knob_x, sw.center().y()), 5, 5)
        elif spec.file_kind == "mask":
            painter.setPen(_Style.dim)
            painter.drawText(label_rect, Qt.AlignmentFlag.AlignVCenter, label)
            painter.setPen(_Style.text if value else _Style.dim)
            painter.drawText(
                label_rect,
                Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight,
                "painted  ✎" if value else "paint…  ✎",
            )
        elif t is ValueType.STRING and spec.multiline:
            painter.setPen(_Style.text if value else _Style.dim)
            text = str(value) if value else label
            painter.drawText(
                r.adjusted(6, 4, -6, -4),
                Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop | Qt.TextFlag.TextWordWrap,
                text,
            )
        else:
            painter.setPen(_Style.dim)
            painter.drawText(label_rect, Qt.AlignmentFlag.AlignVCenter, label)
            label_w = _Style.label_metrics.horizontalAdvance(label) + 12
            shown = format_value(spec, value)
            if t is ValueType.CHOICE:
                shown += "  ▾"
            painter.setPen(_Style.text)
            avail = label_rect.width() - label_w
            painter.drawText(
                label_rect,
                Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight,
                self._elide(shown, max(avail, 20), _Style.label_metrics),
            )

    def _paint_dice(self, painter: QPainter, r: QRectF) -> None:
        box = QRectF(0, 0, 11, 11)
        box.moveCenter(r.center())
        painter.setPen(QPen(QColor(theme.TEXT_DIM), 1.2))
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawRoundedRect(box, 2, 2)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(theme.TEXT_DIM))
        for dx, dy in ((-2.5, -2.5), (0, 0), (2.5, 2.5)):
            painter.drawEllipse(box.center() + QPointF(dx, dy), 1.1, 1.1)
