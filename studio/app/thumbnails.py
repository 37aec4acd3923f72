"""Load Image nodes show their picture (and its painted mask) on the canvas.

Image files are read off the GUI thread (a large PNG takes longer to decode than a
frame lasts); the thumbnail arrives as a signal and is shown if the node still wants it.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from PySide6.QtCore import QObject, QPointF, QSize, Qt, Signal
from PySide6.QtGui import QImage, QImageReader, QPainter

from studio.app.binding import follow
from studio.app.controller import Controller
from studio.graph.workflow import Change, ChangeKind

THUMB = 320


def resolve_image_path(name: str, input_folder: Path, output_folder: Path | None = None) -> Path:
    """Where Load Image finds ``name``: a path, a name in ``input_folder`` (or, with
    ComfyUI's ``[output]`` after it, in ``output_folder``), or an example image shipped
    with Studio (the node's own rule, with its checks: a regular file of a sane size, a
    relative name inside its folder). Raises StudioError otherwise."""
    from nodes.image import checked_image_file

    return checked_image_file(name, input_folder, output_folder)


def read_image(path: Path, max_side: int | None = None) -> QImage:
    reader = QImageReader(str(path))
    reader.setAutoTransform(True)
    if max_side is not None:
        size = reader.size()
        if size.isValid() and max(size.width(), size.height()) > max_side:
            size.scale(QSize(max_side, max_side), Qt.AspectRatioMode.KeepAspectRatio)
            reader.setScaledSize(size)
    return reader.read()


def thumbnail(path: Path, mask_data: str) -> QImage:
    """The picture scaled down, with the painted mask over it as a tint."""
    from studio.app.mask_painter import OVERLAY_OPACITY, decode_mask, tinted

    img = read_image(path, THUMB)
    if img.isNull() or not mask_data:
        return img
    full = QImageReader(str(path)).size()
    mask = decode_mask(mask_data, (full.width(), full.height()))
    if mask is None:
        return img
    out = img.convertToFormat(QImage.Format.Format_ARGB32_Premultiplied)
    small = mask.scaled(out.size(), Qt.AspectRatioMode.IgnoreAspectRatio)
    p = QPainter(out)
    p.setOpacity(OVERLAY_OPACITY)
    p.drawImage(QPointF(0, 0), tinted(small))
    p.end()
    return out


class LoadImageThumbnails(QObject):
    """Follows the open workflow and keeps image-loading nodes' thumbnails current."""

    loaded = Signal(str, object, object)  # node id, key, QImage

    def __init__(self, controller: Controller, scene) -> None:
        super().__init__(controller)
        self.controller = controller
        self.scene = scene
        self.wanted: dict[str, tuple[str, str]] = {}
        self._unsubscribe = lambda: None
        self.loaded.connect(self._show)
        controller.workflow_replaced.connect(self.refresh_all)
        self.refresh_all()

    def _params(self, node_id: str) -> tuple[str, str] | None:
        spec = self.controller.spec(node_id)
        if spec is None:
            return None
        image = next((i for i in spec.params if i.file_kind == "image"), None)
        if image is None:
            return None
        mask = next((i for i in spec.params if i.file_kind == "mask"), None)
        return image.name, mask.name if mask else ""

    def refresh_all(self) -> None:
        self._unsubscribe()
        self._unsubscribe = follow(self.controller.wf, self, self._on_change)
        self.wanted.clear()
        for n in self.controller.wf.nodes:
            self.refresh(n.id)

    def _on_change(self, ch: Change) -> None:
        if ch.kind is ChangeKind.RESET:
            self.refresh_all()
        elif ch.kind in (ChangeKind.NODE_ADDED, ChangeKind.PARAM_CHANGED) and ch.node_id:
            self.refresh(ch.node_id)
        elif ch.kind is ChangeKind.NODE_REMOVED and ch.node_id:
            self.wanted.pop(ch.node_id, None)

    def refresh(self, node_id: str) -> None:
        if not self.controller.wf.has_node(node_id):
            return
        names = self._params(node_id)
        if names is None:
            return
        node = self.controller.wf.get_node(node_id)
        image = str(node.params.get(names[0]) or "")
        mask = str(node.params.get(names[1]) or "") if names[1] else ""
        key = (image, mask)
        if self.wanted.get(node_id) == key:
            return
        self.wanted[node_id] = key
        if not image:
            self.scene.set_node_image(node_id, None)
            return
        threading.Thread(
            target=self._load, args=(node_id, key), name="studio-thumbnail", daemon=True
        ).start()

    def _load(self, node_id: str, key: tuple[str, str]) -> None:
        try:
            settings = self.controller.settings
            path = resolve_image_path(key[0], settings.input_path, settings.output_path)
            img = thumbnail(path, key[1])
        except Exception:  # a missing or broken file shows no picture; the run says why
            img = QImage()
        with contextlib.suppress(RuntimeError):  # the window closed meanwhile
            self.loaded.emit(node_id, key, img)

    def _show(self, node_id: str, key: object, image: object) -> None:
        if self.wanted.get(node_id) != key:
            return  # the node's image changed again meanwhile
        assert isinstance(image, QImage)
        self.scene.set_node_image(node_id, None if image.isNull() else image)
