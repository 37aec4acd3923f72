"""The first start (no settings file yet): Studio's models folder is made with ComfyUI's
subfolder names and a README inside, and when a ComfyUI or Automatic1111 install is
found in the usual places, Studio offers to use its model folders (nothing is copied)."""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtWidgets import QMessageBox

log = logging.getLogger("studio")


def welcome(window, *, ask=None, home: Path | None = None) -> list[Path]:
    """Prepare the models folder, offer the other tools' folders, save the settings.

    ``ask(text) -> bool`` asks the question (a message box unless given). Returns the
    folders added."""
    from studio.paths import prepare_models_folder
    from studio.preferences import find_other_tools

    settings = window.controller.settings
    root = settings.models_root_path
    try:
        if prepare_models_folder(root):
            log.info("prepared the models folder %s", root)
    except OSError as exc:
        log.warning("cannot prepare the models folder %s: %s", root, exc)

    added: list[Path] = []
    have = {str(Path(p)) for p in settings.extra_model_roots}
    found = [(tool, p) for tool, p in find_other_tools(home) if str(p) not in have]
    if found:
        listing = "\n".join(f"  {tool}: {p}" for tool, p in found)
        text = (
            "Studio found model folders of other tools on this computer:\n\n"
            f"{listing}\n\nUse their models in Studio? Nothing is copied; you can change "
            "this in Edit > Preferences."
        )
        if ask is None:

            def ask(message: str) -> bool:
                answer = QMessageBox.question(window, "Use existing models?", message)
                return answer == QMessageBox.StandardButton.Yes

        if ask(text):
            for _tool, p in found:
                settings.extra_model_roots.append(str(p))
                added.append(p)
    try:
        settings.save()  # from now on it is not the first start
    except OSError as exc:
        log.warning("cannot save the settings: %s", exc)
    if added:
        window.statusBar().showMessage(
            "Using the models in " + ", ".join(str(p) for p in added), 8000
        )
    return added
