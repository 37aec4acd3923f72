"""Context menus and drops on the canvas.

Part of :class:`~studio.app.canvas.view.GraphView` (a mixin over its state).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QContextMenuEvent, QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QMenu

from studio.app.canvas.decor import FrameItem, NoteItem
from studio.app.canvas.link_item import LinkItem, RerouteItem
from studio.app.canvas.node_item import NodeItem
from studio.app.canvas.placement import insert_lora
from studio.graph.types import ValueType

NODE_TYPE_MIME = "application/x-studio-node-type"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
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


class MenusMixin:
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
            self._run_menu_items(menu, item)
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
            lk = c.wf.get_link(item.link_id)
            if lk is not None and c._port_type(lk.source, lk.output, True) is ValueType.MODEL:
                menu.addAction("Insert LoRA", lambda: insert_lora(self, lk.source, lk.output))
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

    def _run_menu_items(self, menu: QMenu, item: NodeItem) -> None:
        """Entries about images and seeds: paint a mask, view the image, seed control."""
        c = self.controller
        spec = item.spec
        if spec is None:
            return
        node_id = item.node_id
        if any(i.file_kind == "mask" for i in spec.params):
            menu.addAction("Inpaint…", lambda: self.inpaint_requested.emit(node_id))
            menu.addAction("Paint mask…", lambda: self.paint_mask_requested.emit(node_id))
        if item.image is not None:
            menu.addAction("Show in viewer", lambda: self.image_activated.emit(node_id))
        if any(o.type is ValueType.MODEL for o in spec.outputs):
            menu.addAction("Insert LoRA", lambda: insert_lora(self, node_id))
        from studio.graph.seeds import SEED_CONTROLS

        for inp in spec.params:
            if not inp.seed:
                continue
            sub = menu.addMenu(f"After each run, {inp.name.replace('_', ' ')}")
            current = c.seed_control(node_id, inp.name)
            for mode in SEED_CONTROLS:
                act = sub.addAction(
                    mode, lambda m=mode, n=inp.name: c.set_seed_control(node_id, n, m)
                )
                act.setCheckable(True)
                act.setChecked(mode == current)
        menu.addSeparator()

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
        added: list[str] = []
        on_node = self.graph.node_at(pos)
        for url in md.urls():
            path = url.toLocalFile()
            if not path:
                continue
            lower = path.lower()
            # Several images: side by side; only the first may land on a node.
            at = QPointF(pos.x() + 260 * len(added), pos.y())
            if lower.endswith(".json"):
                self.open_file_requested.emit(path)
            elif lower.endswith(IMAGE_SUFFIXES):
                if (
                    on_node is None
                    and lower.endswith(RECIPE_SUFFIXES)
                    and not added
                    and carries_workflow(path)
                ):
                    self.open_file_requested.emit(path)  # an image that is also its recipe
                    break
                node_id = self.drop_image(path, at, onto=not added)
                if node_id:
                    added.append(node_id)
                    if len(added) == 1:
                        self.image_dropped.emit(path)
        if added:
            self.graph.select_nodes(added)
        event.acceptProposedAction()

    def image_param(self, type_id: str) -> str | None:
        spec = self.controller.registry.get(type_id)
        if spec is None:
            return None
        return next((i.name for i in spec.params if i.file_kind == "image"), None)

    def drop_image(self, path: str, pos: QPointF, *, onto: bool = True) -> str | None:
        """An image dropped on an image-loading node replaces its image (and its painted
        mask, which was for the old image); elsewhere it adds a Load Image node."""
        reg = self.controller.registry
        node = self.graph.node_at(pos) if onto else None
        if node is not None and (name := self.image_param(node.node.type)):
            values: dict[str, Any] = {name: str(Path(path))}
            if node.spec is not None:
                for inp in node.spec.params:
                    if inp.file_kind == "mask" and node.node.params.get(inp.name):
                        values[inp.name] = ""
            self.controller.set_params(
                node.node_id, values, f"Replace the image of {self.controller.title(node.node_id)}"
            )
            return node.node_id
        loader = next((s for s in reg if self.image_param(s.type_id)), None)
        if loader is None:
            self.controller.message.emit("no node type here loads images")
            return None
        name = self.image_param(loader.type_id)
        assert name is not None
        return self.controller.add_node(
            loader.type_id, (pos.x(), pos.y()), params={name: str(Path(path))}
        )


#: Images that may carry the workflow that made them (PNG text chunks, JPEG / WebP EXIF).
RECIPE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def carries_workflow(path: str) -> bool:
    """Whether a PNG, JPEG or WebP holds a workflow Studio opens: its own, ComfyUI's, or
    A1111's parameters (read from its text chunks or EXIF, not decoded)."""
    from studio.graph.exifmeta import ExifError, read_exif_text_from
    from studio.graph.fileformat import png_workflow_keys
    from studio.graph.pngmeta import PngError, is_png, read_png_text_file

    keys = png_workflow_keys()
    try:
        if is_png(path):
            return any(k in keys for k in read_png_text_file(path, keys=keys))
        with open(path, "rb") as f:
            return any(k in keys for k in read_exif_text_from(f))
    except (OSError, PngError, ExifError):
        return False
