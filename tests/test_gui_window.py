"""The main window: files, recovery, panels, layout, screenshot; plus a PySide6 regression."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("PySide6")

from gui_support import gui_registry, txt2img
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QLineEdit, QSlider, QStyle, QStyleOptionSlider

from studio.app.recovery import RecoveryStore
from studio.app.window import UnsavedAnswer
from studio.graph.fileformat import dumps_workflow, load_workflow
from studio.graph.workflow import ChangeKind, Workflow

L = Qt.MouseButton.LeftButton
NO = Qt.KeyboardModifier.NoModifier
CTRL = Qt.KeyboardModifier.ControlModifier
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@pytest.fixture
def reg():
    return gui_registry()


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["QT_QPA_PLATFORM"] = "offscreen"
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg-config")  # QSettings of the child
    env["STUDIO_DATA_DIR"] = str(tmp_path / "data")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS)])
    return env


# -- files ----------------------------------------------------------------------------------


def test_save_then_reopen_gives_the_same_workflow(make_window, reg, tmp_path):
    w = make_window(txt2img(reg))
    assert w.windowTitle() == "Untitled[*] — Studio" and not w.isWindowModified()
    w.controller.set_param("sampler", "steps", 31)
    w.controller.add_frame((0, 0, 500, 400), "Inputs")
    w.controller.add_note((900, 600), "try karras")
    assert w.isWindowModified()
    target = tmp_path / "mine.json"
    w.ask_save_path = lambda: str(target)
    QTest.keyClick(w.view, Qt.Key.Key_S, CTRL)
    assert target.is_file() and not w.isWindowModified()
    assert w.windowTitle() == "mine.json[*] — Studio"
    saved_text = dumps_workflow(w.controller.wf)
    w2 = make_window(registry=reg)
    assert w2.open_path(target)
    assert dumps_workflow(w2.controller.wf) == saved_text
    assert target.read_text("utf-8") == saved_text
    assert str(target.resolve()) in w2.recent_files()
    assert len(w2.scene.nodes) == 7 and len(w2.scene.links) == 9
    assert len(w2.scene.frames) == 1 and len(w2.scene.notes) == 1
    # Undoing back to the saved state clears the mark again.
    w2.controller.set_param("sampler", "cfg", 3.0)
    assert w2.isWindowModified()
    w2.undo_action.trigger()
    assert not w2.isWindowModified()


def test_saving_writes_through_a_temporary_file(make_window, reg, tmp_path, monkeypatch):
    import studio.fsutil as fsutil

    calls = []
    real = os.replace
    monkeypatch.setattr(fsutil.os, "replace", lambda a, b: (calls.append((a, b)), real(a, b)))
    w = make_window(txt2img(reg))
    w.ask_save_path = lambda: str(tmp_path / "a")
    assert w.save()
    assert calls and Path(calls[0][1]) == tmp_path / "a.json"
    assert Path(calls[0][0]).name.startswith(".a.json.")


def test_closing_with_unsaved_changes_asks(make_window, reg, tmp_path):
    w = make_window(txt2img(reg))
    w.controller.set_param("sampler", "steps", 5)
    answers = []
    w.ask_unsaved = lambda: answers.append("asked") or UnsavedAnswer.CANCEL
    assert not w.close()
    assert answers == ["asked"] and w.isVisible()
    w.ask_unsaved = lambda: UnsavedAnswer.SAVE
    w.ask_save_path = lambda: str(tmp_path / "closing.json")
    assert w.close()
    assert load_workflow(tmp_path / "closing.json", reg).get_node("sampler").params["steps"] == 5


def test_saving_keeps_the_view_with_the_workflow(make_window, reg, tmp_path):
    w = make_window(txt2img(reg))
    seen = []
    w.controller.wf.subscribe(seen.append)
    w.view.set_zoom(1.5, QPointF(40, 30))
    assert w.save_to(tmp_path / "view.json")
    assert [c.kind for c in seen] == [ChangeKind.VIEWPORT_CHANGED]
    saved = load_workflow(tmp_path / "view.json", reg).layout.viewport
    assert saved == w.view.viewport_state() and not w.is_dirty


def test_new_file_asks_and_empties(make_window, reg):
    w = make_window(txt2img(reg))
    w.controller.set_param("sampler", "steps", 5)
    w.ask_unsaved = lambda: UnsavedAnswer.DISCARD
    QTest.keyClick(w.view, Qt.Key.Key_N, CTRL)
    assert w.controller.wf.nodes == [] and w.scene.nodes == {} and w.path is None


def test_drop_a_workflow_file_on_the_window_opens_it(make_window, reg, tmp_path):
    path = tmp_path / "dropped.json"
    txt2img(reg).save(path)
    w = make_window(registry=reg)
    md = QMimeData()
    md.setUrls([QUrl.fromLocalFile(str(path))])
    target = w.view.viewport()
    pos = QPointF(200, 200)
    enter = QDragEnterEvent(QPoint(200, 200), Qt.DropAction.CopyAction, md, L, NO)
    QApplication.sendEvent(target, enter)
    assert enter.isAccepted()
    QApplication.sendEvent(target, QDropEvent(pos, Qt.DropAction.CopyAction, md, L, NO))
    assert w.path == path and len(w.controller.wf.nodes) == 7
    assert w.windowTitle().startswith("dropped.json")


def test_open_reports_a_broken_file(make_window, reg, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    w = make_window(registry=reg)
    assert not w.open_path(bad)
    assert "not valid JSON" in w.statusBar().currentMessage()


# -- recovery ---------------------------------------------------------------------------------

CRASH = """
import os, signal, sys
from pathlib import Path
from PySide6.QtWidgets import QApplication
app = QApplication([])
from gui_support import gui_registry, txt2img
from studio.app.recovery import RecoveryStore
from studio.app.window import MainWindow
reg = gui_registry()
w = MainWindow(reg, autosave=False, recovery=RecoveryStore(Path(sys.argv[1])))
txt2img(reg).save(sys.argv[2])
w.open_path(sys.argv[2])
w.controller.set_param("sampler", "steps", 33)
w.controller.add_node("number", (0, 900))
w.autosave_now()
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")
def test_recovery_file_is_offered_after_a_crash(make_window, reg, tmp_path):
    rec, saved = tmp_path / "recovery", tmp_path / "work.json"
    proc = subprocess.run(
        [sys.executable, "-c", CRASH, str(rec), str(saved)],
        env=_env(tmp_path),
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == -9, proc.stderr.decode()
    assert len(list(rec.glob("*.json"))) == 1
    w = make_window(registry=reg, recovery_dir=rec)
    offered = []
    w.ask_restore = lambda found: offered.append(found) or True
    assert w.offer_recovery()
    assert offered[0].source == str(saved) and offered[0].node_count == 8
    wf = w.controller.wf
    assert wf.get_node("sampler").params["steps"] == 33 and len(wf.nodes) == 8
    assert w.path == saved and w.isWindowModified()
    # The crashed session's file is gone; this session's own file now keeps the work.
    assert [p.name for p in rec.glob("*.json")] == [w.recovery.path.name]
    w.ask_save_path = lambda: str(saved)
    assert w.save()
    assert list(rec.glob("*.json")) == []
    assert not RecoveryStore(rec).pending()


def test_autosave_only_while_dirty_and_live_sessions_are_not_offered(make_window, reg, tmp_path):
    rec = tmp_path / "recovery"
    w = make_window(txt2img(reg), recovery_dir=rec)
    w.autosave_now()
    assert not w.recovery.path.exists()
    w.controller.set_param("sampler", "steps", 9)
    w.autosave_now()
    assert w.recovery.path.exists()
    other = make_window(registry=reg, recovery_dir=rec)
    assert other.recovery.pending() == []  # the first window is alive: its file is not stale
    w.undo_action.trigger()
    w.autosave_now()
    assert not w.recovery.path.exists()


# -- panels ------------------------------------------------------------------------------------


def _slider_handle(slider: QSlider) -> QPoint:
    opt = QStyleOptionSlider()
    slider.initStyleOption(opt)
    r = slider.style().subControlRect(
        QStyle.ComplexControl.CC_Slider, opt, QStyle.SubControl.SC_SliderHandle, slider
    )
    return r.center()


def test_inspector_edits_params_with_the_right_editors(make_window, reg):
    w = make_window(txt2img(reg))
    wf = w.controller.wf
    w.scene.select_nodes(["sampler"])
    ins = w.inspector
    assert set(ins.editors) == {"seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"}
    steps = ins.editors["steps"]
    assert steps.slider is not None and steps.widget.maximum() == 150
    spin = steps.widget
    spin.setFocus()
    spin.selectAll()
    QTest.keyClicks(spin, "42")
    QTest.keyClick(spin, Qt.Key.Key_Return)
    assert wf.get_node("sampler").params["steps"] == 42
    assert w.controller.undo_stack.count() == 1
    # A slider drag is one undo step.
    slider = ins.editors["cfg"].slider
    a = _slider_handle(slider)
    QTest.mousePress(slider, L, NO, a)
    for dx in range(10, 80, 10):
        QTest.mouseMove(slider, a + QPoint(dx, 0))
    QTest.mouseRelease(slider, L, NO, a + QPoint(70, 0))
    cfg = wf.get_node("sampler").params["cfg"]
    assert cfg > 7.0
    assert w.controller.undo_stack.count() == 2
    w.undo_action.trigger()
    assert wf.get_node("sampler").params["cfg"] == 7.0
    # Choices and the seed.
    ins.editors["scheduler"].widget.setCurrentText("karras")
    assert wf.get_node("sampler").params["scheduler"] == "karras"
    QTest.mouseClick(ins.editors["seed"].dice, L)
    assert wf.get_node("sampler").params["seed"] != 1234
    # The canvas edits show in the inspector.
    w.controller.set_param("sampler", "steps", 12)
    assert ins.editors["steps"].widget.value() == 12


def test_inspector_multiline_prompt_and_title(make_window, reg):
    w = make_window(txt2img(reg))
    wf = w.controller.wf
    w.scene.select_nodes(["pos"])
    editor = w.inspector.editors["text"].widget
    editor.setFocus()
    QTest.keyClick(editor, Qt.Key.Key_End, CTRL)
    QTest.keyClicks(editor, ", golden hour")
    assert wf.get_node("pos").params["text"].endswith(", golden hour")
    assert w.controller.undo_stack.count() == 1  # typing is one step
    title = w.inspector.widget().findChild(QLineEdit, "titleEdit")
    title.selectAll()
    QTest.keyClicks(title, "Prompt")
    QTest.keyClick(title, Qt.Key.Key_Return)
    assert wf.get_node("pos").title == "Prompt"
    assert w.scene.nodes["pos"].title_text() == "Prompt"


def test_library_search_and_add(make_window, reg):
    w = make_window(Workflow(reg))
    lib = w.library
    QTest.keyClicks(lib.search, "bright")
    item = lib.tree.topLevelItem(0)
    assert item.text(0).startswith("Brighten")
    rect = lib.tree.visualItemRect(item)
    QTest.mouseClick(lib.tree.viewport(), L, NO, rect.center())
    QTest.mouseDClick(lib.tree.viewport(), L, NO, rect.center())
    assert [n.type for n in w.controller.wf.nodes] == ["brighten"]
    lib.search.clear()
    cats = [lib.tree.topLevelItem(i).text(0) for i in range(lib.tree.topLevelItemCount())]
    assert cats == ["Conditioning", "Image", "Latent", "Loaders", "Sampling", "Utility"]


def test_panel_layout_is_remembered(make_window, reg, isolated_settings):
    w = make_window(registry=reg)
    w.inspector_dock.hide()
    w.close()
    w2 = make_window(registry=reg)
    assert not w2.inspector_dock.isVisible() and w2.library_dock.isVisible()
    assert list(isolated_settings.rglob("*.ini"))  # written to the test folder, not the user's


# -- the app entry point ------------------------------------------------------------------------

SHOT = """
import sys
from studio.app.main import run_app
code = run_app(sys.argv[1], screenshot=sys.argv[2])
print("TORCH" if "torch" in sys.modules else "NO-TORCH", code)
"""


def test_screenshot_entry_point_without_torch(tmp_path):
    from studio.library import installed_registry

    wf = Workflow(installed_registry())
    a = wf.add_node("primitive_int", {"value": 7}, pos=(0, 0))
    b = wf.add_node("primitive_string", {"value": "hello"}, pos=(300, 0))
    del a, b
    path, png = tmp_path / "w.json", tmp_path / "shot.png"
    wf.save(path)
    proc = subprocess.run(
        [sys.executable, "-c", SHOT, str(path), str(png)],
        env=_env(tmp_path),
        capture_output=True,
        timeout=120,
        cwd=ROOT,
    )
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    assert "NO-TORCH 0" in out
    assert png.stat().st_size > 10_000
    missing = subprocess.run(
        [sys.executable, "-c", SHOT, str(tmp_path / "nope.json"), str(png)],
        env=_env(tmp_path),
        capture_output=True,
        timeout=120,
        cwd=ROOT,
    )
    assert "NO-TORCH 2" in missing.stdout.decode()
    assert "no such file" in missing.stderr.decode()


REGRESSION = """
from PySide6.QtGui import QFont
from PySide6.QtWidgets import QApplication, QGraphicsTextItem, QLabel
app = QApplication([])
label, item, font = QLabel(), QGraphicsTextItem(), QFont()
for i in range(300_000):
    label.setText("x")
    item.setFont(font)
print("survived")
"""


def test_pyside6_setters_survive_many_calls(tmp_path):
    """PySide6 6.12.0 leaks a reference to None per setter call and aborts (none_dealloc)."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(REGRESSION)],
        env=_env(tmp_path),
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0 and b"survived" in proc.stdout, proc.stderr.decode()[-2000:]


# -- issue 17: saving what cannot be saved, undoing a param the file never stored ------------


def test_a_save_that_fails_says_why_and_keeps_the_document_unsaved(make_window, reg, tmp_path):
    target = tmp_path / "mine.json"
    txt2img(reg).save(target)
    before = target.read_bytes()
    w = make_window(registry=reg)
    assert w.open_path(target)
    # A value no file can hold (the Python API and node packs do not check what they put).
    w.controller.wf.put_param("sampler", "cfg", float("inf"))
    w.controller.set_param("sampler", "steps", 31)
    assert w.isWindowModified()
    QTest.keyClick(w.view, Qt.Key.Key_S, CTRL)
    shown = w.statusBar().currentMessage()
    assert "cannot be saved" in shown and "mine.json" in shown
    assert '(sampler): "params.cfg" is inf, which is not a JSON number' in shown
    assert w.isWindowModified() and w.windowTitle() == "mine.json[*] — Studio"
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["mine.json"]
    # Fixed, the same shortcut saves.
    w.controller.set_param("sampler", "cfg", 6.5)
    QTest.keyClick(w.view, Qt.Key.Key_S, CTRL)
    assert not w.isWindowModified()
    assert load_workflow(target, reg).get_node("sampler").params["cfg"] == 6.5


def _without_seed(reg, tmp_path) -> Path:
    """A file whose sampler never stored its seed (the type's default applies)."""
    wf = txt2img(reg)
    del wf.get_node("sampler").params["seed"]
    wf.get_node("sampler").extra["seed_control"] = {"seed": "increment"}
    path = tmp_path / "no-seed.json"
    wf.save(path)
    return path


def _seed_problems(w) -> list[str]:
    w.controller.validate_now()
    return [str(p) for p in w.controller.problems if "seed" in str(p)]


def test_undo_of_a_seed_the_file_never_stored_gives_the_file_back(make_window, reg, tmp_path):
    path = _without_seed(reg, tmp_path)
    original = path.read_text("utf-8")
    w = make_window(registry=reg)
    assert w.open_path(path)
    wf = w.controller.wf
    # The seed control moves the seed on after a queued run; undo goes back.
    assert w.controller.advance_seeds() == 1
    assert wf.get_node("sampler").params["seed"] == 1  # the default 0, incremented
    w.undo_action.trigger()
    assert "seed" not in wf.get_node("sampler").params
    assert _seed_problems(w) == []  # before: "param 'seed' has no value"
    assert dumps_workflow(wf) == original and not w.isWindowModified()
    # The inspector's dice, undo, redo, undo.
    w.scene.select_nodes(["sampler"])
    QTest.mouseClick(w.inspector.editors["seed"].dice, L)
    rolled = wf.get_node("sampler").params["seed"]
    w.undo_action.trigger()
    assert "seed" not in wf.get_node("sampler").params and _seed_problems(w) == []
    assert w.inspector.editors["seed"].widget.value() == 0  # the default shows again
    w.redo_action.trigger()
    assert wf.get_node("sampler").params["seed"] == rolled
    w.undo_action.trigger()
    assert dumps_workflow(wf) == original and not w.isWindowModified()


def test_opening_a_file_with_a_number_past_the_digit_limit_says_why(make_window, reg, tmp_path):
    path = tmp_path / "huge.json"
    txt2img(reg).save(path)
    path.write_text(
        path.read_text("utf-8").replace('"seed": 1234', '"seed": ' + "9" * 5000), "utf-8"
    )
    w = make_window(txt2img(reg))
    assert not w.open_path(path)  # before: a ValueError traceback from the slot
    shown = w.statusBar().currentMessage()
    assert str(path) in shown and 'node 5 (sampler): "params.seed"' in shown
    assert "(5000 digits), too large" in shown
    assert w.controller.wf.has_node("sampler") and w.path is None  # the old document stays
