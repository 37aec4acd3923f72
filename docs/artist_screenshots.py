"""Screenshots of an artist's day in the app (issue 20), for the README.

Runs the real window offscreen on the embedded studio-tiny model: four txt2img runs, the
last four compared side by side, the history captioned; Insert LoRA on txt2img; the
inpaint workflow at fit-all zoom with its values legible and a missing input ringed.

    QT_QPA_PLATFORM=offscreen python docs/artist_screenshots.py docs/
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def small_png(image, path: Path) -> None:
    """Save a grab as an 8-bit palette PNG (a UI shot stays well under 300 KB)."""
    import io

    from PIL import Image
    from PySide6.QtCore import QBuffer, QIODevice

    buf = QBuffer()
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buf, "PNG")
    im = Image.open(io.BytesIO(bytes(buf.data().data()))).convert("RGB")
    im = im.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    im.save(path, optimize=True)
    print(f"{path}: {path.stat().st_size // 1024} KB")


def main(out_dir: str) -> None:
    from PySide6.QtCore import QPointF, Qt
    from PySide6.QtWidgets import QApplication

    from studio.app.canvas.placement import insert_lora
    from studio.app.theme import apply_theme
    from studio.app.window import MainWindow
    from studio.graph.fileformat import load_workflow
    from studio.library import installed_registry
    from studio.modelfiles import RESOURCES
    from studio.settings import Settings

    out = Path(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix="studio-shots-"))
    os.environ["HOME"] = str(tmp)
    app = QApplication.instance() or QApplication([])
    apply_theme(app)
    reg = installed_registry()
    settings = Settings(output_dir=str(tmp / "out"), input_dir=str(tmp / "in"))
    w = MainWindow(reg, autosave=False, studio_settings=settings)
    w.interactive = False
    w.resize(1440, 880)
    w.show()
    wf = load_workflow(RESOURCES / "workflows" / "txt2img.json", reg)
    w.set_document(wf, None)
    app.processEvents()

    def settle(ms: int = 200) -> None:
        from PySide6.QtCore import QEventLoop, QTimer

        loop = QEventLoop()
        QTimer.singleShot(ms, loop.quit)
        loop.exec()

    # Four runs (the seed advances after each), then the last four side by side.
    sampler = next(n.id for n in wf.nodes if n.type == "sampler")
    w.controller.set_seed_control(sampler, "seed", "increment")
    w.run_workflow(4)
    while len(w.runs.ended) < 4:
        settle(300)
    settle()
    h = w.history
    for row in range(min(4, h.count())):
        h.item(row).setSelected(True)
    h.compare_selected()
    w.resizeDocks([w.viewer_dock], [640], Qt.Orientation.Horizontal)
    w.resizeDocks([w.history_dock], [190], Qt.Orientation.Vertical)
    settle()
    w.view.fit_items()
    settle()
    small_png(w.grab().toImage(), out / "history-compare.png")

    # Insert LoRA on the checkpoint: one step, nothing overlaps (the canvas given room).
    w.viewer_dock.hide()
    w.history_dock.hide()
    w.resizeDocks([w.inspector_dock], [300], Qt.Orientation.Horizontal)
    w.set_document(load_workflow(RESOURCES / "workflows" / "txt2img.json", reg), None)
    settle()
    ckpt = next(n.id for n in w.controller.wf.nodes if n.type == "load_checkpoint")
    insert_lora(w.view, ckpt)
    w.view.fit_items()
    settle()
    small_png(w.view.grab().toImage(), out / "insert-lora.png")

    # The inpaint workflow at fit-all: values legible, a missing input ringed in red.
    w.set_document(load_workflow(RESOURCES / "workflows" / "inpaint.json", reg), None)
    settle(600)
    c = w.controller
    decode = next(n.id for n in c.wf.nodes if n.type == "vae_decode")
    c.disconnect([c.wf.link_into(decode, "vae").id])
    c.validate_now()
    w.view.fit_items()
    w.scene.select_nodes([])
    w.view.last_scene_pos = QPointF(0, 0)
    settle()
    small_png(w.view.grab().toImage(), out / "overview-inpaint.png")
    w.shutdown_runs()
    w.hide()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs")
