"""Comparing up to four images side by side, zoomed and panned together.

Each image is an :class:`~studio.app.viewer.ImageView` (the viewer's own zoom, pan and
fit habits); a zoom or pan in one is applied to all, so the same detail is under the
cursor in every image. Under each, its caption (run, seed, the prompt's first words).
"""

from __future__ import annotations

from PySide6.QtCore import QPointF
from PySide6.QtWidgets import QGridLayout, QLabel, QVBoxLayout, QWidget

from studio.app.runner import Output
from studio.app.viewer import ImageView

MAX_COMPARED = 4


class SyncedImageView(ImageView):
    """An ImageView that tells its grid when its zoom or pan changes."""

    def __init__(self, grid: CompareGrid):
        super().__init__()
        self.grid = grid
        self.setMinimumSize(80, 60)  # four fit in the viewer dock too

    def set_zoom(self, z: float, anchor: QPointF | None = None) -> None:
        super().set_zoom(z, anchor)
        self.grid.follow(self)

    def fit(self) -> None:
        super().fit()
        if getattr(self, "grid", None) is not None:
            self.grid.follow(self)

    def mouseMoveEvent(self, event) -> None:
        panning = self._pan is not None
        super().mouseMoveEvent(event)
        if panning:
            self.grid.follow(self)


class CompareGrid(QWidget):
    """Two to four outputs side by side (two or three in a row, four as two by two)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.outputs: list[Output] = []
        self.views: list[SyncedImageView] = []
        self.captions: list[QLabel] = []
        self._following = False
        self._grid = QGridLayout(self)
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._grid.setSpacing(4)

    def set_outputs(self, outputs: list[Output], captions: list[str]) -> None:
        outputs = outputs[:MAX_COMPARED]
        for cell in [self._grid.itemAt(i).widget() for i in range(self._grid.count())]:
            self._grid.removeWidget(cell)
            cell.deleteLater()
        self.outputs, self.views, self.captions = list(outputs), [], []
        per_row = 2 if len(outputs) == 4 else max(len(outputs), 1)
        for i, (out, text) in enumerate(zip(outputs, captions, strict=False)):
            cell = QWidget()
            lay = QVBoxLayout(cell)
            lay.setContentsMargins(0, 0, 0, 0)
            lay.setSpacing(2)
            view = SyncedImageView(self)
            view.set_image(out.image)
            label = QLabel(text.replace("\n", " · "))
            label.setObjectName("dim")
            label.setToolTip(text)
            lay.addWidget(view, 1)
            lay.addWidget(label)
            self._grid.addWidget(cell, i // per_row, i % per_row)
            self.views.append(view)
            self.captions.append(label)

    def follow(self, leader: SyncedImageView) -> None:
        """Show every image as ``leader`` shows its own (same zoom, same place)."""
        if self._following:
            return
        self._following = True
        try:
            for v in self.views:
                if v is not leader:
                    v.zoom, v.offset, v.fitted = leader.zoom, QPointF(leader.offset), leader.fitted
                    v.update()
        finally:
            self._following = False
