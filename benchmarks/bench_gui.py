"""GUI benchmarks (offscreen), printed as JSON.

- open_1000_nodes_s: open a 1,000-node workflow file until the canvas is painted (goal < 1 s)
- pan_frame_ms / zoomed_out_frame_ms / zoom_gesture_frame_ms: frame times over 1,000 nodes
  (goal < 16 ms). The zoom gesture is real wheel events (two gestures, in and out, between
  zoom 1 and fit-all); its first frame, which paints the picture the gesture scales,
  counts. zoom_settle_ms: the sharp redraw once the gesture settles (one frame, after it).
  zooming_frame_ms: programmatic zoom steps (set_zoom, as fit and restore do: a sharp
  redraw each).
- launch_to_painted_s: a fresh process from start to the first painted window (goal < 1.5 s)

Run: .venv/bin/python benchmarks/bench_gui.py
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

TMP = Path(tempfile.mkdtemp(prefix="studio-bench-gui-"))
os.environ["XDG_CONFIG_HOME"] = str(TMP / "config")
os.environ["STUDIO_DATA_DIR"] = str(TMP / "data")


def _stats(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "median": round(statistics.median(s) * 1000, 2),
        "p95": round(s[min(len(s) - 1, int(len(s) * 0.95))] * 1000, 2),
        "max": round(s[-1] * 1000, 2),
    }


def bench_in_process() -> dict[str, object]:
    from gui_support import big_workflow, gui_registry
    from PySide6.QtCore import QPoint, QPointF, Qt
    from PySide6.QtGui import QWheelEvent
    from PySide6.QtWidgets import QApplication

    from studio.app.recovery import RecoveryStore
    from studio.app.theme import apply_theme
    from studio.app.window import MainWindow

    app = QApplication.instance() or QApplication([])
    apply_theme(app)
    reg = gui_registry()
    path = TMP / "big.json"
    big_workflow(reg, 1000).save(path)
    w = MainWindow(reg, autosave=False, recovery=RecoveryStore(TMP / "recovery"))
    w.interactive = False
    w.resize(1600, 1000)
    w.show()
    app.processEvents()
    viewport = w.view.viewport()

    t0 = time.perf_counter()
    w.open_path(path)
    viewport.repaint()
    open_s = time.perf_counter() - t0
    app.processEvents()
    w.controller.validate_now()
    t0 = time.perf_counter()
    w.controller.validate_now()
    validate_s = time.perf_counter() - t0

    def frames(step, n: int = 60) -> list[float]:
        out = []
        for i in range(n):
            t = time.perf_counter()
            step(i)
            viewport.repaint()
            out.append(time.perf_counter() - t)
        return out

    center = w.scene.items_bounds().center()
    w.view.set_zoom(1.0, center)
    viewport.repaint()

    # Back and forth, so the graph stays in view whatever the zoom.
    def wobble(i: int) -> None:
        w.view.pan_by(20 if (i // 10) % 2 else -20, 8 if (i // 5) % 2 else -8)

    pan = frames(wobble)
    w.view.set_zoom(0.5, center)
    pan_half = frames(wobble)
    w.view.fit_items()
    viewport.repaint()
    fit_zoom = w.view.zoom
    zoomed_out = frames(wobble)
    zooms = [1.0 * (fit_zoom / 1.0) ** (i / 29) for i in range(30)]
    zooming = frames(lambda i: w.view.set_zoom(zooms[i], QPointF(center)), n=30)

    # A wheel gesture: notches of 40 (a smooth-scrolling wheel or touchpad), zoom 1 to fit
    # and back, anchored under the pointer in the middle of the view.
    mid = QPointF(viewport.width() / 2, viewport.height() / 2)
    notches = max(1, round(abs(math.log(fit_zoom)) / math.log(1.0015**40)))

    def wheel(delta: int) -> None:
        event = QWheelEvent(
            mid,
            QPointF(viewport.mapToGlobal(mid.toPoint())),
            QPoint(),
            QPoint(0, delta),
            Qt.MouseButton.NoButton,
            Qt.KeyboardModifier.NoModifier,
            Qt.ScrollPhase.NoScrollPhase,
            False,
        )
        QApplication.sendEvent(viewport, event)

    w.view.set_zoom(1.0, center)
    viewport.repaint()
    gesture, settle = [], []
    for delta in (-40, 40):  # out from zoom 1 to about fit-all, then back in
        gesture += frames(lambda i, d=delta: wheel(d), n=notches)
        t = time.perf_counter()
        w.view.settle_zoom()
        viewport.repaint()
        settle.append(time.perf_counter() - t)
    # Selecting everything and dragging it is the heaviest interaction.
    w.select_all()
    items = list(w.scene.nodes.values())
    t = time.perf_counter()
    for item in items:
        item.moveBy(5, 5)
    viewport.repaint()
    move_all_s = time.perf_counter() - t
    w.recovery.close()
    w.ask_unsaved = lambda: "discard"
    w.close()
    return {
        "nodes": len(items),
        "open_1000_nodes_s": round(open_s, 3),
        "validate_1000_nodes_ms": round(validate_s * 1000, 1),
        "pan_frame_ms_zoom_1": _stats(pan),
        "pan_frame_ms_zoom_0.5": _stats(pan_half),
        "zoomed_out_frame_ms": {**_stats(zoomed_out), "zoom": round(fit_zoom, 3)},
        "zoom_gesture_frame_ms": {
            **_stats(gesture),
            "frames": len(gesture),
            "over_pan_p95": round(_stats(gesture)["p95"] / _stats(pan)["p95"], 2),
        },
        "zoom_settle_ms": [round(x * 1000, 2) for x in settle],
        "zooming_frame_ms": _stats(zooming),
        "move_all_1000_nodes_ms": round(move_all_s * 1000, 1),
    }


LAUNCH = r"""
import sys, time
from PySide6.QtCore import QEvent, QObject
from PySide6.QtWidgets import QApplication
import studio.app.main as main

class FirstPaint(QObject):
    def eventFilter(self, obj, event):
        if event.type() == QEvent.Type.Paint and obj.objectName() == "qt_scrollarea_viewport":
            print(time.time(), "torch" in sys.modules, flush=True)
            QApplication.instance().quit()
        return False

app = QApplication(sys.argv[:1])
spy = FirstPaint()
app.installEventFilter(spy)
main.run_app()
"""


def bench_launch(runs: int = 3) -> dict[str, object]:
    times, torch_loaded = [], False
    for _ in range(runs):
        t0 = time.time()
        out = subprocess.run(
            [sys.executable, "-c", LAUNCH],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=dict(os.environ),
            timeout=120,
        )
        line = next((ln for ln in out.stdout.splitlines() if ln.strip()), "")
        if not line:
            raise RuntimeError(out.stderr)
        painted, torch = line.split()
        times.append(float(painted) - t0)
        torch_loaded |= torch == "True"
    return {
        "launch_to_painted_s": round(min(times), 3),
        "launch_to_painted_s_all": [round(t, 3) for t in times],
        "torch_imported_before_paint": torch_loaded,
    }


def main() -> None:
    result = {"platform": os.environ.get("QT_QPA_PLATFORM")}
    result.update(bench_in_process())
    result.update(bench_launch())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
