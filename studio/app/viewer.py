"""The image viewer: the latest output with zoom and pan, and a before/after compare slider.

Wheel zooms under the cursor, middle-drag or Space+drag pans (the canvas's habits),
double-click fits; a left drag takes the image out as a PNG file (with its workflow).
In compare mode the divider follows a left drag instead: left of it is "before".
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QPoint, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QImage,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QPen,
    QPixmap,
    QWheelEvent,
)
from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QDockWidget,
    QHBoxLayout,
    QLabel,
    QStackedWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from studio.app import theme
from studio.app.provenance_badge import ProvenanceBadge
from studio.app.runner import Output

MIN_ZOOM, MAX_ZOOM = 0.05, 32.0


class ImageView(QWidget):
    """Draws one image (or two, split by a divider) with zoom and pan."""

    drag_out = Signal()  # a left drag started on the image (not in compare mode)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.pixmap: QPixmap | None = None
        self.before: QPixmap | None = None
        self.compare = False
        self.split = 0.5  # divider position, a fraction of the image's width
        self.zoom = 1.0
        self.offset = QPointF(0, 0)  # the image's top left, in widget pixels
        self.fitted = True
        self._pan: QPoint | None = None
        self._press: QPoint | None = None
        self._dragging_split = False
        self._space = False
        self.setMinimumSize(160, 120)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        self._bg = QColor(theme.CANVAS_BG)

    # -- content --------------------------------------------------------------------------

    def set_image(self, image: QImage | None, *, keep_view: bool = False) -> None:
        old = self.pixmap.size() if self.pixmap is not None else None
        self.pixmap = QPixmap.fromImage(image) if image is not None else None
        if self.pixmap is not None and (not keep_view or self.fitted or old != self.pixmap.size()):
            self.fit()
        self.update()

    def set_before(self, image: QImage | None) -> None:
        self.before = QPixmap.fromImage(image) if image is not None else None
        self.update()

    def set_compare(self, on: bool) -> None:
        self.compare = on
        self.update()

    # -- view -------------------------------------------------------------------------------

    def fit(self) -> None:
        if self.pixmap is None:
            return
        w, h = self.pixmap.width(), self.pixmap.height()
        z = min(self.width() / max(w, 1), self.height() / max(h, 1))
        self.zoom = max(MIN_ZOOM, min(MAX_ZOOM, z))
        self.offset = QPointF(
            (self.width() - w * self.zoom) / 2, (self.height() - h * self.zoom) / 2
        )
        self.fitted = True
        self.update()

    def set_zoom(self, z: float, anchor: QPointF | None = None) -> None:
        z = max(MIN_ZOOM, min(MAX_ZOOM, z))
        a = anchor if anchor is not None else QPointF(self.width() / 2, self.height() / 2)
        image_pt = (a - self.offset) / self.zoom
        self.zoom = z
        self.offset = a - image_pt * z
        self.fitted = False
        self.update()

    def image_rect(self) -> QRectF:
        if self.pixmap is None:
            return QRectF()
        return QRectF(
            self.offset.x(),
            self.offset.y(),
            self.pixmap.width() * self.zoom,
            self.pixmap.height() * self.zoom,
        )

    def to_image(self, p: QPointF) -> QPointF:
        return (p - self.offset) / self.zoom

    def resizeEvent(self, event) -> None:
        if self.fitted:
            self.fit()
        super().resizeEvent(event)

    # -- painting -----------------------------------------------------------------------------

    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), self._bg)
        if self.pixmap is None:
            p.setPen(QColor(theme.TEXT_DIM))
            p.drawText(
                self.rect(), Qt.AlignmentFlag.AlignCenter, "Run a workflow: its images show here."
            )
            return
        smooth = self.zoom < 1.0
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, smooth)
        r = self.image_rect()
        p.drawPixmap(r, self.pixmap, QRectF(self.pixmap.rect()))
        if self.compare and self.before is not None:
            x = r.left() + r.width() * self.split
            src_w = self.before.width() * self.split
            p.drawPixmap(
                QRectF(r.left(), r.top(), x - r.left(), r.height()),
                self.before,
                QRectF(0, 0, src_w, self.before.height()),
            )
            p.setPen(QPen(QColor("#ffffff"), 2))
            p.drawLine(QPointF(x, r.top()), QPointF(x, r.bottom()))
            p.setBrush(QColor("#ffffff"))
            p.drawEllipse(QPointF(x, r.center().y()), 6, 6)
            p.setPen(QColor(theme.TEXT))
            p.drawText(QPointF(r.left() + 8, r.top() + 18), "before")
            p.drawText(QPointF(r.right() - 42, r.top() + 18), "after")

    # -- input --------------------------------------------------------------------------------

    def wheelEvent(self, event: QWheelEvent) -> None:
        delta = event.angleDelta().y() or event.angleDelta().x()
        if delta:
            self.set_zoom(self.zoom * 1.0015**delta, event.position())

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = event.key()
        if key == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space = True
        elif key in (Qt.Key.Key_Home, Qt.Key.Key_Period):
            self.fit()
        elif key == Qt.Key.Key_1:
            self.set_zoom(1.0)
        else:
            super().keyPressEvent(event)

    def keyReleaseEvent(self, event: QKeyEvent) -> None:
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space = False
        else:
            super().keyReleaseEvent(event)

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        self.fit()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        b = event.button()
        if b == Qt.MouseButton.MiddleButton or (b == Qt.MouseButton.LeftButton and self._space):
            self._pan = event.position().toPoint()
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
            return
        if b == Qt.MouseButton.LeftButton and self.pixmap is not None:
            if self.compare and self.before is not None:
                self._dragging_split = True
                self._move_split(event.position())
            else:
                self._press = event.position().toPoint()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        pos = event.position()
        if self._pan is not None:
            d = pos.toPoint() - self._pan
            self._pan = pos.toPoint()
            self.offset += QPointF(d)
            self.fitted = False
            self.update()
        elif self._dragging_split:
            self._move_split(pos)
        elif self._press is not None:
            moved = (pos.toPoint() - self._press).manhattanLength()
            if moved >= QApplication.startDragDistance():
                self._press = None
                self.drag_out.emit()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        self._pan = None
        self._press = None
        self._dragging_split = False
        self.unsetCursor()

    def _move_split(self, pos: QPointF) -> None:
        r = self.image_rect()
        if r.width() > 0:
            self.split = max(0.0, min(1.0, (pos.x() - r.left()) / r.width()))
            self.update()


class ViewerPanel(QWidget):
    """The viewer dock: the image, its caption, fit / 1:1, and the compare switch."""

    drag_requested = Signal(object)  # Output
    paint_requested = Signal(object)  # Output

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.output: Output | None = None
        self.before: Output | None = None
        self.view = ImageView()
        self.caption = QLabel("")
        self.caption.setObjectName("dim")
        self.compare_box = QCheckBox("Compare")
        self.compare_box.setToolTip(
            "Before/after: drag the divider. 'Before' is the image shown before this one, "
            "or the one chosen with 'Compare with this' in the history."
        )
        self.compare_box.toggled.connect(self._toggle_compare)
        fit = QToolButton()
        fit.setText("Fit")
        fit.clicked.connect(self.view.fit)
        one = QToolButton()
        one.setText("1:1")
        one.clicked.connect(lambda: self.view.set_zoom(1.0))
        mask = QToolButton()
        mask.setText("Inpaint…")
        mask.setToolTip(
            "Inpaint this image: the workflow becomes an inpaint of it and the mask painter "
            "opens; paint, OK, then Ctrl+Enter"
        )
        mask.clicked.connect(lambda: self.output and self.paint_requested.emit(self.output))
        self.badge = ProvenanceBadge()
        bar = QHBoxLayout()
        bar.setContentsMargins(6, 4, 6, 4)
        bar.addWidget(self.caption, 1)
        bar.addWidget(self.badge)
        bar.addWidget(self.compare_box)
        bar.addWidget(fit)
        bar.addWidget(one)
        bar.addWidget(mask)
        self._add_large_view_buttons(bar)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addLayout(bar)
        # One image, or (after "Compare" in the history) up to four side by side.
        from studio.app.compare import CompareGrid

        self.grid = CompareGrid()
        self.stack = QStackedWidget()
        self.stack.addWidget(self.view)
        self.stack.addWidget(self.grid)
        lay.addWidget(self.stack, 1)
        self.view.drag_out.connect(
            lambda: self.output and not self.live and self.drag_requested.emit(self.output)
        )
        self.live = False

    def show_output(self, output: Output) -> None:
        """Show an output; the one shown until now becomes the compare slider's 'before'."""
        if self.output is not None and self.output is not output and not self.live:
            self.set_before(self.output)
        self.live = False
        self.output = output
        self.stack.setCurrentWidget(self.view)
        self.view.set_image(output.image, keep_view=True)
        n = f" #{output.index + 1}" if output.index else ""
        self.caption.setText(f"{output.node_title}{n} · run {output.job_id}")
        saved = getattr(output.pil, "info", {}).get("studio_path")
        if saved:
            self.badge.check(str(saved))
        else:
            self.badge.clear(
                "Not saved",
                "Saved or dragged out, it carries what the settings ask for "
                "(C2PA manifest, watermark)",
            )

    def show_file(self, path: str) -> bool:
        """Show an image file (one dropped on the canvas) with its provenance."""
        from studio.app.thumbnails import read_image

        image = read_image(Path(path))
        if image.isNull():
            return False
        if self.output is not None and not self.live:
            self.set_before(self.output)
        self.live = False
        self.output = None  # a file, not an output: nothing to drag out or paint on
        self.view.set_image(image)
        self.caption.setText(f"{Path(path).name} · dropped")
        self.badge.check(path)
        return True

    def show_preview(self, image: QImage, title: str) -> None:
        """The sampler's live preview (until the run's images arrive)."""
        if not self.live and self.output is not None:
            self.set_before(self.output)
        self.live = True
        self.stack.setCurrentWidget(self.view)
        self.view.set_image(image, keep_view=True)
        self.caption.setText(f"{title} · preview")
        self.badge.clear()

    def set_before(self, output: Output) -> None:
        self.before = output
        self.view.set_before(output.image)

    def compare_with(self, output: Output) -> None:
        self.set_before(output)
        self.compare_box.setChecked(True)

    def _toggle_compare(self, on: bool) -> None:
        self.view.set_compare(on)

    # -- side by side, and larger --------------------------------------------------------------

    def compare_outputs(self, outputs: list[Output], captions: list[str]) -> None:
        """Two to four images side by side, zoomed and panned together (one shows alone)."""
        if len(outputs) < 2:
            if outputs:
                self.show_output(outputs[0])
            return
        self.grid.set_outputs(outputs, captions)
        self.stack.setCurrentWidget(self.grid)
        self.caption.setText(f"Comparing {len(self.grid.outputs)} images")

    @property
    def comparing(self) -> list[Output]:
        return self.grid.outputs if self.stack.currentWidget() is self.grid else []

    def _add_large_view_buttons(self, bar: QHBoxLayout) -> None:
        for text, tip, slot in (
            (
                "Window",
                "Show the viewer in its own large window (again: back in its dock)",
                self.detach,
            ),
            ("Full screen", "Show the viewer full screen (F11 or Esc: back)", self.full_screen),
        ):
            b = QToolButton()
            b.setText(text)
            b.setToolTip(tip)
            b.clicked.connect(lambda _=False, f=slot: f())
            bar.addWidget(b)

    def _dock(self) -> QDockWidget | None:
        parent = self.parentWidget()
        return parent if isinstance(parent, QDockWidget) else None

    def detach(self) -> None:
        """The viewer (with its zoom and compare as they are) in a window of its own, large;
        asked again, back in its dock."""
        dock = self._dock()
        if dock is None:
            return
        if dock.isFloating():
            dock.showNormal()
            dock.setFloating(False)
            return
        dock.setFloating(True)
        screen = (dock.screen() or QApplication.primaryScreen()).availableGeometry()
        dock.setGeometry(
            screen.adjusted(
                screen.width() // 10,
                screen.height() // 10,
                -screen.width() // 10,
                -screen.height() // 10,
            )
        )
        dock.show()
        dock.raise_()

    def full_screen(self) -> None:
        dock = self._dock()
        if dock is None:
            return
        if dock.isFullScreen():
            dock.showNormal()
            dock.setFloating(False)
            return
        dock.setFloating(True)
        dock.showFullScreen()
        dock.raise_()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        dock = self._dock()
        full = dock is not None and dock.isFullScreen()
        if event.key() == Qt.Key.Key_F11 or (event.key() == Qt.Key.Key_Escape and full):
            self.full_screen()
            return
        super().keyPressEvent(event)
