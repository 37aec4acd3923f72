"""Running workflows in the app: node states, previews, the cache marks, seeds, stop,
errors, the queue, and ``studio open --run --screenshot`` (pytest-qt, offscreen)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("PySide6")

from gui_support import GUI_SPECS
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest

from studio.app.canvas.node_item import RunState
from studio.engine.queue import JobState
from studio.errors import NodeError
from studio.graph.pngmeta import WORKFLOW_KEY, read_png_text
from studio.graph.registry import Registry
from studio.graph.seeds import SeedControl
from studio.graph.spec import InputSpec, NodeSpec, OutputSpec
from studio.graph.types import ValueType as T
from studio.graph.workflow import Workflow
from studio.library import installed_registry

CTRL = Qt.KeyboardModifier.ControlModifier
ALT = Qt.KeyboardModifier.AltModifier
RUN_TIMEOUT = 120_000


# -- a tiny real model, for runs through the real node library -------------------------------


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    fx = pytest.importorskip("diffusion_fixtures")
    root = tmp_path_factory.mktemp("gui-models")
    fx.save_folder(fx.sd1_pipeline(fx.tiny_sd1()), root / "checkpoints" / "tiny-sd1")
    return root


@pytest.fixture
def studio_settings(tiny_models, tmp_path, user_settings_file):
    """The tiny models' settings, also as the user's settings file (what `studio open` reads)."""
    from studio.settings import Settings

    return user_settings_file(
        Settings(
            models_root=str(tiny_models),
            output_dir=str(tmp_path / "out"),
            input_dir=str(tmp_path / "in"),
            device="cpu",
        )
    )


@pytest.fixture
def run_window(make_window, studio_settings):
    """A main window over the real node library, with runs on the tiny model."""
    from studio.library import installed_registry

    made = []

    def make(wf: Workflow | None = None, **kw):
        reg = kw.pop("registry", None) or installed_registry()
        w = make_window(wf, registry=reg, studio_settings=studio_settings, **kw)
        made.append(w)
        return w

    yield make
    for w in made:
        w.shutdown_runs()


def wait_runs(qtbot, w, n: int = 1) -> list:
    """The first ``n`` runs, once the window has shown their end (not just the worker)."""
    qtbot.waitUntil(lambda: len(w.runs.ended) >= n, timeout=RUN_TIMEOUT)
    return sorted(w.runs.ended, key=lambda j: j.id)


def states(w, ids: dict[str, str]) -> dict[str, RunState]:
    return {role: w.scene.nodes[nid].run_state for role, nid in ids.items()}


def txt2img(output: str = "preview_image", **kw):
    import diffusion_fixtures as fx

    wf, ids = fx.txt2img("tiny-sd1", steps=2, **kw, output=output)
    for i, nid in enumerate(ids.values()):  # a readable layout, left to right
        wf.set_node_layout(nid, pos=(i * 260.0, 0.0))
    return wf, ids


# -- running the real txt2img graph ----------------------------------------------------------


def test_run_then_change_the_seed_reruns_only_the_sampler_and_what_follows(run_window, qtbot):
    wf, ids = txt2img()
    w = run_window(wf)
    previews = []
    w.runs.preview.connect(lambda image, title: previews.append(title))
    QTest.keyClick(w.view, Qt.Key.Key_Return, CTRL)
    (first,) = wait_runs(qtbot, w, 1)
    assert first.state == JobState.DONE, first.message or first.result.errors
    assert set(states(w, ids).values()) == {RunState.DONE}
    assert w.scene.nodes[ids["out"]].image is not None  # the image shows on the preview node
    assert previews and w.scene.nodes[ids["sampler"]].image is not None  # live preview
    assert "first run" in w.scene.nodes[ids["sampler"]].toolTip()
    assert w.viewer.view.pixmap is not None and w.viewer.output.node_id == ids["out"]
    assert len(w.history.outputs) == 1
    assert w.scene.nodes[ids["decode"]].run_message.endswith(("ms", " s"))  # its time

    w.controller.set_param(ids["sampler"], "seed", 5)
    QTest.keyClick(w.view, Qt.Key.Key_Return, CTRL)
    second = wait_runs(qtbot, w, 2)[1]
    assert second.state == JobState.DONE
    assert states(w, ids) == {
        "ckpt": RunState.CACHED,
        "pos": RunState.CACHED,
        "neg": RunState.CACHED,
        "latent": RunState.CACHED,
        "sampler": RunState.DONE,
        "decode": RunState.DONE,
        "out": RunState.DONE,
    }
    assert "param 'seed' changed from 0 to 5" in w.scene.nodes[ids["sampler"]].toolTip()
    assert w.scene.nodes[ids["ckpt"]].run_message == "cached"
    assert len(w.history.outputs) == 2
    a, b = (o.pil for o in w.history.outputs)
    assert a.size == b.size == (64, 64) and a.tobytes() != b.tobytes()
    # The history restores the workflow that made the first image, in one undo step.
    w.history.restore_requested.emit(w.history.outputs[1])
    assert w.controller.wf.get_node(ids["sampler"]).params["seed"] == 0
    w.undo_action.trigger()
    assert w.controller.wf.get_node(ids["sampler"]).params["seed"] == 5


def test_seed_control_advances_after_each_queued_run_and_the_image_keeps_the_used_seed(
    run_window, qtbot, studio_settings
):
    wf, ids = txt2img(output="save_image", seed=7)
    w = run_window(wf)
    w.scene.select_nodes([ids["sampler"]])
    w.inspector.seed_controls["seed"].setCurrentText("increment")
    assert w.controller.seed_control(ids["sampler"], "seed") == SeedControl.INCREMENT
    w.queue_panel.batch.setValue(2)
    QTest.mouseClick(w.queue_panel.run_button, Qt.MouseButton.LeftButton)
    # Both runs are queued at once; the seed moved on after each.
    assert w.controller.wf.get_node(ids["sampler"]).params["seed"] == 9
    jobs = wait_runs(qtbot, w, 2)
    assert [j.state for j in jobs] == [JobState.DONE, JobState.DONE]
    saved = sorted(Path(studio_settings.output_dir).glob("*.png"))
    assert len(saved) == 2
    used = []
    for path in saved:
        text = read_png_text(path.read_bytes())
        from studio.graph.fileformat import loads_workflow

        embedded = loads_workflow(text[WORKFLOW_KEY], registry=installed_registry())
        used.append(embedded.get_node(ids["sampler"]).params["seed"])
        assert "Seed: " + str(used[-1]) in text["parameters"]
    assert used == [7, 8]
    # The advances are one undo step.
    w.undo_action.trigger()
    assert w.controller.wf.get_node(ids["sampler"]).params["seed"] == 7


def test_new_samplers_made_in_the_app_randomize_files_keep_theirs(run_window, qtbot):
    wf, ids = txt2img()
    w = run_window(wf)
    assert w.controller.seed_control(ids["sampler"], "seed") == SeedControl.FIXED
    new = w.controller.add_node("sampler", (0, 400))
    assert w.controller.seed_control(new, "seed") == SeedControl.RANDOMIZE
    w.controller.set_seed_control(new, "seed", SeedControl.DECREMENT)
    assert w.controller.wf.copy().get_node(new).extra["seed_control"] == {"seed": "decrement"}
    w.undo_action.trigger()
    assert w.controller.seed_control(new, "seed") == SeedControl.RANDOMIZE


# -- stub nodes: a slow one, a failing one ----------------------------------------------------


def _slow(ctx, image, steps):
    for i in range(steps):
        time.sleep(0.02)
        ctx.progress(i + 1, steps)
    return image


def _fail(ctx, image, fail):
    if fail:
        raise NodeError("the brush is dry: nothing to paint with")
    return image


STUB_SPECS = [
    *GUI_SPECS,
    NodeSpec(
        "slow",
        "Slow",
        "image",
        _slow,
        inputs=(
            InputSpec("image", T.IMAGE),
            InputSpec("steps", T.INT, default=10, min=1, max=100000),
        ),
        outputs=(OutputSpec("image", T.IMAGE),),
    ),
    NodeSpec(
        "fail",
        "Fail",
        "image",
        _fail,
        inputs=(InputSpec("image", T.IMAGE), InputSpec("fail", T.BOOLEAN, default=True)),
        outputs=(OutputSpec("image", T.IMAGE),),
    ),
]


def _chain(middle: str, **params) -> tuple[Workflow, dict[str, str]]:
    wf = Workflow(Registry(STUB_SPECS))
    ids = {
        "make": wf.add_node("make_image", pos=(0, 0)).id,
        "mid": wf.add_node(middle, params, pos=(280, 0)).id,
        "show": wf.add_node("show_image", pos=(560, 0)).id,
    }
    wf.connect(ids["make"], "image", ids["mid"], "image")
    wf.connect(ids["mid"], "image", ids["show"], "image")
    return wf, ids


def test_stop_interrupts_a_long_run_and_the_app_goes_on(run_window, qtbot):
    wf, ids = _chain("slow", steps=100000)
    w = run_window(wf, registry=wf.registry)
    QTest.keyClick(w.view, Qt.Key.Key_Return, CTRL)
    qtbot.waitUntil(lambda: (w.scene.nodes[ids["mid"]].progress or 0) > 0, timeout=20_000)
    assert w.scene.nodes[ids["mid"]].run_state == RunState.RUNNING
    assert w.queue_panel.stop_button.isEnabled()
    QTest.keyClick(w.view, Qt.Key.Key_Return, CTRL | ALT)
    (job,) = wait_runs(qtbot, w, 1)
    assert job.state == JobState.INTERRUPTED
    assert w.scene.nodes[ids["mid"]].run_state == RunState.STOPPED
    assert w.scene.nodes[ids["show"]].run_state == RunState.STOPPED  # it never ran
    assert not w.queue_panel.stop_button.isEnabled()
    # Still usable: edit, and run again to the end.
    w.controller.set_param(ids["mid"], "steps", 3)
    w.run_workflow()
    job2 = wait_runs(qtbot, w, 2)[1]
    assert job2.state == JobState.DONE
    assert states(w, ids) == {"make": RunState.CACHED, "mid": RunState.DONE, "show": RunState.DONE}


def test_an_erroring_node_shows_its_message_and_the_app_stays_usable(run_window, qtbot):
    wf, ids = _chain("fail")
    w = run_window(wf, registry=wf.registry)
    w.run_workflow()
    (job,) = wait_runs(qtbot, w, 1)
    assert job.state == JobState.FAILED
    failing = w.scene.nodes[ids["mid"]]
    assert failing.run_state == RunState.ERROR
    assert "the brush is dry" in failing.run_message
    assert "the brush is dry" in failing.toolTip()
    assert w.scene.nodes[ids["show"]].run_state == RunState.SKIPPED
    assert "failed" in w.queue_panel.list.item(0).text()
    assert w.isVisible()
    w.controller.set_param(ids["mid"], "fail", False)
    w.run_workflow()
    assert wait_runs(qtbot, w, 2)[1].state == JobState.DONE
    assert w.scene.nodes[ids["mid"]].run_state == RunState.DONE


def test_the_queue_lists_runs_and_cancels_a_pending_one(run_window, qtbot):
    wf, ids = _chain("slow", steps=100000)
    w = run_window(wf, registry=wf.registry)
    slow = w.scene.nodes[ids["mid"]]

    def sampling(job) -> bool:
        # Stop only once the run is sampling: the engine clears a stop asked for earlier.
        return w.runs.current is job and (slow.progress or 0) > 0

    first, second, third = w.run_workflow(3)
    qtbot.waitUntil(lambda: sampling(first), timeout=20_000)
    assert w.queue_panel.list.count() == 3
    assert "2 waiting" in w.queue_panel.status.text()
    w.queue_panel.cancel_requested.emit(third.id)
    w.stop_run()  # the first stops; the second runs next
    qtbot.waitUntil(lambda: sampling(second), timeout=20_000)
    w.stop_run()
    jobs = wait_runs(qtbot, w, 3)
    assert [j.state for j in jobs] == [
        JobState.INTERRUPTED,
        JobState.INTERRUPTED,
        JobState.CANCELLED,
    ]
    assert all(item.text() for item in map(w.queue_panel.list.item, range(3)))


def test_an_invalid_workflow_says_why_on_the_node(run_window, qtbot):
    wf = Workflow(Registry(STUB_SPECS))
    show = wf.add_node("show_image", pos=(0, 0)).id  # its image input is not linked
    w = run_window(wf, registry=wf.registry)
    w.run_workflow()
    (job,) = wait_runs(qtbot, w, 1)
    assert job.state == JobState.INVALID
    assert w.scene.nodes[show].run_state == RunState.ERROR and w.scene.nodes[show].run_message


# -- the command line: studio open WORKFLOW --run --screenshot PNG ----------------------------


def test_open_run_screenshot_waits_for_the_run(studio_settings, isolated_settings, tmp_path, qtbot):
    from PySide6.QtGui import QImage

    from studio.app.main import run_app

    wf, _ids = txt2img()
    path = tmp_path / "txt2img.json"
    wf.save(path)
    shot = tmp_path / "shot.png"
    assert run_app(str(path), screenshot=str(shot), run=True) == 0
    assert shot.stat().st_size > 10_000
    assert QImage(str(shot)).width() == 1440
