"""Editing on the canvas: params dragged, clicked or typed on a node; renaming; reroutes.

Part of :class:`~studio.app.canvas.view.GraphView` (a mixin over its state).
"""

from __future__ import annotations

import math
import random
from typing import Any

from PySide6.QtCore import QPointF, QRectF
from PySide6.QtWidgets import QMenu

from studio.app.canvas.decor import FrameItem, NoteItem
from studio.app.canvas.editors import InlineEditor, parse_number
from studio.app.canvas.link_item import LinkItem
from studio.app.canvas.node_item import NodeItem, ParamZone
from studio.app.canvas.shape import ARROW_W, DICE_W, TITLE_H
from studio.graph.types import ValueType

SEED_MAX = 2**32 - 1


class _ParamDrag:
    def __init__(
        self,
        node_id: str,
        name: str,
        zone: ParamZone,
        press_x: float,
        start: Any,
        gesture: int,
        field_width: float,
    ):
        self.node_id, self.name, self.zone = node_id, name, zone
        self.press_x, self.start, self.gesture = press_x, start, gesture
        self.field_width = field_width
        self.moved = False


class EditingMixin:
    # -- params -----------------------------------------------------------------------------

    def _begin_param(self, item: NodeItem, name: str, zone: ParamZone, pos: QPointF) -> None:
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
        if inp.file_kind == "mask":
            self.paint_mask_requested.emit(p.node_id)
            return
        if t is ValueType.BOOLEAN:
            self.controller.set_param(p.node_id, p.name, not bool(value))
        elif t is ValueType.CHOICE:
            self._choose(item, p.name)
        elif t in (ValueType.INT, ValueType.FLOAT):
            step = inp.step or (1 if t is ValueType.INT else 0.01)
            base = value if isinstance(value, int | float) else 0
            if p.zone is ParamZone.DICE:
                self.controller.set_param(p.node_id, p.name, _fit(inp, random.randint(0, SEED_MAX)))
            elif p.zone is ParamZone.DEC:
                self.controller.set_param(p.node_id, p.name, _fit(inp, base - step))
            elif p.zone is ParamZone.INC:
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
        if inp.file_kind == "mask":
            self.paint_mask_requested.emit(item.node_id)
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
        choices = inp.choice_list(self.controller.model_files.list)
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
