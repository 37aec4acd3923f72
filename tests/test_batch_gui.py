"""Run > Batch...: the dialog counts the jobs and names mistakes; a batch runs on a local
worker with its line in the queue panel, and its images open in a grid that picks into
the history."""

from __future__ import annotations

from pathlib import Path

from test_batch import REG, nap_workflow

from studio.batch import Batch
from studio.settings import Settings


def test_dialog_counts_the_jobs_and_names_a_bad_value(qtbot, tmp_path):
    from studio.app.batch_panel import BatchDialog

    wf = nap_workflow()
    nap, paint = wf.find_node("Nap").id, wf.find_node("Paint").id
    dlg = BatchDialog(wf, [nap, paint], tmp_path)
    qtbot.addWidget(dlg)
    dlg.fields[f"{nap}.value"].setText("1:3:1")
    dlg.fields[f"{paint}.green"].setText("0,100")
    assert dlg.summary.text() == "6 images" and dlg.ok.isEnabled()
    dlg.prompts.setPlainText("")  # Nap has no prompt: nothing changes
    dlg.fields[f"{paint}.green"].setText("0,x")
    assert "expects int, got 'x'" in dlg.summary.text()
    assert not dlg.ok.isEnabled()


def test_a_batch_runs_shows_progress_and_its_grid_picks_into_history(make_window, qtbot, tmp_path):
    from studio.app.batch_panel import start_batch

    wf = nap_workflow()
    window = make_window(wf)
    run_menu = next(a.menu() for a in window.menuBar().actions() if a.text() == "&Run")
    assert "&Batch…" in [a.text() for a in run_menu.actions()]

    batch = Batch(
        wf, sweeps={"Nap.value": "1:3:1", "Paint.green": "0,200"}, registry=REG,
        settings=Settings(),
    )  # fmt: skip
    run = start_batch(window, batch, Path(tmp_path / "b"), 1)
    grid = run.grid
    assert (grid.table.rowCount(), grid.table.columnCount()) == (3, 2)  # at once, empty
    qtbot.waitUntil(lambda: not grid.stop_button.isEnabled(), timeout=90_000)
    assert grid.status.text().startswith("6 of 6 images")
    line = window.queue_panel.list.item(0).text()
    assert "6/6 images" in line and line.startswith("✓")
    before = len(window.history.outputs)
    grid.table.cellDoubleClicked.emit(2, 1)
    assert len(window.history.outputs) == before + 1
    picked = window.history.outputs[-1]
    assert picked.pil.getpixel((0, 0)) == (3, 200, 0)  # row Nap.value=3, column green=200


def test_stop_in_the_grid_ends_the_batch_and_keeps_its_images(make_window, qtbot, tmp_path):
    from studio.app.batch_panel import start_batch

    wf = nap_workflow(ms=300)
    window = make_window(wf)
    batch = Batch(wf, sweeps={"Nap.value": "1:8:1"}, registry=REG, settings=Settings())
    run = start_batch(window, batch, Path(tmp_path / "b"), 1)
    qtbot.waitUntil(lambda: bool(run.grid.files), timeout=90_000)
    run.grid.stop_button.click()
    qtbot.waitUntil(lambda: not run.grid.stop_button.isEnabled(), timeout=30_000)
    assert window.queue_panel.list.item(0).text().startswith("■")
    made = sorted((tmp_path / "b").glob("*.png"))
    assert 1 <= len(made) < 8
    assert len(run.grid.files) == len(made)
