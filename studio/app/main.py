"""Starting the app: ``run_app`` opens the main window (and can take a screenshot and exit).

Only Qt and the torch-free graph layer are imported here: the window shows first, and
the engine loads later, when a workflow runs.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from pathlib import Path

from studio.modelfiles import RESOURCES

DEFAULT_WORKFLOW = RESOURCES / "workflows" / "txt2img.json"


def run_app(
    workflow_path: str | None = None, *, screenshot: str | None = None, run: bool = False
) -> int:
    """Open the main window with ``workflow_path`` (or the default workflow).

    With ``screenshot``, wait until the window is painted, save it as a PNG and return 0
    (2 when the workflow cannot be opened). Returns the app's exit code otherwise.
    """
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from studio.app.theme import apply_theme
    from studio.app.window import APP_NAME, ORG_NAME, MainWindow
    from studio.graph.registry import default_registry

    app = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(app, QApplication)
    app.setOrganizationName(ORG_NAME)
    app.setApplicationName(APP_NAME)
    apply_theme(app)
    registry = default_registry()
    window = MainWindow(registry, autosave=screenshot is None)
    if screenshot is not None:
        window.resize(1440, 880)
        window.interactive = False
    if workflow_path:
        if not window.open_path(workflow_path) and screenshot is not None:
            return 2
    elif DEFAULT_WORKFLOW.is_file():
        window.open_path(DEFAULT_WORKFLOW, as_template=True)
    if run:
        print(
            "studio: running from the app comes in a later version; opening only", file=sys.stderr
        )
    window.show()

    threading.Thread(target=_warm_up, name="studio-warm-up", daemon=True).start()
    if screenshot is not None:
        return _screenshot_and_quit(app, window, Path(screenshot))
    if not workflow_path:
        QTimer.singleShot(300, window.offer_recovery)
    return app.exec()


def _warm_up() -> None:
    """Import the validator's dependencies off the GUI thread, before the first check needs them."""
    with contextlib.suppress(Exception):  # the check reports its own errors when it runs
        import studio.engine.validate  # noqa: F401


def _screenshot_and_quit(app, window, path: Path) -> int:
    from PySide6.QtCore import QTimer

    result = {"code": 1}

    def grab() -> None:
        window.show_whole_workflow()
        window.controller.validate_now()
        app.processEvents()
        window.view.viewport().repaint()
        path.parent.mkdir(parents=True, exist_ok=True)
        result["code"] = 0 if window.grab().save(str(path)) else 1
        if result["code"]:
            print(f"studio: could not write the screenshot {path}", file=sys.stderr)
        window.recovery.close()
        window.hide()
        app.quit()

    QTimer.singleShot(150, grab)
    app.exec()
    return result["code"]
