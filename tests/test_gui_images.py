"""Images in the app: drops and pastes, the mask painter, an inpaint run, the viewer's
compare slider, the history, and dragging outputs out as PNG files (pytest-qt, offscreen)."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import pytest

pytest.importorskip("PySide6")

import test_gui_run as runs
from gui_support import gui_registry
from gui_support import txt2img as stub_txt2img
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QColor, QDragEnterEvent, QDropEvent, QImage
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QToolButton

from studio.engine.queue import JobState
from studio.graph.fileformat import dumps_workflow, load_workflow
from studio.graph.workflow import Workflow
from studio.library import installed_registry

# Shared fixtures: the tiny model on disk, settings pointing at it, a window that runs.
tiny_models, studio_settings, run_window = runs.tiny_models, runs.studio_settings, runs.run_window
wait_runs = runs.wait_runs

L = Qt.MouseButton.LeftButton
R = Qt.MouseButton.RightButton
NO = Qt.KeyboardModifier.NoModifier
CTRL = Qt.KeyboardModifier.ControlModifier


def write_png(path: Path, size=(64, 48), color=(200, 120, 40), text: dict | None = None) -> Path:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    im = Image.new("RGB", size, color)
    # A gradient, so "unchanged" pixels are not all alike.
    px = im.load()
    for x in range(size[0]):
        for y in range(size[1]):
            px[x, y] = (x * 4 % 256, y * 5 % 256, color[2])
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, pnginfo=info)
    return path


def drop(w, paths: list[Path], pos: QPointF) -> None:
    md = QMimeData()
    md.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    target = w.view.viewport()
    enter = QDragEnterEvent(pos.toPoint(), Qt.DropAction.CopyAction, md, L, NO)
    QApplication.sendEvent(target, enter)
    assert enter.isAccepted()
    QApplication.sendEvent(target, QDropEvent(pos, Qt.DropAction.CopyAction, md, L, NO))


def image_nodes(w) -> list:
    return [n for n in w.controller.wf.nodes if n.type == "load_image"]


@pytest.fixture
def image_window(make_window, studio_settings):
    from studio.library import installed_registry

    made = []

    def make(wf=None):
        w = make_window(wf, registry=installed_registry())
        made.append(w)
        return w

    yield make
    for w in made:
        w.shutdown_runs()


# -- drops and pastes ---------------------------------------------------------------------------


def test_dropped_images_become_load_image_nodes_and_replace_on_one(image_window, qtbot, tmp_path):
    a = write_png(tmp_path / "a.png")
    b = write_png(tmp_path / "b.jpg".replace(".jpg", ".png"), size=(32, 32))
    c = write_png(tmp_path / "c.png", size=(40, 40))
    w = image_window()
    drop(w, [a, b], QPointF(300, 300))
    nodes = image_nodes(w)
    assert sorted(n.params["image"] for n in nodes) == [str(a), str(b)]
    first = next(n for n in nodes if n.params["image"] == str(a))
    item = w.scene.nodes[first.id]
    qtbot.waitUntil(lambda: item.image is not None)  # the picture shows on the node
    assert item.image.width() == 64 and item.image.height() == 48
    # A painted mask belongs to its picture: replacing the picture drops it, in one step.
    w.controller.set_param(first.id, "mask", "bWFzaw==")
    center = w.view.mapFromScene(item.sceneBoundingRect().center())
    drop(w, [c], QPointF(center))
    assert first.params["image"] == str(c) and first.params["mask"] == ""
    assert len(image_nodes(w)) == 2
    w.undo_action.trigger()
    assert first.params["image"] == str(a) and first.params["mask"] == "bWFzaw=="


def test_pasting_an_image_from_the_clipboard_adds_a_load_image_node(
    image_window,
    studio_settings,
    qtbot,
):
    w = image_window()
    image = QImage(30, 20, QImage.Format.Format_RGB32)
    image.fill(QColor("#3366cc"))
    QApplication.clipboard().setImage(image)
    QTest.keyClick(w.view, Qt.Key.Key_V, CTRL)
    (node,) = image_nodes(w)
    path = Path(node.params["image"])
    assert path.is_file() and path.is_relative_to(Path(studio_settings.input_dir))
    assert QImage(str(path)).size() == image.size()
    # Pasted with its Load Image node selected: the node's picture is replaced.
    w.scene.select_nodes([node.id])
    other = QImage(8, 8, QImage.Format.Format_RGB32)
    other.fill(QColor("white"))
    QApplication.clipboard().setImage(other)
    QTest.keyClick(w.view, Qt.Key.Key_V, CTRL)
    assert len(image_nodes(w)) == 1 and Path(node.params["image"]) != path


def test_a_png_that_carries_a_workflow_opens_it(image_window, tmp_path):
    from studio.library import installed_registry

    wf = Workflow(installed_registry())
    wf.add_node("empty_latent", {"width": 320}, pos=(0, 0))
    wf.add_node("load_image", pos=(300, 0))
    recipe = write_png(tmp_path / "recipe.png", text={"studio_workflow": dumps_workflow(wf)})
    plain = write_png(tmp_path / "plain.png")
    w = image_window()
    drop(w, [plain], QPointF(200, 200))
    assert len(image_nodes(w)) == 1 and w.path is None
    drop(w, [recipe], QPointF(600, 500))
    assert w.path is None  # Ctrl+S asks where: it never writes a workflow over the image
    assert dumps_workflow(w.controller.wf) == dumps_workflow(
        load_workflow(recipe, installed_registry())
    )


# -- the mask painter ---------------------------------------------------------------------------


def stroke(canvas, points: list[tuple[float, float]], button=L) -> None:
    """A mouse stroke over the painter, in image pixels."""

    def at(p):
        return QPoint(
            round(canvas.offset.x() + p[0] * canvas.zoom),
            round(canvas.offset.y() + p[1] * canvas.zoom),
        )

    QTest.mousePress(canvas, button, NO, at(points[0]))
    for p in points[1:]:
        QTest.mouseMove(canvas, at(p))
    QTest.mouseRelease(canvas, button, NO, at(points[-1]))


def decode(data: str):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("L"))


def paint_with(w, qtbot, node_id: str, gesture) -> bool:
    """Open the painter on a node, let ``gesture(dialog)`` paint, press OK."""

    def drive(dialog) -> bool:
        dialog.show()
        qtbot.waitExposed(dialog)
        dialog.canvas.fit()
        result = gesture(dialog)
        dialog.hide()
        return result is not False

    w.exec_dialog = drive
    return w.paint_mask(node_id)


def test_painting_a_mask_brush_eraser_fill_invert_undo(image_window, qtbot, tmp_path):
    pic = write_png(tmp_path / "pic.png", size=(200, 100))
    w = image_window()
    drop(w, [pic], QPointF(300, 300))
    (node,) = image_nodes(w)

    def gesture(d):
        c = d.canvas
        d.size_slider.setValue(20)
        d.hard_slider.setValue(100)
        stroke(c, [(20, 50), (60, 50), (100, 50)])  # paint a band on the left half
        assert c.mask.pixelColor(60, 50).alpha() == 255
        assert c.mask.pixelColor(150, 50).alpha() == 0
        stroke(c, [(60, 40), (60, 60)], button=R)  # the right button erases
        assert c.mask.pixelColor(60, 50).alpha() == 0
        assert c.mask.pixelColor(30, 50).alpha() == 255
        d.set_erase(True)
        stroke(c, [(30, 50)])
        assert c.mask.pixelColor(30, 50).alpha() == 0
        d.set_erase(False)
        c.undo()
        assert c.mask.pixelColor(30, 50).alpha() == 255
        c.invert()
        assert c.mask.pixelColor(30, 50).alpha() == 0
        assert c.mask.pixelColor(150, 50).alpha() == 255
        c.undo()
        c.fill()
        assert c.mask.pixelColor(150, 90).alpha() == 255
        c.clear()
        assert c.mask.pixelColor(30, 50).alpha() == 0
        c.undo()  # back to the band
        c.undo()
        assert c.mask.pixelColor(30, 50).alpha() == 255

    assert paint_with(w, qtbot, node.id, gesture)
    mask = decode(node.params["mask"])
    assert mask.shape == (100, 200)
    assert mask[50, 30] == 255 and mask[50, 150] == 0 and mask[50, 60] == 0
    # The raw text never shows: the inspector offers the painter, and one undo removes it.
    w.scene.select_nodes([node.id])
    assert "mask" not in w.inspector.editors
    buttons = [b.text() for b in w.inspector.findChildren(QToolButton)]
    assert "Paint mask…" in buttons
    item = w.scene.nodes[node.id]
    qtbot.waitUntil(lambda: item.image is not None and w.thumbnails.wanted[node.id][1] != "")
    w.undo_action.trigger()
    assert node.params["mask"] == ""
    # Cancel changes nothing.
    assert not paint_with(w, qtbot, node.id, lambda d: False)
    assert node.params["mask"] == ""


def test_inpaint_run_keeps_the_unmasked_area(run_window, qtbot, tmp_path):
    import numpy as np
    from PIL import Image

    pic = write_png(tmp_path / "photo.png", size=(64, 64))
    w = run_window(Workflow(installed_registry()))
    drop(w, [pic], QPointF(150, 150))
    (load,) = image_nodes(w)

    def gesture(d):
        d.size_slider.setValue(24)
        d.hard_slider.setValue(100)
        stroke(d.canvas, [(20, 32), (44, 32)])

    assert paint_with(w, qtbot, load.id, gesture)
    c = w.controller
    ids = {
        "ckpt": c.add_node("load_checkpoint", (0, 400), params={"ckpt_name": "tiny-sd1"}),
        "pos": c.add_node("text_encode", (300, 0), params={"text": "a red apple"}),
        "neg": c.add_node("text_encode", (300, 300)),
        "enc": c.add_node("vae_encode_inpaint", (300, 600)),
        "smp": c.add_node("sampler", (600, 0), params={"steps": 2}),
        "dec": c.add_node("vae_decode", (900, 0)),
        "comp": c.add_node("composite_masked", (1150, 0)),
        "out": c.add_node("preview_image", (1400, 0)),
    }
    for src, out, dst, inp in [
        ("ckpt", "clip", "pos", "clip"),
        ("ckpt", "clip", "neg", "clip"),
        ("ckpt", "vae", "enc", "vae"),
        ("ckpt", "model", "smp", "model"),
        ("pos", "conditioning", "smp", "positive"),
        ("neg", "conditioning", "smp", "negative"),
        ("enc", "latent", "smp", "latent"),
        ("smp", "latent", "dec", "latent"),
        ("ckpt", "vae", "dec", "vae"),
        ("dec", "image", "comp", "changed"),
        ("comp", "image", "out", "images"),
    ]:
        assert c.connect(ids[src], out, ids[dst], inp)
    for dst, inp in (("enc", "pixels"), ("comp", "original")):
        assert c.connect(load.id, "image", ids[dst], inp)
    for dst in ("enc", "comp"):
        assert c.connect(load.id, "mask", ids[dst], "mask")
    w.run_workflow()
    (job,) = wait_runs(qtbot, w, 1)
    assert job.state == JobState.DONE, job.message or job.result.errors
    result = np.asarray(w.history.outputs[0].pil.convert("RGB")).astype(int)
    original = np.asarray(Image.open(pic).convert("RGB")).astype(int)
    mask = decode(load.params["mask"])
    keep = mask == 0
    assert keep.sum() > 1000 and (~keep).sum() > 200
    assert np.array_equal(result[keep], original[keep])  # the unmasked area is unchanged
    assert np.abs(result[~keep] - original[~keep]).mean() > 1  # the masked area was repainted


# -- the viewer, the history, dragging out ------------------------------------------------------


def solid_output(color: str, job_id: int, wf: Workflow, size=(80, 60)):
    from PIL import Image

    from studio.app.runner import Output, pil_to_qimage

    pil = Image.new("RGB", size, color)
    return Output(pil_to_qimage(pil), pil, "save", "Save Image", job_id, wf)


def test_viewer_compares_before_and_after_and_zooms_under_the_cursor(make_window):
    reg = gui_registry()
    wf = stub_txt2img(reg)
    w = make_window(wf)
    red, blue = solid_output("#ff0000", 1, wf), solid_output("#0000ff", 2, wf)
    v = w.viewer
    w.viewer_dock.setFloating(True)
    w.viewer_dock.resize(500, 400)
    v.show_output(red)
    v.show_output(blue)  # the image shown before becomes "before"
    v.compare_box.setChecked(True)
    view = v.view
    r = view.image_rect()
    QTest.mouseClick(view, L, NO, QPoint(round(r.left() + r.width() * 0.3), round(r.center().y())))
    assert abs(view.split - 0.3) < 0.02
    shot = view.grab().toImage()
    y = round(r.center().y())
    assert shot.pixelColor(round(r.left() + r.width() * 0.1), y) == QColor("#ff0000")
    assert shot.pixelColor(round(r.left() + r.width() * 0.8), y) == QColor("#0000ff")
    # Wheel zoom keeps the image point under the cursor in place.
    anchor = QPointF(r.left() + 10, r.top() + 10)
    before = view.to_image(anchor)
    view.set_zoom(view.zoom * 3, anchor)
    after = view.to_image(anchor)
    assert abs(before.x() - after.x()) < 1e-6 and abs(before.y() - after.y()) < 1e-6
    # The history chooses the "before" too.
    w.history.add_outputs([red, blue])
    w.history.compare_requested.emit(red)
    assert v.before is red


def test_an_output_drags_out_as_a_png_that_carries_its_workflow(make_window, qtbot):
    from PIL import Image

    reg = gui_registry()
    wf = stub_txt2img(reg)
    w = make_window(wf)
    out = solid_output("#20a040", 3, wf.copy())
    w.history.add_outputs([out])
    md = w.dragout.mime_data(out)
    (url,) = md.urls()
    path = Path(url.toLocalFile())
    assert path.suffix == ".png" and md.hasImage()
    with Image.open(path) as im:
        assert im.size == (80, 60) and im.getpixel((5, 5)) == (32, 160, 64)
    assert dumps_workflow(load_workflow(path, reg)) == dumps_workflow(wf)
    # A left drag on the viewer's image or on a history thumbnail starts that drag.
    started = []
    w.dragout.start = lambda source, o: started.append((source, o))
    w.viewer.show_output(out)
    view = w.viewer.view
    c = view.image_rect().center().toPoint()
    QTest.mousePress(view, L, NO, c)
    QTest.mouseMove(view, c + QPoint(30, 0))
    QTest.mouseRelease(view, L, NO, c + QPoint(30, 0))
    assert started == [(w.viewer, out)]
    w.dragout.cleanup()
    assert not path.exists()


def test_painting_on_an_output_makes_a_load_image_node(image_window, qtbot, studio_settings):
    from studio.library import installed_registry

    w = image_window()
    out = solid_output("#808080", 4, Workflow(installed_registry()))

    def gesture(d):
        stroke(d.canvas, [(40, 30)])

    w.exec_dialog = lambda d: (d.show(), d.canvas.fit(), gesture(d), True)[-1]
    node_id = w.paint_on_output(out)
    node = w.controller.wf.get_node(node_id)
    assert Path(node.params["image"]).is_relative_to(Path(studio_settings.input_dir))
    assert decode(node.params["mask"])[30, 40] == 255


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_painting_on_a_pipe_or_an_escaping_name_says_why_and_never_blocks(
    image_window, qtbot, tmp_path, studio_settings
):
    from studio.library import installed_registry

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    wf = Workflow(installed_registry())
    piped = wf.add_node("load_image", {"image": str(fifo)})
    escaping = wf.add_node("load_image", {"image": "../../outside.png"})
    w = image_window(wf)
    opened = []
    w.exec_dialog = lambda d: opened.append(d) or True
    assert not w.paint_mask(piped.id)
    assert "not a regular file" in w.statusBar().currentMessage()
    assert not w.paint_mask(escaping.id)
    assert "leads out of the folder" in w.statusBar().currentMessage()
    assert opened == []
