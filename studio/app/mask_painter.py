"""Painting a mask on an image: brush and eraser with size and hardness, fill, clear,
invert, undo. White (painted) is where the inpaint nodes repaint.

The mask is an 8-bit alpha image at the picture's own size. A stroke stamps soft dabs
into it and repaints only the rectangle it touched, through a cached tinted overlay, so
painting over a 2048x2048 image stays fluid. The result is stored in the workflow as a
base64 PNG (:func:`encode_mask` / :func:`decode_mask`), so it can never be lost.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QPointF, QRect, QRectF, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QImage,
    QKeySequence,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QPixmap,
    QRadialGradient,
    QShortcut,
    QWheelEvent,
)
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QLabel,
    QSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from studio.app import theme

OVERLAY = QColor(255, 64, 96)
OVERLAY_OPACITY = 0.55
MAX_UNDO = 30


def encode_mask(mask: QImage) -> str:
    """An alpha mask as a base64 grayscale PNG (white = masked); "" when nothing is painted."""
    if mask.isNull() or is_empty(mask):
        return ""
    gray = alpha_to_gray(mask)
    buf = QBuffer()
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    gray.save(buf, "PNG")
    return base64.b64encode(bytes(buf.data().data())).decode("ascii")


def decode_mask(data: str, size: tuple[int, int] | None = None) -> QImage | None:
    """A stored mask as an alpha image (None when unreadable or of another size)."""
    if not data:
        return None
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError:
        return None
    img = QImage()
    if not img.loadFromData(QByteArray(raw), "PNG"):
        return None
    if size is not None and (img.width(), img.height()) != size:
        return None
    return gray_to_alpha(img.convertToFormat(QImage.Format.Format_Grayscale8))


def alpha_to_gray(mask: QImage) -> QImage:
    a = mask.convertToFormat(QImage.Format.Format_Alpha8)
    # Same bytes, read as gray levels: alpha 255 (painted) becomes white.
    return QImage(
        a.constBits(), a.width(), a.height(), a.bytesPerLine(), QImage.Format.Format_Grayscale8
    ).copy()


def gray_to_alpha(gray: QImage) -> QImage:
    return QImage(
        gray.constBits(),
        gray.width(),
        gray.height(),
        gray.bytesPerLine(),
        QImage.Format.Format_Alpha8,
    ).copy()


def is_empty(mask: QImage) -> bool:
    a = mask.convertToFormat(QImage.Format.Format_Alpha8)
    data = a.constBits().tobytes()
    return data.count(0) == len(data)


def tinted(mask: QImage, rect: QRect | None = None) -> QImage:
    """The mask as a coloured overlay (ARGB), or the part of it in ``rect``."""
    r = rect if rect is not None else mask.rect()
    out = QImage(r.size(), QImage.Format.Format_ARGB32_Premultiplied)
    out.fill(OVERLAY)
    p = QPainter(out)
    p.setCompositionMode(QPainter.CompositionMode.CompositionMode_DestinationIn)
    p.drawImage(QPointF(0, 0), mask, QRectF(r))
    p.end()
    return out


@dataclass
class Brush:
    size: float = 64.0  # diameter in image pixels
    hardness: float = 0.7  # 1: hard edge, 0: soft all the way
    erase: bool = False


def brush_size_for(width: int, height: int) -> float:
    """A first brush that suits the picture: an eighth of its shorter side (8 px on a 64 px
    image, 64 px on a 512 px one), so a stroke never covers most of a small image."""
    return float(max(2, round(min(width, height) / 8)))


class MaskCanvas(QWidget):
    """Shows the picture with the mask over it, and paints into the mask."""

    changed = Signal()

    def __init__(self, image: QImage, mask: QImage | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.image = QPixmap.fromImage(image)
        self.size_ = image.size()
        if mask is None or mask.size() != image.size():
            mask = QImage(image.size(), QImage.Format.Format_Alpha8)
            mask.fill(0)
        self.mask = mask.convertToFormat(QImage.Format.Format_Alpha8)
        self.overlay = tinted(self.mask)
        self.brush = Brush(size=brush_size_for(image.width(), image.height()))
        self.undo_stack: list[QImage] = []
        self.redo_stack: list[QImage] = []
        self.zoom = 1.0
        self.offset = QPointF(0, 0)
        self._last: QPointF | None = None
        self._pan: QPointF | None = None
        self._dab_cache: dict[tuple[int, float, bool], QImage] = {}
        self._cursor = QPointF(-1000, -1000)
        self._fitted = True
        self.setMouseTracking(True)
        self.setMinimumSize(320, 240)
        self.setCursor(Qt.CursorShape.CrossCursor)

    # -- view ----------------------------------------------------------------------------------

    def fit(self) -> None:
        w, h = self.size_.width(), self.size_.height()
        self.zoom = min(self.width() / max(w, 1), self.height() / max(h, 1))
        self.offset = QPointF(
            (self.width() - w * self.zoom) / 2, (self.height() - h * self.zoom) / 2
        )
        self._fitted = True
        self.update()

    def resizeEvent(self, event) -> None:
        if self._fitted:
            self.fit()
        super().resizeEvent(event)

    def to_image(self, p: QPointF) -> QPointF:
        return (p - self.offset) / self.zoom

    def to_widget(self, r: QRectF) -> QRect:
        return QRectF(
            self.offset.x() + r.x() * self.zoom,
            self.offset.y() + r.y() * self.zoom,
            r.width() * self.zoom,
            r.height() * self.zoom,
        ).toAlignedRect()

    def wheelEvent(self, event: QWheelEvent) -> None:
        d = event.angleDelta().y()
        if not d:
            return
        if event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            self.set_brush_size(self.brush.size * 1.001**d)
            return
        a = event.position()
        pt = self.to_image(a)
        self.zoom = max(0.02, min(32.0, self.zoom * 1.0015**d))
        self.offset = a - pt * self.zoom
        self._fitted = False
        self.update()

    def set_brush_size(self, size: float) -> None:
        self.brush.size = max(1.0, min(1024.0, size))
        self.update()

    # -- painting into the mask ---------------------------------------------------------------

    def _dab(self) -> QImage:
        """One stamp of the brush: a disc, soft beyond ``hardness`` of its radius."""
        b = self.brush
        d = max(1, round(b.size))
        key = (d, round(b.hardness, 3), b.erase)
        dab = self._dab_cache.get(key)
        if dab is None:
            dab = QImage(d, d, QImage.Format.Format_ARGB32_Premultiplied)
            dab.fill(Qt.GlobalColor.transparent)
            p = QPainter(dab)
            p.setRenderHint(QPainter.RenderHint.Antialiasing)
            p.setPen(Qt.PenStyle.NoPen)
            grad = QRadialGradient(QPointF(d / 2, d / 2), d / 2)
            grad.setColorAt(0.0, QColor(0, 0, 0, 255))
            grad.setColorAt(min(0.999, max(0.0, b.hardness)), QColor(0, 0, 0, 255))
            grad.setColorAt(1.0, QColor(0, 0, 0, 0))
            p.setBrush(grad)
            p.drawEllipse(QRectF(0, 0, d, d))
            p.end()
            if len(self._dab_cache) > 16:
                self._dab_cache.clear()
            self._dab_cache[key] = dab
        return dab

    def stroke_to(self, pt: QPointF) -> None:
        """Stamp dabs from the last point to ``pt`` (image pixels) and show that part."""
        last = self._last if self._last is not None else pt
        dab = self._dab()
        d = dab.width()
        spacing = max(1.0, d * 0.15)
        dist = ((pt.x() - last.x()) ** 2 + (pt.y() - last.y()) ** 2) ** 0.5
        n = max(1, int(dist / spacing)) if self._last is not None else 1
        p = QPainter(self.mask)
        p.setCompositionMode(
            QPainter.CompositionMode.CompositionMode_DestinationOut
            if self.brush.erase
            else QPainter.CompositionMode.CompositionMode_SourceOver
        )
        dirty = QRectF()
        for i in range(1, n + 1) if self._last is not None else (0,):
            t = i / n
            c = last + (pt - last) * t
            r = QRectF(c.x() - d / 2, c.y() - d / 2, d, d)
            p.drawImage(r.topLeft(), dab)
            dirty = dirty.united(r)
        p.end()
        self._last = pt
        self._refresh(dirty.toAlignedRect())

    def _refresh(self, rect: QRect) -> None:
        rect = rect.intersected(self.mask.rect())
        if rect.isEmpty():
            return
        part = tinted(self.mask, rect)
        p = QPainter(self.overlay)
        p.setCompositionMode(QPainter.CompositionMode.CompositionMode_Source)
        p.drawImage(rect.topLeft(), part)
        p.end()
        self.update(self.to_widget(QRectF(rect)).adjusted(-2, -2, 2, 2))
        self.changed.emit()

    def _whole_changed(self) -> None:
        self.overlay = tinted(self.mask)
        self.update()
        self.changed.emit()

    def checkpoint(self) -> None:
        """Remember the mask before an edit, for undo."""
        self.undo_stack.append(self.mask.copy())
        del self.undo_stack[:-MAX_UNDO]
        self.redo_stack.clear()

    def undo(self) -> None:
        if self.undo_stack:
            self.redo_stack.append(self.mask)
            self.mask = self.undo_stack.pop()
            self._whole_changed()

    def redo(self) -> None:
        if self.redo_stack:
            self.undo_stack.append(self.mask)
            self.mask = self.redo_stack.pop()
            self._whole_changed()

    def fill(self) -> None:
        self.checkpoint()
        self.mask.fill(255)
        self._whole_changed()

    def clear(self) -> None:
        self.checkpoint()
        self.mask.fill(0)
        self._whole_changed()

    def invert(self) -> None:
        self.checkpoint()
        self.mask.invertPixels(QImage.InvertMode.InvertRgba)
        self._whole_changed()

    # -- input --------------------------------------------------------------------------------

    def mousePressEvent(self, event: QMouseEvent) -> None:
        pos = event.position()
        if event.button() == Qt.MouseButton.MiddleButton:
            self._pan = pos
            return
        if event.button() in (Qt.MouseButton.LeftButton, Qt.MouseButton.RightButton):
            self.checkpoint()
            # The right button erases, whatever tool is chosen.
            self._erase_was = self.brush.erase
            if event.button() == Qt.MouseButton.RightButton:
                self.brush.erase = True
            self._last = None
            self.stroke_to(self.to_image(pos))

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        pos = event.position()
        old = self._cursor
        self._cursor = pos
        if self._pan is not None:
            self.offset += pos - self._pan
            self._pan = pos
            self._fitted = False
            self.update()
            return
        if self._last is not None and event.buttons() & (
            Qt.MouseButton.LeftButton | Qt.MouseButton.RightButton
        ):
            self.stroke_to(self.to_image(pos))
        r = self.brush.size * self.zoom / 2 + 3
        for c in (old, pos):
            self.update(QRectF(c.x() - r, c.y() - r, 2 * r, 2 * r).toAlignedRect())

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        self._pan = None
        if self._last is not None:
            self._last = None
            self.brush.erase = getattr(self, "_erase_was", self.brush.erase)

    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        p.fillRect(event.rect(), QColor(theme.CANVAS_BG))
        target = QRectF(
            self.offset.x(),
            self.offset.y(),
            self.size_.width() * self.zoom,
            self.size_.height() * self.zoom,
        )
        # Only the part of the picture under the repainted rectangle is drawn.
        clip = QRectF(event.rect()).intersected(target)
        if not clip.isEmpty():
            src = QRectF(
                (clip.x() - self.offset.x()) / self.zoom,
                (clip.y() - self.offset.y()) / self.zoom,
                clip.width() / self.zoom,
                clip.height() / self.zoom,
            )
            p.drawPixmap(clip, self.image, src)
            p.setOpacity(OVERLAY_OPACITY)
            p.drawImage(clip, self.overlay, src)
            p.setOpacity(1.0)
        c = self._cursor
        r = self.brush.size * self.zoom / 2
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.setPen(QColor(255, 255, 255, 200))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawEllipse(c, r, r)
        p.setPen(QColor(0, 0, 0, 160))
        p.drawEllipse(c, r + 1, r + 1)


class MaskPainter(QDialog):
    """A dialog around :class:`MaskCanvas` with its tools; ``mask_data()`` after OK."""

    def __init__(
        self,
        image: QImage,
        mask: QImage | None = None,
        parent: QWidget | None = None,
        title: str = "Paint mask",
    ):
        super().__init__(parent)
        self.setWindowTitle(title)
        self.canvas = MaskCanvas(image, mask)
        self.brush_button = self._tool("Brush", "B", lambda: self.set_erase(False), True)
        self.eraser_button = self._tool("Eraser", "E", lambda: self.set_erase(True), True)
        self.brush_button.setChecked(True)
        longest = max(image.width(), image.height(), 8)
        self.size_slider = self._slider(
            1, min(512, longest), round(self.canvas.brush.size), self._size
        )
        self.hard_slider = self._slider(0, 100, round(self.canvas.brush.hardness * 100), self._hard)
        bar = QHBoxLayout()
        bar.addWidget(self.brush_button)
        bar.addWidget(self.eraser_button)
        bar.addWidget(QLabel("Size"))
        bar.addWidget(self.size_slider, 2)
        bar.addWidget(QLabel("Hardness"))
        bar.addWidget(self.hard_slider, 1)
        for text, slot, key in (
            ("Fill", self.canvas.fill, "F"),
            ("Clear", self.canvas.clear, "Delete"),
            ("Invert", self.canvas.invert, "I"),
            ("Undo", self.canvas.undo, QKeySequence.StandardKey.Undo),
            ("Redo", self.canvas.redo, QKeySequence.StandardKey.Redo),
        ):
            bar.addWidget(self._tool(text, key, slot, False))
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        hint = QLabel(
            "Left: paint · Right: erase · Middle drag: pan · Wheel: zoom · Ctrl+wheel: brush size"
        )
        hint.setObjectName("dim")
        lay = QVBoxLayout(self)
        lay.addLayout(bar)
        lay.addWidget(self.canvas, 1)
        foot = QHBoxLayout()
        foot.addWidget(hint, 1)
        foot.addWidget(buttons)
        lay.addLayout(foot)
        self.resize(1000, 760)

    def _tool(self, text: str, key, slot, checkable: bool) -> QToolButton:
        b = QToolButton()
        b.setText(text)
        b.setCheckable(checkable)
        b.clicked.connect(lambda _=False: slot())
        seq = QKeySequence(key)
        b.setToolTip(f"{text} ({seq.toString()})")
        QShortcut(seq, self, activated=slot)
        return b

    def _slider(self, lo: int, hi: int, value: int, slot) -> QSlider:
        s = QSlider(Qt.Orientation.Horizontal)
        s.setRange(lo, hi)
        s.setValue(value)
        s.valueChanged.connect(slot)
        return s

    def _size(self, v: int) -> None:
        self.canvas.set_brush_size(float(v))

    def _hard(self, v: int) -> None:
        self.canvas.brush.hardness = v / 100.0

    def set_erase(self, on: bool) -> None:
        self.canvas.brush.erase = on
        self.brush_button.setChecked(not on)
        self.eraser_button.setChecked(on)

    def mask_data(self) -> str:
        return encode_mask(self.canvas.mask)
