"""Where things are on a node: rows, ports and param fields, computed once per node type.

Pure geometry (Qt value types only), shared by painting, hit-testing and link ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PySide6.QtCore import QPointF, QRectF

from studio.graph.spec import InputSpec, NodeSpec
from studio.graph.types import ValueType

TITLE_H = 28.0
ROW_H = 22.0
PAD = 8.0
PORT_R = 5.0
DEFAULT_WIDTH = 230.0
MULTILINE_ROWS = 4
ARROW_W = 16.0  # the < and > zones of a number field
DICE_W = 22.0  # the randomize zone of a seed field


@dataclass(frozen=True)
class Port:
    name: str
    type: ValueType
    is_output: bool
    pos: QPointF  # local, centre of the port circle
    is_param: bool = False


@dataclass(frozen=True)
class ParamField:
    spec: InputSpec
    rect: QRectF  # local


@dataclass
class NodeShape:
    width: float
    height: float
    inputs: dict[str, Port] = field(default_factory=dict)
    outputs: dict[str, Port] = field(default_factory=dict)
    params: dict[str, ParamField] = field(default_factory=dict)

    @property
    def rect(self) -> QRectF:
        return QRectF(0.0, 0.0, self.width, self.height)


_cache: dict[tuple[int, float, bool], NodeShape] = {}


def shape_for_spec(spec: NodeSpec, width: float | None, collapsed: bool) -> NodeShape:
    key = (id(spec), width or DEFAULT_WIDTH, collapsed)
    shape = _cache.get(key)
    if shape is None:
        links_in = [i for i in spec.inputs if not i.is_param]
        shape = build_shape(
            [(i.name, i.type) for i in links_in],
            [(o.name, o.type) for o in spec.outputs],
            list(spec.params),
            width or DEFAULT_WIDTH,
            collapsed,
        )
        _cache[key] = shape
    return shape


def build_shape(
    link_inputs: list[tuple[str, ValueType]],
    outputs: list[tuple[str, ValueType]],
    params: list[InputSpec],
    width: float,
    collapsed: bool,
) -> NodeShape:
    """Linked inputs and outputs side by side under the title, then one field per param."""
    shape = NodeShape(width=width, height=TITLE_H)
    if collapsed:
        mid = TITLE_H / 2
        for name, t in link_inputs:
            shape.inputs[name] = Port(name, t, False, QPointF(0.0, mid))
        for p in params:
            shape.inputs[p.name] = Port(p.name, p.type, False, QPointF(0.0, mid), is_param=True)
        for name, t in outputs:
            shape.outputs[name] = Port(name, t, True, QPointF(width, mid))
        return shape
    y = TITLE_H + 4.0
    for i in range(max(len(link_inputs), len(outputs))):
        cy = y + ROW_H / 2
        if i < len(link_inputs):
            name, t = link_inputs[i]
            shape.inputs[name] = Port(name, t, False, QPointF(0.0, cy))
        if i < len(outputs):
            name, t = outputs[i]
            shape.outputs[name] = Port(name, t, True, QPointF(width, cy))
        y += ROW_H
    if params and (link_inputs or outputs):
        y += 4.0
    for p in params:
        h = ROW_H * MULTILINE_ROWS if (p.type is ValueType.STRING and p.multiline) else ROW_H
        rect = QRectF(PAD + 2, y + 2, width - 2 * PAD - 4, h - 4)
        shape.params[p.name] = ParamField(p, rect)
        shape.inputs[p.name] = Port(
            p.name, p.type, False, QPointF(0.0, y + min(h, ROW_H) / 2), True
        )
        y += h
    shape.height = y + 6.0
    return shape
