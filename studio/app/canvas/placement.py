"""Where a new node goes and what it links to: next to the selection (or at the cursor),
never on top of another node, linked to the selected node's first port that fits.

Also "Insert LoRA": a Load LoRA put on a model path (model and clip), everything that
used them relinked to it, in one undo step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QPointF, QRectF
from PySide6.QtGui import QFont, QFontMetricsF

from studio.app import commands as c
from studio.app import theme
from studio.app.canvas.node_item import MESSAGE_H
from studio.app.canvas.shape import DEFAULT_WIDTH, PAD, shape_for_spec
from studio.graph.spec import NodeSpec
from studio.graph.types import ValueType, can_connect
from studio.graph.workflow import Link, NodeLayout, new_id

if TYPE_CHECKING:
    from studio.app.canvas.scene import GraphScene
    from studio.app.canvas.view import GraphView

#: Room kept between a placed node and its neighbours (scene units).
GAP = 40.0
LORA_TYPE = "load_lora"


def node_size(spec: NodeSpec | None, width: float | None = None) -> tuple[float, float]:
    """A new node's footprint: its body plus the room for its run message."""
    if spec is None:
        return (width or DEFAULT_WIDTH, 80.0 + MESSAGE_H)
    shape = shape_for_spec(spec, width, False)
    return shape.width, shape.height + MESSAGE_H


def occupied(scene: GraphScene, ignore: set[str] = frozenset()) -> list[QRectF]:  # type: ignore[assignment]
    return [
        QRectF(item.pos().x(), item.pos().y(), item.shape_.width, item.shape_.height + MESSAGE_H)
        for nid, item in scene.nodes.items()
        if nid not in ignore
    ]


def free_spot(
    taken: list[QRectF], pos: QPointF, size: tuple[float, float], *, downward: bool = True
) -> QPointF:
    """The nearest place to ``pos`` (searching down, then right) where a node of ``size``
    touches no rectangle of ``taken`` (a gap of GAP kept around it)."""
    w, h = size
    x, y = pos.x(), pos.y()
    for _ in range(400):
        r = QRectF(x - GAP / 2, y - GAP / 2, w + GAP, h + GAP)
        hit = [t for t in taken if t.intersects(r)]
        if not hit:
            return QPointF(x, y)
        if downward:
            y = max(t.bottom() for t in hit) + GAP / 2 + 1
        else:
            x = max(t.right() for t in hit) + GAP / 2 + 1
    return QPointF(x, y)


def link_to_selection(
    wf: Any, selected: str, spec: NodeSpec
) -> tuple[dict[str, tuple[str, str]], bool]:
    """How a new node of ``spec`` links to the selected node: ``link_from`` one of its
    outputs (the new node goes right of it) or ``link_to`` one of its free inputs (left).
    Returns the add_node keyword and True when the new node goes to the right."""
    sel_spec = wf.spec_of(wf.get_node(selected))
    if sel_spec is None:
        return {}, True
    inputs = [i for i in spec.inputs if not i.is_param]
    for out in sel_spec.outputs:
        if any(can_connect(out.type, i.type) and i.type is not ValueType.ANY for i in inputs):
            return {"link_from": (selected, out.name)}, True
    for inp in sel_spec.inputs:
        if inp.is_param or wf.link_into(selected, inp.name) is not None:
            continue
        if any(can_connect(o.type, inp.type) for o in spec.outputs):
            return {"link_to": (selected, inp.name)}, False
    return {}, True


def add_from_search(
    view: GraphView,
    type_id: str,
    pos: QPointF,
    link: dict[str, tuple[str, str]],
    *,
    at_cursor: bool,
) -> str | None:
    """Add a node chosen in the search: linked as the wire it came from says, else to the
    selected node; at ``pos`` when the cursor is on the canvas (or a wire was dropped
    there), else beside the selection; moved to the nearest free place."""
    ctl = view.controller
    spec = ctl.registry.get(type_id)
    size = node_size(spec)
    right = "link_to" not in link
    selected = view.graph.selected_node_ids()
    if not link and selected and spec is not None:
        link, right = link_to_selection(ctl.wf, selected[0], spec)
    if at_cursor or not selected:
        x, y = pos.x(), pos.y()
        if not right:
            x -= size[0]  # a node feeding an input goes to the left of the cursor
    else:
        sel = view.graph.nodes[selected[0]]
        if right:
            x, y = sel.pos().x() + sel.shape_.width + GAP * 1.5, sel.pos().y()
        else:
            x, y = sel.pos().x() - size[0] - GAP * 1.5, sel.pos().y()
    spot = free_spot(occupied(view.graph), QPointF(x, y), size)
    return ctl.add_node(type_id, (spot.x(), spot.y()), **link)


# -- Insert LoRA ----------------------------------------------------------------------------


def _port(spec: NodeSpec, t: ValueType, *, output: bool) -> str | None:
    ports = spec.outputs if output else [i for i in spec.inputs if not i.is_param]
    return next((p.name for p in ports if p.type is t), None)


def width_for_value(spec: NodeSpec, param: str, value: str) -> float:
    """A node width at which ``value`` shows whole in the ``param`` field."""
    font = QFont(theme.ui_font())
    font.setPixelSize(11)
    m = QFontMetricsF(font)
    label = param.replace("_", " ")
    need = m.horizontalAdvance(label) + 12 + m.horizontalAdvance(value + "  ▾") + 16
    return max(DEFAULT_WIDTH, round(need + 2 * PAD + 12, -1))


def insert_lora(view: GraphView, node_id: str, model_output: str | None = None) -> str | None:
    """Put a Load LoRA after ``node_id``'s model (and clip) outputs; every link that used
    them comes from the LoRA instead. One undo step; returns the new node's id."""
    ctl = view.controller
    wf = ctl.wf
    spec = ctl.spec(node_id)
    lora_spec = ctl.registry.get(LORA_TYPE)
    if spec is None or lora_spec is None:
        ctl.message.emit("no Load LoRA node type is installed")
        return None
    model_out = model_output or _port(spec, ValueType.MODEL, output=True)
    clip_out = _port(spec, ValueType.CLIP, output=True)
    if model_out is None:
        ctl.message.emit(f"{ctl.title(node_id)} has no model output to put a LoRA on")
        return None
    from studio.app.controller import make_node

    node = make_node(ctl.registry, LORA_TYPE, files=ctl.model_files.list)
    name = str(node.params.get("lora_name") or "")
    width = width_for_value(lora_spec, "lora_name", name.replace("\\", "/").rsplit("/", 1)[-1])
    size = node_size(lora_spec, width)
    src = view.graph.nodes[node_id]
    # Right of the source or under it, whichever is free nearer: wires stay short.
    taken = occupied(view.graph)
    below = src.pos().y() + src.shape_.height + MESSAGE_H + GAP / 2
    starts = [
        QPointF(src.pos().x() + src.shape_.width + GAP * 1.5, src.pos().y()),
        QPointF(src.pos().x(), below),
        # Under it, reaching left when it is wider than its column is.
        QPointF(src.pos().x() + src.shape_.width - size[0], below),
    ]
    spots = [(free_spot(taken, p, size), p) for p in starts]
    spot = min(spots, key=lambda sp: (sp[0] - sp[1]).manhattanLength())[0]
    ops: list[Any] = [c.AddNode(node, NodeLayout(pos=(spot.x(), spot.y()), width=width))]
    lora_in = {ValueType.MODEL: "model", ValueType.CLIP: "clip"}
    for out_name, t in ((model_out, ValueType.MODEL), (clip_out, ValueType.CLIP)):
        if out_name is None:
            continue
        new_out = _port(lora_spec, t, output=True)
        for lk in [lk for lk in wf.links_from(node_id) if lk.output == out_name]:
            ops.append(c.RemoveLink(lk.id))
            ops.append(c.Connect(Link(new_id(), node.id, new_out, lk.target, lk.input)))
        ops.append(c.Connect(Link(new_id(), node_id, out_name, node.id, lora_in[t])))
    if not ctl.push(f"Insert LoRA after {ctl.title(node_id)}", ops):
        return None
    view.graph.select_nodes([node.id])
    return node.id
