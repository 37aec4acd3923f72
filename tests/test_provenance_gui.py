"""The viewer's provenance badge, for a shown output and for an image dropped on the
canvas (pytest-qt, offscreen; images signed here without a model)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("PySide6")

from gui_support import gui_registry
from PIL import Image
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QImage
from PySide6.QtWidgets import QApplication

from studio.provenance import Recipe, encode_image

ON = SimpleNamespace(image_metadata="everything", watermark=True)


def signed_png(path: Path, settings=ON) -> Path:
    rng = np.random.default_rng(4)
    small = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    im = small.resize((256, 256), Image.Resampling.BICUBIC)
    path.write_bytes(encode_image(im, "png", settings=settings, recipe=Recipe()))
    return path


def output_for(path: Path | None):
    from studio.app.runner import Output
    from studio.graph.workflow import Workflow

    pil = Image.new("RGB", (32, 32))
    if path is not None:
        pil.info["studio_path"] = str(path)
    return Output(
        QImage(32, 32, QImage.Format.Format_RGB32),
        pil,
        "n",
        "Save Image",
        1,
        Workflow(gui_registry()),
    )


def test_the_badge_says_signed_for_a_saved_output_and_tampered_for_a_changed_one(qtbot, tmp_path):
    from studio.app.viewer import ViewerPanel

    viewer = ViewerPanel()
    qtbot.addWidget(viewer)
    signed = signed_png(tmp_path / "signed.png")
    with qtbot.waitSignal(viewer.badge.checked, timeout=20000):
        viewer.show_output(output_for(signed))
    assert viewer.badge.text() == "Signed"
    details = viewer.badge.details()
    assert "c2pa.created (trainedAlgorithmicMedia)" in details
    assert "untrusted signer" in details and "watermark: found" in details
    viewer.badge.click()  # the details open without blocking
    assert viewer.badge._box.isVisible()
    viewer.badge._box.close()

    # Rewritten with a changed pixel but its chunks: the badge says so.
    data = bytearray(signed.read_bytes())
    from test_provenance import chunks, png_of, with_pixels

    pixels = np.asarray(Image.open(signed).convert("RGB")).copy()
    pixels[3, 3, 1] ^= 4
    changed = tmp_path / "changed.png"
    changed.write_bytes(with_pixels(bytes(data), pixels))
    with qtbot.waitSignal(viewer.badge.checked, timeout=20000):
        viewer.show_output(output_for(changed))
    assert viewer.badge.text() == "Tampered"

    stripped = tmp_path / "stripped.png"
    kept = [c for c in chunks(bytes(data)) if c[0] in (b"IHDR", b"IDAT", b"IEND")]
    stripped.write_bytes(png_of(kept))
    with qtbot.waitSignal(viewer.badge.checked, timeout=20000):
        viewer.show_output(output_for(stripped))
    assert viewer.badge.text() == "Watermarked"

    viewer.show_output(output_for(None))  # a preview, not saved
    assert viewer.badge.text() == "Not saved"


def test_an_image_dropped_on_the_canvas_shows_its_provenance(make_window, qtbot, tmp_path):
    from studio.library import installed_registry

    w = make_window(registry=installed_registry())
    before = {n.id for n in w.controller.wf.nodes}
    plain = tmp_path / "photo.png"
    signed_png(plain, SimpleNamespace(image_metadata="nothing", watermark=False))
    md = QMimeData()
    md.setUrls([QUrl.fromLocalFile(str(plain))])
    target = w.view.viewport()
    pos = QPointF(200, 150)
    L, NO = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    QApplication.sendEvent(
        target, QDragEnterEvent(pos.toPoint(), Qt.DropAction.CopyAction, md, L, NO)
    )
    with qtbot.waitSignal(w.viewer.badge.checked, timeout=20000):
        QApplication.sendEvent(target, QDropEvent(pos, Qt.DropAction.CopyAction, md, L, NO))
    assert [n.type for n in w.controller.wf.nodes if n.id not in before] == ["load_image"]
    assert w.viewer.badge.text() == "No provenance"
    assert "photo.png" in w.viewer.caption.text()


def test_an_output_dragged_out_is_signed_and_marked(qtbot, tmp_path):
    from gui_support import txt2img

    from studio.app.dragout import DragOut
    from studio.app.runner import Output
    from studio.provenance.reading import verify
    from studio.settings import Settings

    reg = gui_registry()
    wf = txt2img(reg)
    rng = np.random.default_rng(5)
    small = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    pil = small.resize((256, 256), Image.Resampling.BICUBIC)
    out = Output(QImage(8, 8, QImage.Format.Format_RGB32), pil, "out", "Preview", 2, wf)
    for metadata, status in (("everything", "signed"), ("nothing", "watermarked")):
        drag = DragOut(Settings(image_metadata=metadata))
        path = drag.file_for(out)
        report = verify(path)
        assert report.status == status
        if metadata == "everything":
            assert report.actions[0]["action"] == "c2pa.created"
            assert "studio_workflow" in Image.open(path).text
        drag.cleanup()
