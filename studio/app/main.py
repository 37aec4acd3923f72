"""Starting the app: ``run_app`` opens the main window (and can take a screenshot and exit).

Only Qt and the torch-free graph layer are imported here: the window shows first, and
the engine loads later, when a workflow runs.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path

from studio.modelfiles import RESOURCES

DEFAULT_WORKFLOW = RESOURCES / "workflows" / "txt2img.json"
SCREENSHOT_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def run_app(
    workflow_path: str | None = None, *, screenshot: str | None = None, run: bool = False
) -> int:
    """Open the main window with ``workflow_path`` (or the default workflow).

    With ``screenshot``, wait until the window is painted, save it as a PNG and return 0
    (2 when the workflow cannot be opened). With ``run``, queue one run of the workflow
    once the window shows; with both, the screenshot waits for the run to finish (3 when
    the run did not succeed; the screenshot is still saved). A screenshot path that
    cannot be written is refused (2) before the window opens. Returns the app's exit
    code otherwise.
    """
    if screenshot is not None:
        problem = screenshot_problem(screenshot)
        if problem is not None:  # before any window opens: nothing to hang on
            print(f"studio: {problem}", file=sys.stderr)
            return 2

    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from studio.app.theme import apply_theme
    from studio.app.window import APP_NAME, ORG_NAME, MainWindow
    from studio.library import installed_registry
    from studio.logs import install_qt_message_handler, setup_logging
    from studio.settings import config_dir

    first_start = not (config_dir() / "settings.json").exists()
    setup_logging()
    install_qt_message_handler()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(app, QApplication)
    app.setOrganizationName(ORG_NAME)
    app.setApplicationName(APP_NAME)
    apply_theme(app)
    registry = installed_registry()
    window = MainWindow(registry, autosave=screenshot is None)
    if screenshot is not None:
        window.resize(1440, 880)
        window.interactive = False
    if workflow_path:
        if not open_file(window, workflow_path) and screenshot is not None:
            return 2
    elif DEFAULT_WORKFLOW.is_file():
        window.open_path(DEFAULT_WORKFLOW, as_template=True)
    window.show()
    if os.environ.get("STUDIO_REPORT_FIRST_PAINT"):  # benchmarks/bench_bundle.py
        _report_first_paint(app, window, Path(os.environ["STUDIO_REPORT_FIRST_PAINT"]))
    if run:
        QTimer.singleShot(0, window.run_workflow)

    threading.Thread(target=_warm_up, name="studio-warm-up", daemon=True).start()
    if screenshot is None:
        # After the first paint: the libraries a run needs take seconds to import.
        QTimer.singleShot(1000, window.bridge.start)
    if screenshot is not None:
        return _screenshot_and_quit(app, window, Path(screenshot), wait_for_run=run)
    if not workflow_path:
        QTimer.singleShot(300, window.offer_recovery)
    if first_start and screenshot is None:
        from studio.app.first_start import welcome

        QTimer.singleShot(400, lambda: welcome(window))
    return app.exec()


def open_file(window, path: str | Path) -> bool:
    """Open a workflow file or an image that carries one; an image without a workflow (a
    PNG opened with Studio from a file manager) starts the default img2img workflow on it."""
    from studio.app.canvas.view_menus import IMAGE_SUFFIXES, carries_workflow

    p = Path(path)
    img2img = RESOURCES / "workflows" / "img2img.json"
    if (
        p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and img2img.is_file()
        and not carries_workflow(str(p))
    ):
        if not window.open_path(img2img, as_template=True):
            return False
        controller = window.controller
        for node in controller.wf.nodes:
            if node.type == "load_image":
                controller.set_param(node.id, "image", str(p.resolve()))
        return True
    return window.open_path(path)


def _report_first_paint(app, window, out: Path) -> None:
    """Write the time of the canvas's first paint to ``out`` and quit (launch benchmarks
    of a bundle, where no code can be injected)."""
    import time

    from PySide6.QtCore import QEvent, QObject

    class FirstPaint(QObject):
        def eventFilter(self, obj, event):
            if event.type() == QEvent.Type.Paint and obj is window.view.viewport():
                out.write_text(f"{time.time()}\n")
                app.removeEventFilter(self)
                window.recovery.close()
                app.quit()
            return False

    window._first_paint_spy = FirstPaint(window)
    app.installEventFilter(window._first_paint_spy)


def screenshot_problem(path: str | Path) -> str | None:
    """Why a screenshot cannot be written to ``path``, or None (its folder is created)."""
    from studio.errors import StudioError
    from studio.fsutil import writable_folder

    p = Path(path)
    if p.is_dir():
        return f"the screenshot path is a folder, not a file: {p}"
    if p.suffix.lower() not in SCREENSHOT_SUFFIXES:
        kinds = ", ".join(SCREENSHOT_SUFFIXES)
        return f"the screenshot must be a {kinds} file: {p}"
    try:
        writable_folder(p.parent, what="the screenshot's folder")
    except StudioError as exc:
        return str(exc)
    return None


def _warm_up() -> None:
    """Import the validator's dependencies off the GUI thread, before the first check needs them."""
    from studio.app.runner import ENGINE_IMPORT_LOCK

    with ENGINE_IMPORT_LOCK, contextlib.suppress(Exception):
        # The check reports its own errors when it runs.
        import studio.engine.executor
        import studio.engine.queue  # noqa: F401


def _screenshot_and_quit(app, window, path: Path, *, wait_for_run: bool = False) -> int:
    from PySide6.QtCore import QTimer

    result = {"code": 1}
    run_ok = {"ok": True}

    def grab() -> None:
        try:
            window.show_whole_workflow()
            window.controller.validate_now()
            app.processEvents()
            window.view.viewport().repaint()
            result["code"] = 0 if window.grab().save(str(path)) else 1
            if result["code"]:
                print(f"studio: could not write the screenshot {path}", file=sys.stderr)
            elif not run_ok["ok"]:
                result["code"] = 3
        finally:  # whatever happened, the app ends: a screenshot run never hangs
            window.recovery.close()
            window.shutdown_runs()
            window.hide()
            app.quit()

    def run_finished(job) -> None:
        from studio.engine.queue import JobState

        if window.bridge.busy():
            return
        if job.state is not JobState.DONE:
            run_ok["ok"] = False
            errors = job.result.errors if job.result is not None else {}
            why = "; ".join(errors.values()) or job.message or ""
            print(f"studio: run {job.id} {job.state}: {why}".rstrip(": "), file=sys.stderr)
        QTimer.singleShot(150, grab)

    if wait_for_run:
        window.runs.finished.connect(run_finished)
    else:
        QTimer.singleShot(150, grab)
    app.exec()
    return result["code"]
