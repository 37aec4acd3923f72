"""Zooming with the wheel: a scaled picture while the gesture lasts, sharp once it settles."""

from __future__ import annotations

import pytest

pytest.importorskip("PySide6")

from gui_support import gui_registry, txt2img
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from studio.app.canvas.view import ZOOM_SETTLE_MS

L = Qt.MouseButton.LeftButton
NO = Qt.KeyboardModifier.NoModifier


def wheel(window, at: QPoint, delta: int) -> None:
    vp = window.view.viewport()
    QTest.mouseMove(vp, at)
    event = QWheelEvent(
        QPointF(at),
        QPointF(vp.mapToGlobal(at)),
        QPoint(),
        QPoint(0, delta),
        Qt.MouseButton.NoButton,
        NO,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(vp, event)


def picture(window):
    return window.view.viewport().grab().toImage()


def differing(a, b) -> int:
    """How many pixels differ between two same-sized pictures."""
    import numpy as np

    assert a.size() == b.size() and a.format() == b.format()
    pa = np.frombuffer(a.constBits(), np.uint32, a.sizeInBytes() // 4)
    pb = np.frombuffer(b.constBits(), np.uint32, b.sizeInBytes() // 4)
    return int((pa != pb).sum())


def title_point(window, node_id: str) -> QPoint:
    item = window.scene.nodes[node_id]
    return window.view.mapFromScene(item.pos() + QPointF(item.shape_.width / 2, 12))


@pytest.fixture
def two(make_window):
    reg = gui_registry()
    return make_window(txt2img(reg)), make_window(txt2img(reg))


def test_zoom_gesture_scales_a_picture_then_redraws_sharp(two, qtbot):
    gesture, reference = two
    # A busy machine may pause longer than the usual settle time between these steps.
    gesture.view.zoom_settle_ms = 3000
    for _ in range(4):  # zoom in: a scaled picture gets blocky, so the difference shows
        wheel(gesture, QPoint(300, 250), 120)
    assert gesture.view.zooming
    assert gesture.view.zoom > 1.5
    # The reference shows the same part of the graph at the same zoom, drawn sharp.
    reference.view.set_zoom(gesture.view.zoom)
    for bar in ("horizontalScrollBar", "verticalScrollBar"):
        getattr(reference.view, bar)().setValue(getattr(gesture.view, bar)().value())
    assert reference.view.viewportTransform() == gesture.view.viewportTransform()
    sharp = picture(reference)
    during = differing(picture(gesture), sharp)  # the picture from before it, scaled
    assert during > 1000

    qtbot.waitUntil(lambda: not gesture.view.zooming, timeout=10_000)
    # Settled: drawn anew like the sharp view (what the pointer hovers is highlighted).
    assert differing(picture(gesture), sharp) < during / 4


def test_nodes_stay_interactive_after_and_during_a_zoom_gesture(make_window, qtbot):
    w = make_window(txt2img(gui_registry()))
    wf = w.controller.wf
    vp = w.view.viewport()
    for _ in range(3):
        wheel(w, QPoint(400, 300), -120)
    assert w.view.zooming
    # A click in the middle of a gesture lands on what is drawn there, and ends it.
    QTest.mouseClick(vp, L, NO, title_point(w, "sampler"))
    assert not w.view.zooming
    assert w.scene.selected_node_ids() == ["sampler"]

    wheel(w, QPoint(400, 300), 120)
    qtbot.waitUntil(lambda: not w.view.zooming, timeout=ZOOM_SETTLE_MS * 20)
    a = title_point(w, "decode")
    QTest.mousePress(vp, L, NO, a)
    for i in range(1, 6):
        QTest.mouseMove(vp, a + QPoint(12 * i, 0))
    QTest.mouseRelease(vp, L, NO, a + QPoint(60, 0))
    moved = wf.layout.nodes["decode"].pos[0] - 1060
    assert moved == pytest.approx(60 / w.view.zoom, abs=2)


def test_fit_during_a_gesture_ends_it(make_window):
    w = make_window(txt2img(gui_registry()))
    wheel(w, QPoint(400, 300), 120)
    assert w.view.zooming
    w.view.fit_items()
    assert not w.view.zooming
