"""An artist's day in the app (issue 20), driving the real widgets (pytest-qt, offscreen):
inpainting in one action, nodes that land where you look and link themselves, Insert LoRA,
a legible overview, a history that lasts, messages that name nodes by their titles."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QToolButton

from studio.graph.fileformat import load_workflow
from studio.library import installed_registry
from studio.modelfiles import RESOURCES
from studio.settings import Settings

L = Qt.MouseButton.LeftButton
NO = Qt.KeyboardModifier.NoModifier
WORKFLOWS = RESOURCES / "workflows"


@pytest.fixture(scope="module")
def registry():
    return installed_registry()


@pytest.fixture
def settings(tmp_path):
    return Settings(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), device="cpu")


@pytest.fixture
def window(make_window, registry, settings):
    def make(name: str | None = "txt2img", **kw):
        wf = load_workflow(WORKFLOWS / f"{name}.json", registry) if name else None
        return make_window(wf, registry=registry, studio_settings=settings, **kw)

    return make


def decode(data: str):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("L"))


def write_png(path: Path, size=(64, 64)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (40, 90, 200)).save(path)
    return path


def stroke(canvas, points) -> None:
    def at(p):
        return QPoint(
            round(canvas.offset.x() + p[0] * canvas.zoom),
            round(canvas.offset.y() + p[1] * canvas.zoom),
        )

    QTest.mousePress(canvas, L, NO, at(points[0]))
    for p in points[1:]:
        QTest.mouseMove(canvas, at(p))
    QTest.mouseRelease(canvas, L, NO, at(points[-1]))


def zigzag_left_half(size: int, brush: float) -> list[tuple[float, float]]:
    """One stroke that covers the left half of a square picture with a brush of ``brush``."""
    pts: list[tuple[float, float]] = []
    y = brush / 4
    while y < size:
        pts += [(1.0, y), (size / 2 - brush / 2, y)]
        y += brush / 3
    return pts


# -- inpainting in one action -------------------------------------------------------------------


def test_the_inpaint_template_uses_the_mask_painted_on_its_picture(registry):
    from studio.inpainting import inpaint_source

    wf = load_workflow(WORKFLOWS / "inpaint.json", registry)
    source = inpaint_source(wf)
    assert source is not None
    picture = wf.get_node(source)
    mask = decode(picture.params["mask"])
    assert mask[:, :32].min() == 255 and mask[:, 32:].max() == 0  # the left half, painted
    # No second Load Image for the mask: painting on the picture is the whole story.
    assert [n.type for n in wf.nodes].count("load_image") == 1
    users = {wf.get_node(lk.target).type for lk in wf.links if lk.source == source}
    assert {"set_latent_noise_mask", "composite_masked"} <= users


def test_inpaint_from_the_viewer_is_paint_then_ctrl_enter(window, qtbot, tmp_path, settings):
    from PIL import Image

    from studio.app.runner import Output, pil_to_qimage
    from studio.engine.validate import plan_workflow

    w = window("txt2img")
    before = w.controller.wf
    prompt = next(n for n in before.nodes if n.title == "Prompt").params["text"]
    pil = Image.new("RGB", (64, 64), (200, 30, 30))
    out = Output(pil_to_qimage(pil), pil, "save", "Save Image", 7, before.copy())
    w.viewer.show_output(out)
    brushes = []

    def paint(dialog) -> bool:
        dialog.show()
        qtbot.waitExposed(dialog)
        dialog.canvas.fit()
        brushes.append(dialog.canvas.brush.size)
        stroke(dialog.canvas, zigzag_left_half(64, dialog.canvas.brush.size))
        return True

    w.exec_dialog = paint
    # The viewer's one button: the workflow becomes an inpaint of the image, painter open.
    inpaint = next(b for b in w.viewer.findChildren(QToolButton) if b.text() == "Inpaint…")
    QTest.mouseClick(inpaint, L)
    assert brushes == [8.0]  # an eighth of the 64 px picture, not two thirds of it
    wf = w.controller.wf
    (load,) = [n for n in wf.nodes if n.type == "load_image"]
    assert Path(load.params["image"]).is_relative_to(Path(settings.input_dir))
    mask = decode(load.params["mask"])
    assert mask[:, :28].mean() > 250 and mask[:, 40:].max() == 0
    # The document's prompt came along; the graph is ready: Ctrl+Enter is all that is left.
    assert any(n.params.get("text") == prompt for n in wf.nodes if n.type == "text_encode")
    assert plan_workflow(wf, registry=w.registry).problems == []
    submitted = []
    w.runs.run = lambda count=1: submitted.append(w.controller.wf.copy()) or []
    QTest.keyClick(w.view, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    assert len(submitted) == 1 and any(
        n.type == "set_latent_noise_mask" for n in submitted[0].nodes
    )
    # Inpainting another image reuses the graph: only the picture (and its mask) change.
    n_nodes = len(wf.nodes)
    pil2 = Image.new("RGB", (64, 64), (10, 200, 30))
    w.viewer.show_output(Output(pil_to_qimage(pil2), pil2, "save", "Save Image", 8, wf.copy()))
    w.exec_dialog = lambda d: False  # cancelled painting keeps the mask empty
    QTest.mouseClick(inpaint, L)
    assert len(w.controller.wf.nodes) == n_nodes
    (load2,) = [n for n in w.controller.wf.nodes if n.type == "load_image"]
    assert load2.id == load.id
    assert "run8" in Path(load2.params["image"]).name and load2.params["mask"] == ""
    # Undo, step by step, goes back to txt2img.
    while w.controller.undo_stack.canUndo():
        w.undo_action.trigger()
    assert not any(n.type == "load_image" for n in w.controller.wf.nodes)


def test_inpaint_on_a_load_image_node_builds_the_graph_around_it(window, qtbot, tmp_path):
    pic = write_png(tmp_path / "photo.png")
    w = window("img2img")
    (load,) = [n for n in w.controller.wf.nodes if n.type == "load_image"]
    w.controller.set_params(load.id, {"image": str(pic)}, "pick")
    painted = []
    w.exec_dialog = lambda d: painted.append(d.canvas.brush.size) or False
    w.view.inpaint_requested.emit(load.id)
    wf = w.controller.wf
    assert painted == [8.0]
    assert any(n.type == "set_latent_noise_mask" for n in wf.nodes)
    (picture,) = [n for n in wf.nodes if n.type == "load_image"]
    assert picture.params["image"] == str(pic)
    # Asked again on the inpaint graph's own picture: the graph is kept as it is.
    ids = sorted(n.id for n in wf.nodes)
    w.view.inpaint_requested.emit(picture.id)
    assert sorted(n.id for n in w.controller.wf.nodes) == ids


# -- nodes that land where you look -------------------------------------------------------------


def node_rects(w) -> dict[str, object]:
    from PySide6.QtCore import QRectF

    return {
        nid: QRectF(item.pos().x(), item.pos().y(), item.shape_.width, item.shape_.height)
        for nid, item in w.scene.nodes.items()
    }


def overlapping(w) -> list[tuple[str, str]]:
    rects = list(node_rects(w).items())
    return [
        (w.controller.title(a), w.controller.title(b))
        for i, (a, ra) in enumerate(rects)
        for b, rb in rects[i + 1 :]
        if ra.intersects(rb)
    ]


def by_type(w, type_id: str) -> list:
    return [n for n in w.controller.wf.nodes if n.type == type_id]


def test_a_node_added_from_the_keyboard_lands_beside_the_selection_and_links_to_it(window):
    from PySide6.QtGui import QCursor

    w = window("txt2img")
    assert overlapping(w) == []
    (decode,) = by_type(w, "vae_decode")
    w.scene.select_nodes([decode.id])
    # The cursor is away from the canvas (on a panel): Tab, type, Enter.
    QCursor.setPos(w.mapToGlobal(QPoint(5, 5)))
    w.view.setFocus()
    QTest.keyClick(w.view, Qt.Key.Key_Tab)
    popup = w.view.search
    assert popup.isVisible()
    QTest.keyClicks(popup.edit, "preview image")
    QTest.keyClick(popup.edit, Qt.Key.Key_Return)
    (preview,) = by_type(w, "preview_image")
    wf = w.controller.wf
    assert wf.link_into(preview.id, "images").source == decode.id  # linked, no drag
    assert overlapping(w) == []  # Save Image was right there: it went below it
    rects = node_rects(w)
    assert rects[preview.id].left() > rects[decode.id].right()  # downstream goes right
    assert w.undo_action.text() == "Undo Add Preview Image"
    w.undo_action.trigger()
    assert by_type(w, "preview_image") == []


def test_a_node_added_at_the_cursor_over_a_node_moves_off_it(window):
    from PySide6.QtGui import QCursor

    w = window("txt2img")
    (ckpt,) = by_type(w, "load_checkpoint")
    item = w.scene.nodes[ckpt.id]
    w.scene.clearSelection()
    over = w.view.mapFromScene(item.sceneBoundingRect().center())
    QCursor.setPos(w.view.viewport().mapToGlobal(over))
    QTest.mouseMove(w.view.viewport(), over)
    QTest.keyClick(w.view, Qt.Key.Key_Tab)
    QTest.keyClicks(w.view.search.edit, "empty latent")
    QTest.keyClick(w.view.search.edit, Qt.Key.Key_Return)
    assert len(by_type(w, "empty_latent")) == 2
    assert overlapping(w) == []


def test_insert_lora_puts_it_on_model_and_clip_in_one_step(window):
    w = window("txt2img")
    wf = w.controller.wf
    (ckpt,) = by_type(w, "load_checkpoint")
    before = {(lk.source, lk.output, lk.target, lk.input) for lk in wf.links}
    users = {(lk.output, lk.target, lk.input) for lk in wf.links if lk.source == ckpt.id}
    menu_texts = []

    def choose() -> None:  # the node's context menu, as it shows
        from PySide6.QtWidgets import QApplication

        menu = QApplication.activePopupWidget()
        menu_texts.extend(a.text() for a in menu.actions())
        act = next(a for a in menu.actions() if a.text() == "Insert LoRA")
        menu.hide()
        act.trigger()

    from PySide6.QtCore import QTimer
    from PySide6.QtGui import QContextMenuEvent

    item = w.scene.nodes[ckpt.id]
    p = w.view.mapFromScene(item.sceneBoundingRect().center())
    QTimer.singleShot(50, choose)
    ev = QContextMenuEvent(QContextMenuEvent.Reason.Mouse, p, w.view.viewport().mapToGlobal(p))
    w.view.contextMenuEvent(ev)
    assert "Insert LoRA" in menu_texts
    (lora,) = by_type(w, "load_lora")
    # Everything that used the checkpoint's model and clip now uses the LoRA's.
    assert {lk.output for lk in wf.links if lk.source == ckpt.id} == {"model", "clip", "vae"}
    assert wf.link_into(lora.id, "model").source == ckpt.id
    assert wf.link_into(lora.id, "clip").source == ckpt.id
    for out, target, inp in users:
        if out in ("model", "clip"):
            assert (wf.link_into(target, inp).source, wf.link_into(target, inp).output) == (
                lora.id,
                out,
            )
    assert overlapping(w) == []  # it touches nothing
    # Its file name shows whole.
    from studio.app.canvas.node_item import format_value

    field = w.scene.nodes[lora.id].shape_.params["lora_name"]
    name = format_value(field.spec, lora.params["lora_name"]) + "  ▾"
    from PySide6.QtGui import QFont, QFontMetricsF

    from studio.app import theme

    font = QFont(theme.ui_font())
    font.setPixelSize(11)
    m = QFontMetricsF(font)
    room = field.rect.width() - 16 - m.horizontalAdvance("lora name") - 12
    assert lora.params["lora_name"] and m.horizontalAdvance(name) <= room
    assert w.undo_action.text() == f"Undo Insert LoRA after {w.controller.title(ckpt.id)}"
    w.undo_action.trigger()  # one step
    assert {(lk.source, lk.output, lk.target, lk.input) for lk in wf.links} == before
    assert by_type(w, "load_lora") == []


# -- a legible overview -------------------------------------------------------------------------


def render_node(w, node_id: str, lod: float):
    """The node as its item paints itself at zoom ``lod`` (an image, for comparing)."""
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtWidgets import QStyleOptionGraphicsItem

    item = w.scene.nodes[node_id]
    r = item.boundingRect()
    img = QImage(int(r.width() * lod) + 2, int(r.height() * lod) + 2, QImage.Format.Format_RGB32)
    img.fill(0)
    p = QPainter(img)
    p.scale(lod, lod)
    p.translate(-r.topLeft())
    item.paint(p, QStyleOptionGraphicsItem(), None)
    p.end()
    return img


def test_zoomed_out_nodes_show_their_values_then_their_titles(window):
    from studio.app.canvas.node_item import LOD_SIMPLE, LOD_TEXT, LOD_VALUES

    w = window("txt2img")
    (sampler,) = by_type(w, "sampler")
    c = w.controller
    fit = (LOD_VALUES + LOD_TEXT) / 2  # about where fit-all lands on the default workflows
    a = render_node(w, sampler.id, fit)
    c.set_param(sampler.id, "steps", 150)
    b = render_node(w, sampler.id, fit)
    assert a != b  # the value is drawn, not an empty bar
    far = (LOD_SIMPLE + LOD_VALUES) / 2
    a = render_node(w, sampler.id, far)
    c.set_param(sampler.id, "steps", 20)
    assert render_node(w, sampler.id, far) == a  # farther out: no values ...
    c.set_title(sampler.id, "Second pass")
    assert render_node(w, sampler.id, far) != a  # ... but the title, still
    # Fit-all shows every node whole with a margin, and at that zoom values are drawn.
    w.view.fit_items()
    vp = w.view.viewport().rect().adjusted(20, 20, -20, -20)
    for item in w.scene.nodes.values():
        shown = w.view.mapFromScene(item.sceneBoundingRect()).boundingRect()
        assert vp.contains(shown), item.title_text()


# -- a history that lasts and explains ----------------------------------------------------------


def save_studio_png(
    path: Path, color, prompt: str, seed: int, wf_json: str = "", size=(64, 64)
) -> Path:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if wf_json:
        info.add_text("studio_workflow", wf_json)
    info.add_text("parameters", f"{prompt}\nSteps: 20, Sampler: Euler, Seed: {seed}, Size: 64x64")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, pnginfo=info)
    return path


def test_the_history_is_rebuilt_from_the_output_folder_and_filters(
    window, qtbot, settings, registry
):
    import os
    import time

    from studio.graph.fileformat import dumps_workflow

    out = Path(settings.output_dir)
    wf_json = dumps_workflow(load_workflow(WORKFLOWS / "txt2img.json", registry))
    fox = save_studio_png(
        out / "fox_00001.png",
        (200, 80, 20),
        "a red fox in the snow at dawn",
        4242,
        wf_json,
        (600, 400),
    )
    cat = save_studio_png(out / "sub" / "cat_00001.png", (20, 80, 200), "a blue cat", 7)
    os.utime(cat, (time.time() + 5, time.time() + 5))  # the newer one
    write_png(out / "not_ours.png")  # no metadata: not Studio's, not shown
    w = window("txt2img")
    qtbot.waitUntil(lambda: len(w.history.outputs) == 2)
    h = w.history
    texts = [h.item(i).text() for i in range(h.count())]
    assert texts[0].startswith("cat_00001 · seed 7") and "a blue cat" in texts[0]
    assert "seed 4242" in texts[1] and "a red fox in the …" in texts[1]  # first words
    # The filter keeps those whose caption has every word typed.
    box = w.history_dock.widget()
    QTest.keyClicks(box.filter, "fox snow")
    assert [h.item(i).isHidden() for i in range(h.count())] == [True, False]
    box.filter.clear()
    # Shown in the viewer at its full size (the history keeps a small copy until then).
    assert h.outputs[1].image.width() < 600
    click_item(h, 1)
    assert w.viewer.output is h.outputs[1] and w.viewer.output.image.width() == 600
    # An image of an earlier session restores its workflow like one of this session.
    h.restore_requested.emit(h.outputs[1])
    assert any(n.type == "sampler" for n in w.controller.wf.nodes)
    # A file deleted from the folder drops out (now, and in the next session).
    fox.unlink()
    assert h.drop_missing() == 1 and [o.path for o in h.outputs] == [str(cat)]
    w2 = window("txt2img")
    qtbot.waitUntil(lambda: len(w2.history.outputs) == 1)
    assert w2.history.outputs[0].path == str(cat)


def click_item(h, row: int, mods=NO) -> None:
    rect = h.visualItemRect(h.item(row))
    QTest.mouseClick(h.viewport(), L, mods, rect.center())


def test_compare_the_last_four_images_side_by_side_then_larger(window, qtbot):
    from PIL import Image

    from studio.app.runner import Output, pil_to_qimage

    w = window("txt2img")
    wf = w.controller.wf.copy()
    (save,) = [n.id for n in wf.nodes if n.type == "save_image"]
    colors = ["#ff0000", "#00ff00", "#0000ff", "#ffff00", "#ffffff"]
    outs = []
    for i, c in enumerate(colors):
        pil = Image.new("RGB", (64, 64), c)
        outs.append(Output(pil_to_qimage(pil), pil, save, "Save Image", i + 1, wf))
    w.history.add_outputs(outs)  # run 5 is the newest, first
    h = w.history
    assert h.item(0).text().startswith("run 5 · seed 0")
    assert "a large yellow triangle on …" in h.item(0).text()
    # Click the newest, Shift+click the fourth, press C: four side by side.
    click_item(h, 0)
    click_item(h, 3, Qt.KeyboardModifier.ShiftModifier)
    QTest.keyClick(h, Qt.Key.Key_C)
    v = w.viewer
    assert [o.job_id for o in v.comparing] == [5, 4, 3, 2]
    grid = v.grid
    assert len(grid.views) == 4 and all(view.isVisible() for view in grid.views)
    assert grid.captions[0].text().startswith("run 5")
    # One zoom, every image: the same detail under the cursor in all four.
    first = grid.views[0]
    first.set_zoom(first.zoom * 3, QPointF(10, 10))
    assert {round(view.zoom, 4) for view in grid.views} == {round(first.zoom, 4)}
    assert len({(view.offset.x(), view.offset.y()) for view in grid.views}) == 1
    # Larger: a window of its own, the same compare in it; then full screen.
    small = w.viewer_dock.size()
    QTest.mouseClick(next(b for b in v.findChildren(QToolButton) if b.text() == "Window"), L)
    assert w.viewer_dock.isFloating()
    assert w.viewer_dock.width() > small.width() and w.viewer_dock.height() > small.height()
    assert v.comparing and len(grid.views) == 4
    QTest.mouseClick(next(b for b in v.findChildren(QToolButton) if b.text() == "Window"), L)
    assert not w.viewer_dock.isFloating()
    v.full_screen()
    assert (
        w.viewer_dock.isFloating() and w.viewer_dock.windowState() & Qt.WindowState.WindowFullScreen
    )
    QTest.keyClick(v, Qt.Key.Key_Escape)
    assert not w.viewer_dock.isFloating()
    # Clicking a single thumbnail shows it alone again.
    click_item(h, 4)
    assert v.comparing == [] and v.output is outs[0]


# -- messages name nodes by title ---------------------------------------------------------------


def test_messages_name_nodes_by_title_and_the_port_at_fault_is_drawn(window, qtbot):
    from studio.engine.queue import Job, JobState

    w = window("txt2img")
    c = w.controller
    wf = c.wf
    (ckpt,) = by_type(w, "load_checkpoint")
    (sampler,) = by_type(w, "sampler")
    (decode,) = by_type(w, "vae_decode")
    c.set_param(ckpt.id, "ckpt_name", "gone.safetensors")
    c.disconnect([wf.link_into(decode.id, "vae").id])
    c.validate_now()
    texts = [str(p) for p in c.problems]
    assert any(t.startswith("Load Checkpoint: param 'ckpt_name'") for t in texts), texts
    assert any(t.startswith("VAE Decode: missing required input 'vae'") for t in texts), texts
    assert not any(ckpt.id in t or decode.id in t for t in texts)  # no UUIDs
    # The port at fault is drawn as such: the vae input and the ckpt_name field.
    assert w.scene.nodes[decode.id].bad_ports == {"vae"}
    assert w.scene.nodes[ckpt.id].bad_ports == {"ckpt_name"}
    drawn = render_node(w, decode.id, 1.0)
    w.scene.nodes[decode.id].set_problems(w.scene.nodes[decode.id].problems, set())
    assert render_node(w, decode.id, 1.0) != drawn
    c.validate_now()
    # Two nodes with one title: the short id tells them apart, only there.
    other = c.add_node("load_checkpoint", (0, 900), params={"ckpt_name": "gone2.safetensors"})
    c.validate_now()
    names = {p.node_id: str(p) for p in c.problems if p.node_type == "load_checkpoint"}
    assert names[other].startswith(f"Load Checkpoint #{other[:8]}: ")
    assert names[ckpt.id].startswith(f"Load Checkpoint #{ckpt.id[:8]}: ")
    assert not any(str(p).startswith("VAE Decode #") for p in c.problems)
    # The status bar says it the same way when a run is refused.
    job = Job(3, wf.copy(), state=JobState.INVALID, problems=list(c.problems))
    w.runs._on_job(job, JobState.INVALID)
    msg = w.statusBar().currentMessage()
    assert msg.startswith("Run 3 cannot start: ") and "more" in msg
    assert sampler.id not in msg and decode.id not in msg
