"""The window's application entries: Edit > Preferences, and the Help menu (About Studio,
Open Log Folder, Open Models Folder). On macOS Qt moves Preferences and About into the
application menu (their menu roles). Nothing here uses the network: no update check.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import QUrl
from PySide6.QtGui import QAction, QDesktopServices, QKeySequence
from PySide6.QtWidgets import QMenu, QMessageBox


def _menu(window, title: str) -> QMenu | None:
    for action in window.menuBar().actions():
        menu = action.menu()
        if menu is not None and action.text().replace("&", "") == title:
            return menu
    return None


def install_app_menus(window) -> None:
    from studio.app.preferences_dialog import open_preferences

    edit = _menu(window, "Edit") or window.menuBar().addMenu("&Edit")
    edit.addSeparator()
    prefs = QAction("Pr&eferences…", window)
    prefs.setObjectName("preferences")
    prefs.setMenuRole(QAction.MenuRole.PreferencesRole)
    prefs.setShortcut(QKeySequence(QKeySequence.StandardKey.Preferences))
    if prefs.shortcut().isEmpty():  # Linux and Windows have no standard key for it
        prefs.setShortcut(QKeySequence("Ctrl+,"))
    prefs.triggered.connect(lambda _checked=False: open_preferences(window))
    edit.addAction(prefs)
    window.preferences_action = prefs

    help_menu = _menu(window, "Help") or window.menuBar().addMenu("&Help")
    about = QAction("&About Studio", window)
    about.setMenuRole(QAction.MenuRole.AboutRole)
    about.triggered.connect(lambda _checked=False: show_about(window))
    help_menu.addAction(about)
    logs = QAction("Open &Log Folder", window)
    logs.triggered.connect(lambda _checked=False: open_log_folder())
    help_menu.addAction(logs)
    models = QAction("Open &Models Folder", window)
    models.triggered.connect(
        lambda _checked=False: open_folder(window.controller.settings.models_root_path)
    )
    help_menu.addAction(models)
    window.about_action, window.log_folder_action = about, logs


def open_folder(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return QDesktopServices.openUrl(QUrl.fromLocalFile(str(path)))


def open_log_folder() -> bool:
    from studio.paths import log_dir

    return open_folder(log_dir())


def about_text(device_setting: str) -> str:
    """The About box's text: version, torch build, device, and where the files are."""
    from html import escape

    from studio.about import about_lines, version
    from studio.paths import locations

    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "version"):
        rows = about_lines(device_setting)
    else:  # torch loads in the background after the window opens; never wait for it here
        rows = [
            (k, v if k not in ("Torch", "Device") else "loading…")
            for k, v in _rows_without_torch(version())
        ]
    cells = "".join(
        f"<tr><td><b>{escape(k)}</b>&nbsp;</td><td>{escape(v)}</td></tr>" for k, v in rows
    )
    places = "".join(
        f"<tr><td>{escape(k)}&nbsp;</td><td>{escape(str(v))}</td></tr>" for k, v in locations()
    )
    return (
        f"<h3>Studio {escape(version())}</h3>"
        "<p>Node-graph image workflows with diffusion models.</p>"
        f"<table>{cells}</table><p><b>Files</b></p><table>{places}</table>"
    )


def _rows_without_torch(ver: str) -> list[tuple[str, str]]:
    import platform

    return [
        ("Version", ver),
        ("Torch", ""),
        ("Device", ""),
        ("Python", f"{platform.python_version()} ({sys.platform})"),
        ("Updates", "never checked: Studio does not use the network"),
    ]


def show_about(window) -> QMessageBox:
    box = QMessageBox(window)
    box.setWindowTitle("About Studio")
    box.setTextFormat(box.textFormat().RichText)
    box.setText(about_text(window.controller.settings.device))
    box.setObjectName("about")
    box.setModal(False)
    box.show()
    return box
