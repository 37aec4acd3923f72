"""The canvas driven like an artist would: real mouse and keyboard events, offscreen."""

from __future__ import annotations

import pytest

pytest.importorskip("PySide6")

from gui_support import RAN, gui_registry
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtTest import QTest

from studio.app.canvas.node_item import _Style
from studio.engine import Engine
from studio.graph.types import ValueType
from studio.graph.workflow import Workflow

L = Qt.MouseButton.LeftButton
NO = Qt.KeyboardModifier.NoModifier
CTRL = Qt.KeyboardModifier.ControlModifier
SHIFT = Qt.KeyboardModifier.ShiftModifier


@pytest.fixture
def reg():
    return gui_registry()


@pytest.fixture
def window(make_window, reg):
    return make_window(Workflow(reg))


def vp(window):
    return window.view.viewport()


def at(window, scene_point: QPointF) -> QPoint:
    return window.view.mapFromScene(scene_point)


def port(window, node_id: str, name: str, output: bool) -> QPoint:
    item = window.scene.nodes[node_id]
    return at(window, item.port_scene_pos(name, output))


def title(window, node_id: str) -> QPoint:
    item = window.scene.nodes[node_id]
    return at(window, item.pos() + QPointF(item.shape_.width / 2, 12))


def field(window, node_id: str, name: str, dx: float = 0.5) -> QPoint:
    item = window.scene.nodes[node_id]
    r = item.shape_.params[name].rect
    return at(window, item.pos() + QPointF(r.left() + r.width() * dx, r.center().y()))


def drag(widget, a: QPoint, b: QPoint, button=L, mods=NO, steps: int = 5) -> None:
    QTest.mousePress(widget, button, mods, a)
    for i in range(1, steps + 1):
        QTest.mouseMove(widget, a + (b - a) * (i / steps))
    QTest.mouseRelease(widget, button, mods, b)


def key(window, k, mods=NO) -> None:
    QTest.keyClick(window.view, k, mods)


def links(wf: Workflow) -> set[tuple[str, str, str, str]]:
    return {(lk.source, lk.output, lk.target, lk.input) for lk in wf.links}


# -- adding nodes -------------------------------------------------------------------------


def test_add_node_by_search_then_undo_redo(window, qtbot):
    wf = window.controller.wf
    QTest.mouseDClick(vp(window), L, NO, at(window, QPointF(100, 100)))
    popup = window.view.search
    assert popup.isVisible()
    QTest.keyClicks(popup.edit, "sampl")
    assert popup.list.item(0).text().startswith("Sampler")
    QTest.keyClick(popup.edit, Qt.Key.Key_Return)
    assert [n.type for n in wf.nodes] == ["sampler"]
    assert wf.layout.nodes[wf.nodes[0].id].pos == pytest.approx((100, 100), abs=2)
    assert window.undo_action.text() == "Undo Add Sampler"
    window.undo_action.trigger()
    assert wf.nodes == [] and window.scene.nodes == {}
    window.redo_action.trigger()
    assert [n.type for n in wf.nodes] == ["sampler"]
    assert len(window.scene.nodes) == 1


def test_tab_opens_search(window):
    QTest.mouseMove(vp(window), at(window, QPointF(50, 50)))
    key(window, Qt.Key.Key_Tab)
    assert window.view.search.isVisible()
    QTest.keyClick(window.view.search.edit, Qt.Key.Key_Escape)
    assert not window.view.search.isVisible()
    assert window.controller.wf.nodes == []


# -- wiring -------------------------------------------------------------------------------


@pytest.fixture
def chain(make_window, reg):
    """make_image -> brighten -> show_image, plus a spare image and a number."""
    wf = Workflow(reg)
    wf.add_node("make_image", {"value": 5}, id="img", pos=(0, 0))
    wf.add_node("brighten", id="bright", pos=(320, 0))
    wf.add_node("show_image", id="show", pos=(640, 0))
    wf.add_node("make_image", {"value": 7}, id="img2", pos=(0, 200))
    wf.add_node("number", id="num", pos=(0, 360))
    wf.connect("img", "image", "bright", "image")
    wf.connect("bright", "image", "show", "image")
    return make_window(wf)


def test_connect_by_dragging_port_to_port_with_undo(window, qtbot):
    c = window.controller
    a = c.add_node("make_image", (0, 0))
    b = c.add_node("show_image", (350, 50))
    drag(vp(window), port(window, a, "image", True), port(window, b, "image", False))
    assert links(c.wf) == {(a, "image", b, "image")}
    assert len(window.scene.links) == 1
    window.undo_action.trigger()
    assert links(c.wf) == set() and window.scene.links == {}
    window.redo_action.trigger()
    assert links(c.wf) == {(a, "image", b, "image")}


def test_incompatible_ports_dim_and_refuse(chain):
    w = chain
    wf = w.controller.wf
    before = links(wf)
    start = port(w, "num", "value", True)
    end = port(w, "show", "image", False)
    QTest.mousePress(vp(w), L, NO, start)
    QTest.mouseMove(vp(w), (start + end) / 2)
    show = w.scene.nodes["show"]
    assert show.drag_hint == (ValueType.INT, True)
    assert show._port_brush(ValueType.IMAGE, False) is _Style.dim_brush
    assert w.scene.nodes["bright"]._port_brush(ValueType.INT, False) is not _Style.dim_brush
    QTest.mouseMove(vp(w), end)
    QTest.mouseRelease(vp(w), L, NO, end)
    assert links(wf) == before
    assert "cannot connect" in w.statusBar().currentMessage()
    assert show.drag_hint is None
    assert w.controller.undo_stack.count() == 0


def test_dropping_on_an_occupied_input_replaces_its_link(chain):
    w = chain
    wf = w.controller.wf
    drag(vp(w), port(w, "img2", "image", True), port(w, "bright", "image", False))
    assert wf.link_into("bright", "image").source == "img2"
    assert len(wf.links) == 2
    w.undo_action.trigger()
    assert wf.link_into("bright", "image").source == "img"
    assert len(w.scene.links) == 2


def test_dragging_a_wire_off_an_input_removes_it(chain):
    w = chain
    wf = w.controller.wf
    drag(vp(w), port(w, "show", "image", False), at(w, QPointF(700, 400)))
    assert wf.link_into("show", "image") is None
    w.undo_action.trigger()
    assert wf.link_into("show", "image").source == "bright"


def test_wire_dropped_on_empty_canvas_offers_fitting_nodes(chain):
    w = chain
    wf = w.controller.wf
    drag(vp(w), port(w, "img2", "image", True), at(w, QPointF(400, 260)))
    popup = w.view.search
    assert popup.isVisible()
    titles = [popup.list.item(i).text().split()[0] for i in range(popup.list.count())]
    assert "Brighten" in titles and "Number" not in titles and "Sampler" not in titles
    QTest.keyClicks(popup.edit, "show")
    QTest.keyClick(popup.edit, Qt.Key.Key_Return)
    new = [n for n in wf.nodes if n.type == "show_image" and n.id != "show"]
    assert len(new) == 1
    assert wf.link_into(new[0].id, "image").source == "img2"
    w.undo_action.trigger()  # node and link go in one step
    assert len(wf.nodes) == 5 and wf.link_into("show", "image") is not None


def test_cut_wires_with_ctrl_right_drag(chain):
    w = chain
    wf = w.controller.wf
    a, b = at(w, QPointF(280, -60)), at(w, QPointF(280, 120))
    drag(vp(w), a, b, button=Qt.MouseButton.RightButton, mods=CTRL)
    assert links(wf) == {("bright", "image", "show", "image")}
    w.undo_action.trigger()
    assert len(wf.links) == 2


def test_reroute_point_by_double_clicking_a_wire(chain):
    w = chain
    wf = w.controller.wf
    lk = wf.link_into("show", "image")
    path = w.scene.links[lk.id].path()
    mid = path.pointAtPercent(0.5)
    QTest.mouseDClick(vp(w), L, NO, at(w, mid))
    assert len(wf.layout.reroutes[lk.id]) == 1
    handle = w.scene.links[lk.id].reroute_items[0]
    drag(vp(w), at(w, handle.pos()), at(w, handle.pos() + QPointF(0, 80)))
    assert wf.layout.reroutes[lk.id][0][1] == pytest.approx(mid.y() + 80, abs=2)
    w.undo_action.trigger()
    assert wf.layout.reroutes[lk.id][0][1] == pytest.approx(mid.y(), abs=2)
    w.undo_action.trigger()
    assert lk.id not in wf.layout.reroutes


def test_drop_node_onto_wire_inserts_it(chain):
    w = chain
    wf = w.controller.wf
    c = w.controller
    extra = c.add_node("brighten", (320, 500))
    item = w.scene.nodes[extra]
    wire = w.scene.links[wf.link_into("show", "image").id].path().pointAtPercent(0.5)
    grab = title(w, extra)
    target = at(w, wire - QPointF(0, item.shape_.height / 2 - 12) + QPointF(0, 0))
    drag(vp(w), grab, target, steps=8)
    assert wf.link_into(extra, "image").source == "bright"
    assert wf.link_into("show", "image").source == extra
    n = c.undo_stack.count()
    w.undo_action.trigger()
    assert c.undo_stack.index() == n - 1
    assert wf.link_into("show", "image").source == "bright"
    assert wf.link_into(extra, "image") is None


# -- selection, moving, deleting -----------------------------------------------------------


def test_delete_node_and_undo_restores_links(chain):
    w = chain
    wf = w.controller.wf
    QTest.mouseClick(vp(w), L, NO, title(w, "bright"))
    assert w.scene.selected_node_ids() == ["bright"]
    key(w, Qt.Key.Key_Delete)
    assert not wf.has_node("bright") and wf.links == []
    assert "bright" not in w.scene.nodes and w.scene.links == {}
    w.undo_action.trigger()
    assert links(wf) == {("img", "image", "bright", "image"), ("bright", "image", "show", "image")}
    assert len(w.scene.links) == 2
    w.redo_action.trigger()
    assert not wf.has_node("bright")


def test_move_by_drag_is_one_undo_step(chain):
    w = chain
    wf = w.controller.wf
    QTest.mouseClick(vp(w), L, NO, title(w, "img"))
    QTest.mouseClick(vp(w), L, SHIFT, title(w, "img2"))
    assert sorted(w.scene.selected_node_ids()) == ["img", "img2"]
    a = title(w, "img")
    drag(vp(w), a, a + QPoint(60, 30), steps=10)
    assert wf.layout.nodes["img"].pos == pytest.approx((60, 30), abs=1)
    assert wf.layout.nodes["img2"].pos == pytest.approx((60, 230), abs=1)
    assert w.controller.undo_stack.count() == 1
    w.undo_action.trigger()
    assert wf.layout.nodes["img"].pos == (0, 0)
    assert w.scene.nodes["img2"].pos() == QPointF(0, 200)


def test_rubber_band_and_select_all(chain):
    w = chain
    drag(vp(w), at(w, QPointF(-40, 150)), at(w, QPointF(260, 600)))
    assert sorted(w.scene.selected_node_ids()) == ["img2", "num"]
    key(w, Qt.Key.Key_A, CTRL)
    assert len(w.scene.selected_node_ids()) == 5


def test_collapse_by_clicking_the_arrow(chain):
    w = chain
    item = w.scene.nodes["bright"]
    QTest.mouseClick(vp(w), L, NO, at(w, item.pos() + QPointF(10, 12)))
    assert w.controller.wf.layout.nodes["bright"].collapsed
    assert item.shape_.height < 40
    w.undo_action.trigger()
    assert not w.controller.wf.layout.nodes["bright"].collapsed


# -- params on the node --------------------------------------------------------------------


def test_slider_drag_on_node_is_one_undo_step(make_window, reg):
    wf = Workflow(reg)
    wf.add_node("sampler", id="s", pos=(0, 0))
    w = make_window(wf)
    a = field(w, "s", "cfg", 0.3)
    drag(vp(w), a, a + QPoint(60, 0), steps=12)
    cfg = wf.get_node("s").params["cfg"]
    assert cfg > 7.0 and (cfg * 2) == int(cfg * 2)  # snapped to the 0.5 step
    assert w.controller.undo_stack.count() == 1
    assert w.undo_action.text() == "Undo Set cfg of Sampler"
    w.undo_action.trigger()
    assert wf.get_node("s").params["cfg"] == 7.0


def test_click_arrows_toggle_and_type_a_value(make_window, reg):
    wf = Workflow(reg)
    wf.add_node("empty_latent", id="e", pos=(0, 0))
    wf.add_node("toggle", id="t", pos=(0, 200))
    w = make_window(wf)
    QTest.mouseClick(vp(w), L, NO, field(w, "e", "width", 0.97))
    assert wf.get_node("e").params["width"] == 520
    QTest.mouseClick(vp(w), L, NO, field(w, "e", "width", 0.02))
    assert wf.get_node("e").params["width"] == 512
    QTest.mouseClick(vp(w), L, NO, field(w, "t", "on"))
    assert wf.get_node("t").params["on"] is True
    QTest.mouseClick(vp(w), L, NO, field(w, "e", "height"))
    editor = w.view.editor
    assert editor is not None and editor.widget.isVisible()
    editor.widget.selectAll()
    QTest.keyClicks(editor.widget, "768")
    QTest.keyClick(editor.widget, Qt.Key.Key_Return)
    assert wf.get_node("e").params["height"] == 768
    QTest.mouseClick(vp(w), L, NO, field(w, "e", "height"))
    QTest.keyClicks(w.view.editor.widget, "99999")
    QTest.keyClick(w.view.editor.widget, Qt.Key.Key_Return)
    assert wf.get_node("e").params["height"] == 4096  # clamped to the spec's max


def test_seed_dice_randomizes(make_window, reg):
    wf = Workflow(reg)
    wf.add_node("sampler", {"seed": 5}, id="s", pos=(0, 0))
    w = make_window(wf)
    QTest.mouseClick(vp(w), L, NO, field(w, "s", "seed", 0.98))
    assert wf.get_node("s").params["seed"] != 5


# -- copy, paste, flags --------------------------------------------------------------------


def test_copy_paste_and_paste_keeping_links(chain):
    w = chain
    wf = w.controller.wf
    QTest.mouseClick(vp(w), L, NO, title(w, "bright"))
    QTest.mouseClick(vp(w), L, SHIFT, title(w, "show"))
    key(w, Qt.Key.Key_C, CTRL)
    QTest.mouseMove(vp(w), at(w, QPointF(300, 500)))
    key(w, Qt.Key.Key_V, CTRL)
    assert len(wf.nodes) == 7
    new = set(w.scene.selected_node_ids())
    assert len(new) == 2 and not new & {"bright", "show"}
    inner = [lk for lk in wf.links if lk.source in new and lk.target in new]
    assert len(inner) == 1  # the link between the two copies
    assert not [lk for lk in wf.links if lk.target in new and lk.source not in new]
    assert w.undo_action.text() == "Undo Paste 2 nodes"
    w.undo_action.trigger()
    assert len(wf.nodes) == 5
    key(w, Qt.Key.Key_V, CTRL | SHIFT)
    new = set(w.scene.selected_node_ids())
    fed = [lk for lk in wf.links if lk.target in new and lk.source not in new]
    assert [(lk.source, lk.output) for lk in fed] == [("img", "image")]
    w.undo_action.trigger()
    assert len(wf.nodes) == 5 and len(wf.links) == 2


@pytest.mark.parametrize(
    "clipboard",
    [
        '{"nodes": [{"id": "a", "type": "number", "params": {"value": 1e400}}]}',
        '{"nodes": [{"id": "a", "type": "number", "version": "x"}]}',
        '{"nodes": [{"id": "a", "type": "number"}], "layout": {"nodes": {"a": {"pos": 5}}}}',
        '{"nodes": [{"id": "a", "type": "number", "title": "\\ud800"}]}',
    ],
)
def test_pasting_text_that_is_not_studio_nodes_pastes_nothing_and_says_why(chain, clipboard):
    from PySide6.QtWidgets import QApplication

    w = chain
    QApplication.clipboard().setText(clipboard)
    key(w, Qt.Key.Key_V, CTRL)
    assert len(w.controller.wf.nodes) == 5
    assert w.statusBar().currentMessage().startswith("nothing pasted")


def test_duplicate(chain):
    w = chain
    QTest.mouseClick(vp(w), L, NO, title(w, "bright"))
    key(w, Qt.Key.Key_D, CTRL)
    wf = w.controller.wf
    assert len([n for n in wf.nodes if n.type == "brighten"]) == 2


def test_mute_and_bypass_change_what_runs(chain):
    w = chain
    wf = w.controller.wf
    engine = Engine(w.registry, cache_bytes=0)
    RAN.clear()
    assert engine.run(wf).images == [15]
    QTest.mouseClick(vp(w), L, NO, title(w, "bright"))
    key(w, Qt.Key.Key_B, CTRL)
    assert wf.get_node("bright").bypass
    RAN.clear()
    result = engine.run(wf)
    assert result.images == [5] and RAN["brighten"] == 0
    key(w, Qt.Key.Key_M, CTRL)  # mute replaces bypass
    node = wf.get_node("bright")
    assert node.mute and not node.bypass
    RAN.clear()
    result = engine.run(wf)
    assert RAN["brighten"] == 0 and RAN["show_image"] == 0 and result.images == []
    w.undo_action.trigger()
    w.undo_action.trigger()
    RAN.clear()
    assert engine.run(wf).images == [15] and RAN["brighten"] == 1


def test_validation_problems_show_on_the_node(window, qtbot):
    c = window.controller
    s = c.add_node("sampler", (0, 0))
    item = window.scene.nodes[s]
    qtbot.waitUntil(lambda: bool(item.problems), timeout=3000)
    assert any("model" in m for m in item.problems)
    assert "missing required input" in item.toolTip()
    assert "problem" in window.problems_label.text()
    ck = c.add_node("load_checkpoint", (-400, 0))
    drag(vp(window), port(window, ck, "model", True), port(window, s, "model", False))
    qtbot.waitUntil(lambda: not any("'model'" in m for m in item.problems), timeout=3000)


# -- frames and notes ----------------------------------------------------------------------


def test_frame_carries_its_nodes(chain):
    w = chain
    wf = w.controller.wf
    QTest.mouseClick(vp(w), L, NO, title(w, "img2"))
    key(w, Qt.Key.Key_G, CTRL)
    assert len(wf.layout.frames) == 1
    frame = next(iter(w.scene.frames.values()))
    top = wf.layout.frames[0].rect[1]
    w.scene.clearSelection()
    grab = at(w, frame.pos() + QPointF(40, 12))
    drag(vp(w), grab, grab + QPoint(0, 100), steps=6)
    assert wf.layout.nodes["img2"].pos == pytest.approx((0, 300), abs=1)
    assert wf.layout.nodes["img"].pos == (0, 0)  # outside the frame: stays
    assert wf.layout.frames[0].rect[1] == pytest.approx(top + 100, abs=1)
    assert w.controller.undo_stack.count() == 2  # add frame, move
    w.undo_action.trigger()
    assert wf.layout.nodes["img2"].pos == (0, 200)
    assert wf.layout.frames[0].rect[1] == top


def test_add_note(window):
    window.controller.add_note((10, 10), "remember the seed")
    assert window.scene.notes and window.controller.wf.layout.notes[0].text == "remember the seed"


def test_drop_a_node_type_from_the_library_on_the_canvas(window):
    from PySide6.QtCore import QByteArray, QMimeData
    from PySide6.QtGui import QDragEnterEvent, QDropEvent
    from PySide6.QtWidgets import QApplication

    from studio.app.canvas.view_menus import NODE_TYPE_MIME

    md = QMimeData()
    md.setData(NODE_TYPE_MIME, QByteArray(b"vae_decode"))
    target = vp(window)
    drop_at = at(window, QPointF(250, 120))
    enter = QDragEnterEvent(drop_at, Qt.DropAction.CopyAction, md, L, NO)
    QApplication.sendEvent(target, enter)
    assert enter.isAccepted()
    QApplication.sendEvent(
        target, QDropEvent(QPointF(drop_at), Qt.DropAction.CopyAction, md, L, NO)
    )
    nodes = window.controller.wf.nodes
    assert [n.type for n in nodes] == ["vae_decode"]
    assert window.controller.wf.layout.nodes[nodes[0].id].pos == pytest.approx((250, 120), abs=2)


def test_pinned_nodes_do_not_move(chain):
    w = chain
    w.controller.set_layout(["img"], "Pin", pinned=True)
    a = title(w, "img")
    drag(vp(w), a, a + QPoint(80, 80))
    assert w.controller.wf.layout.nodes["img"].pos == (0, 0)
