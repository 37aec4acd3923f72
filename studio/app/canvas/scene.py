"""The graph scene: items that follow the workflow model's change notifications."""

from __future__ import annotations

from collections import defaultdict

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QImage, QPainter
from PySide6.QtWidgets import QGraphicsItem, QGraphicsScene

from studio.app import theme
from studio.app.binding import follow
from studio.app.canvas.decor import FrameItem, NoteItem
from studio.app.canvas.link_item import LinkItem, RerouteItem
from studio.app.canvas.node_item import NodeItem, RunState
from studio.app.controller import Controller
from studio.graph.types import ValueType
from studio.graph.workflow import Change, ChangeKind, Workflow

SCENE_EXTENT = 200_000.0


class GraphScene(QGraphicsScene):
    def __init__(self, controller: Controller):
        super().__init__()
        self.controller = controller
        self.nodes: dict[str, NodeItem] = {}
        self.links: dict[str, LinkItem] = {}
        self.frames: dict[str, FrameItem] = {}
        self.notes: dict[str, NoteItem] = {}
        self._links_of: dict[str, set[str]] = defaultdict(set)
        self._unsubscribe = lambda: None
        self._overview_on = False
        self._overview: list | None = None
        self.selectionChanged.connect(self.invalidate_overview)
        # A fixed, huge rect: Qt would otherwise recompute the items' bounds on every change.
        self.setSceneRect(QRectF(-SCENE_EXTENT, -SCENE_EXTENT, 2 * SCENE_EXTENT, 2 * SCENE_EXTENT))
        controller.workflow_replaced.connect(self.rebuild)
        controller.problems_changed.connect(self.show_problems)
        self.rebuild()

    @property
    def wf(self) -> Workflow:
        return self.controller.wf

    # -- building -----------------------------------------------------------------------

    def rebuild(self) -> None:
        self._unsubscribe()
        self.clear()
        self.nodes.clear()
        self.links.clear()
        self.frames.clear()
        self.notes.clear()
        self._links_of.clear()
        wf = self.wf
        links = wf.links
        for node in wf.nodes:
            self._add_node_item(node.id, links)
        for lk in links:
            self._add_link_item(lk.id)
        self._rebuild_frames()
        self._rebuild_notes()
        self._unsubscribe = follow(wf, self, self._on_change)
        self.show_problems(self.controller.problems)

    def _add_node_item(self, node_id: str, links: list | None = None) -> NodeItem:
        wf = self.wf
        node = wf.get_node(node_id)
        layout = wf.layout.nodes[node_id]
        spec = self.controller.registry.get(node.type)
        item = NodeItem(node, spec, layout, links if spec is None else ())
        if self._overview_on:
            item.setOpacity(0.0)
        self._overview = None
        self.nodes[node_id] = item
        self.addItem(item)
        return item

    def _add_link_item(self, link_id: str) -> None:
        lk = self.wf.get_link(link_id)
        if lk is None or lk.source not in self.nodes or lk.target not in self.nodes:
            return
        src, dst = self.nodes[lk.source], self.nodes[lk.target]
        if src.spec is None and lk.output not in src.shape_.outputs:
            src.relayout(self.wf.links)
        if dst.spec is None and lk.input not in dst.shape_.inputs:
            dst.relayout(self.wf.links)
        item = LinkItem(link_id, src.port_type(lk.output, True) or dst.port_type(lk.input, False))
        self.links[link_id] = item
        self._links_of[lk.source].add(link_id)
        self._links_of[lk.target].add(link_id)
        dst.linked.add(lk.input)
        self.addItem(item)
        self._sync_reroutes(link_id)
        dst.update()

    def _remove_link_item(self, link_id: str, target: str | None, input_name: str | None) -> None:
        item = self.links.pop(link_id, None)
        if item is None:
            return
        for h in item.reroute_items:
            self.removeItem(h)
        self.removeItem(item)
        for ids in self._links_of.values():
            ids.discard(link_id)
        if target in self.nodes and input_name is not None:
            still = self.wf.link_into(target, input_name)
            if still is None:
                self.nodes[target].linked.discard(input_name)
            self.nodes[target].update()

    def _rebuild_frames(self) -> None:
        for item in self.frames.values():
            self.removeItem(item)
        self.frames = {}
        for f in self.wf.layout.frames:
            item = FrameItem(f)
            self.frames[f.id] = item
            self.addItem(item)

    def _rebuild_notes(self) -> None:
        for item in self.notes.values():
            self.removeItem(item)
        self.notes = {}
        for n in self.wf.layout.notes:
            item = NoteItem(n)
            self.notes[n.id] = item
            self.addItem(item)

    # -- following the model --------------------------------------------------------------

    def _on_change(self, ch: Change) -> None:
        kind = ch.kind
        self._overview = None
        if kind is ChangeKind.NODE_ADDED:
            self._add_node_item(ch.node_id)  # type: ignore[arg-type]
        elif kind is ChangeKind.NODE_REMOVED:
            item = self.nodes.pop(ch.node_id, None)  # type: ignore[arg-type]
            if item is not None:
                self.removeItem(item)
            self._links_of.pop(ch.node_id, None)  # type: ignore[arg-type]
        elif kind is ChangeKind.LINK_ADDED:
            self._add_link_item(ch.link_id)  # type: ignore[arg-type]
        elif kind is ChangeKind.LINK_REMOVED:
            old = ch.old
            self._remove_link_item(ch.link_id, old.target, old.input)  # type: ignore[arg-type]
        elif kind in (
            ChangeKind.PARAM_CHANGED,
            ChangeKind.FLAGS_CHANGED,
            ChangeKind.TITLE_CHANGED,
            ChangeKind.EXTRA_CHANGED,
        ):
            item = self.nodes.get(ch.node_id)  # type: ignore[arg-type]
            if item is not None:
                item._elided.clear()
                item.update()
        elif kind is ChangeKind.LAYOUT_CHANGED:
            if ch.node_id is not None:
                self._apply_node_layout(ch.node_id)
            elif ch.link_id is not None:
                self._sync_reroutes(ch.link_id)
        elif kind is ChangeKind.FRAMES_CHANGED:
            self._rebuild_frames()
        elif kind is ChangeKind.NOTES_CHANGED:
            self._rebuild_notes()
        elif kind is ChangeKind.RESET:
            self.rebuild()

    def _apply_node_layout(self, node_id: str) -> None:
        item = self.nodes.get(node_id)
        if item is None:
            return
        lay = self.wf.layout.nodes[node_id]
        item.layout = lay
        item.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIsMovable, not lay.pinned)
        if (item.pos().x(), item.pos().y()) != lay.pos:
            item.setPos(*lay.pos)
        if item.shape_key != (lay.width, lay.collapsed):
            item.relayout(self.wf.links)
            self.node_item_moved(item)
        item.update()

    def _sync_reroutes(self, link_id: str) -> None:
        item = self.links.get(link_id)
        if item is None:
            return
        for h in item.reroute_items:
            self.removeItem(h)
        item.reroute_items = []
        for i, p in enumerate(self.wf.layout.reroutes.get(link_id, [])):
            h = RerouteItem(item, i, p)
            item.reroute_items.append(h)
            self.addItem(h)
        self.update_link(link_id)

    def update_link(self, link_id: str) -> None:
        item = self.links.get(link_id)
        lk = self.wf.get_link(link_id)
        if item is None or lk is None:
            return
        src, dst = self.nodes.get(lk.source), self.nodes.get(lk.target)
        if src is None or dst is None:
            return
        points = [src.port_scene_pos(lk.output, True)]
        points += [h.pos() for h in item.reroute_items]
        points.append(dst.port_scene_pos(lk.input, False))
        item.set_points(points)

    def node_item_moved(self, item: NodeItem) -> None:
        self._overview = None
        for lid in self._links_of.get(item.node_id, ()):
            self.update_link(lid)

    def reroute_moved(self, handle: RerouteItem) -> None:
        self.update_link(handle.link_item.link_id)

    def frame_item_moved(self, frame: FrameItem) -> None:
        carried = getattr(frame, "carried", None)
        last = getattr(frame, "last_pos", None)
        if carried is None or last is None:
            return
        delta = frame.pos() - last
        frame.last_pos = frame.pos()
        for item in carried:
            item.setPos(item.pos() + delta)

    def nodes_in_frame(self, frame: FrameItem) -> list[QGraphicsItem]:
        r = frame.scene_rect()
        inside: list[QGraphicsItem] = []
        for item in self.nodes.values():
            if r.contains(item.sceneBoundingRect().center()):
                inside.append(item)
        for note in self.notes.values():
            if r.contains(note.sceneBoundingRect().center()):
                inside.append(note)
        return inside

    def set_overview(self, on: bool) -> None:
        """Far zoomed out, nodes are drawn all at once as plain rectangles by the view
        (``paint_overview``); their items stay, transparent, for selecting and dragging."""
        if on == self._overview_on:
            return
        self._overview_on = on
        for item in self.nodes.values():
            item.setOpacity(0.0 if on else 1.0)
        self._overview = None

    def invalidate_overview(self) -> None:
        self._overview = None

    def paint_overview(self, painter: QPainter) -> None:
        if self._overview is None:
            self._overview = self._build_overview()
        painter.setPen(Qt.PenStyle.NoPen)
        for brush, rects in self._overview:
            painter.setBrush(brush)
            painter.drawRects(rects)

    def _build_overview(self) -> list[tuple[QBrush, list[QRectF]]]:
        halo: list[QRectF] = []
        errors: list[QRectF] = []
        bodies: list[QRectF] = []
        titles: dict[str, list[QRectF]] = defaultdict(list)
        muted: list[QRectF] = []
        for item in self.nodes.values():
            p = item.pos()
            w, h = item.shape_.width, item.shape_.height
            body = QRectF(p.x(), p.y(), w, h)
            if item.isSelected():
                halo.append(body.adjusted(-6, -6, 6, 6))
            elif item.problems:
                errors.append(body.adjusted(-6, -6, 6, 6))
            if item.node.mute:
                muted.append(body)
                continue
            bodies.append(body)
            titles[item.title_color().name()].append(QRectF(p.x(), p.y(), w, min(h, 28.0)))
        out: list[tuple[QBrush, list[QRectF]]] = [
            (QBrush(QColor(theme.NODE_SELECTED)), halo),
            (QBrush(QColor(theme.ERROR)), errors),
            (QBrush(QColor(theme.NODE_BODY)), bodies),
            (QBrush(QColor("#3a3d42")), muted),
        ]
        out += [(QBrush(QColor(color)), rects) for color, rects in titles.items()]
        return [(b, r) for b, r in out if r]

    # -- feedback -----------------------------------------------------------------------

    def show_problems(self, problems: list) -> None:
        by_node: dict[str, list[str]] = defaultdict(list)
        ports: dict[str, set[str]] = defaultdict(set)  # the inputs or params at fault
        for p in problems:
            by_node[p.node_id].append(p.message)
            if p.param:
                ports[p.node_id].add(p.param)
        for nid, item in self.nodes.items():
            item.set_problems(by_node.get(nid, []), ports.get(nid, set()))
        self._overview = None
        if self._overview_on:
            self.update()

    def set_drag_hint(self, hint: tuple[ValueType, bool] | None) -> None:
        """While a wire is dragged, ports that cannot take it dim (None ends it)."""
        for item in self.nodes.values():
            item.set_drag_hint(hint)

    def set_run_state(
        self, node_id: str, state: RunState, progress: float | None = None, message: str = ""
    ) -> None:
        """Show a node's part in a run (waiting, running, cached, done, error, ...)."""
        item = self.nodes.get(node_id)
        if item is not None:
            item.set_run_state(state, progress, message)

    def clear_run_states(self) -> None:
        for item in self.nodes.values():
            if item.run_state is not RunState.IDLE or item.run_reason:
                item.set_run_state(RunState.IDLE)
                item.set_run_reason("")

    def set_node_image(self, node_id: str, image: QImage | None) -> None:
        """Show an image on a node (an output, the sampler's live preview, a loaded file)."""
        item = self.nodes.get(node_id)
        if item is not None:
            item.set_image(image)
            self.node_item_moved(item)  # links below an image that grew follow it

    def selected_node_ids(self) -> list[str]:
        return [i.node_id for i in self.selectedItems() if isinstance(i, NodeItem)]

    def select_nodes(self, node_ids: list[str]) -> None:
        self.clearSelection()
        for nid in node_ids:
            item = self.nodes.get(nid)
            if item is not None:
                item.setSelected(True)

    def node_at(self, pos: QPointF) -> NodeItem | None:
        for item in self.items(QRectF(pos.x() - 1, pos.y() - 1, 2, 2)):
            if isinstance(item, NodeItem):
                return item
        return None

    def items_bounds(self, items: list[QGraphicsItem] | None = None) -> QRectF:
        items = (
            items
            if items is not None
            else [
                *self.nodes.values(),
                *self.frames.values(),
                *self.notes.values(),
            ]
        )
        r = QRectF()
        for it in items:
            r = r.united(it.sceneBoundingRect())
        return r
