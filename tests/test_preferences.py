"""Edit > Preferences, the first start, the About box, the log file and where user files
live (platformdirs, overridden by the environment variables the tests use)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import pytest

from studio import preferences as prefs
from studio.settings import Settings, config_dir, data_dir

pytest.importorskip("pytestqt")


def _models_folder(root: Path, *, a1111: bool = False) -> Path:
    sub = "Stable-diffusion" if a1111 else "checkpoints"
    (root / sub).mkdir(parents=True)
    (root / sub / "dream.safetensors").write_bytes(b"x" * 16)
    (root / ("Lora" if a1111 else "loras")).mkdir()
    return root


def _open_dialog(window):
    from studio.app.preferences_dialog import open_preferences

    window.preferences_action.trigger()
    dialog = window._preferences_dialog
    assert dialog.isVisible()
    return dialog, open_preferences


def test_preferences_dialog_lists_sections_and_current_values(make_window, tmp_path):
    s = Settings(output_dir=str(tmp_path / "out"), device="cpu")
    w = make_window(studio_settings=s)
    dialog, _ = _open_dialog(w)
    assert dialog.section_names()[:3] == ["Model folders", "Output", "Device and memory"]
    values = dialog.values()
    assert values["output_dir"] == str(tmp_path / "out")
    assert values["device"] == "cpu"
    assert values["ram_budget_bytes"] == s.ram_budget_bytes  # shown in GB, read back exactly


def test_extra_model_folder_applies_without_restart(make_window, tmp_path):
    s = Settings(models_root=str(tmp_path / "own"))
    (tmp_path / "own").mkdir()
    comfy = _models_folder(tmp_path / "ComfyUI" / "models")
    w = make_window(studio_settings=s)
    assert "dream.safetensors" not in w.controller.model_files.list("checkpoints")
    dialog, _ = _open_dialog(w)
    dialog.editors["extra_model_roots"].add_folder(str(comfy))
    found = dialog.editors["extra_model_roots"].found.text()
    assert "checkpoints: 1" in found and "loras: 0" in found
    assert dialog.apply()
    # The same settings object: the window's model lists see the folder at once.
    assert w.controller.settings.extra_model_roots == [str(comfy)]
    assert "dream.safetensors" in w.controller.model_files.list("checkpoints")
    saved = json.loads((config_dir() / "settings.json").read_text())
    assert saved["extra_model_roots"] == [str(comfy)]
    (config_dir() / "settings.json").unlink()


def test_a1111_subfolder_names_are_shown(make_window, tmp_path):
    a1111 = _models_folder(tmp_path / "webui" / "models", a1111=True)
    w = make_window(studio_settings=Settings())
    dialog, _ = _open_dialog(w)
    dialog.set_value("models_root", str(a1111))
    text = dialog.editors["models_root"].found.text()
    assert "checkpoints (Stable-diffusion): 1" in text and "loras (Lora): 0" in text


def test_bad_values_are_refused_and_named(make_window, tmp_path):
    s = Settings()
    before = dict(s.__dict__)
    w = make_window(studio_settings=s)
    dialog, _ = _open_dialog(w)
    missing = tmp_path / "no-such-folder"
    dialog.set_value("models_root", str(missing))
    dialog.set_value("ram_budget_bytes", prefs.total_ram() + 64 * 1024**3)
    assert not dialog.apply()
    shown = dialog.visible_problems()
    assert str(missing) in shown["models_root"] and "does not exist" in shown["models_root"]
    assert "larger than this machine's memory" in shown["ram_budget_bytes"]
    assert dialog.tabs.tabText(dialog.tabs.currentIndex()) == "Model folders"
    assert s.__dict__ == before  # nothing applied
    dialog.set_value("models_root", "")
    dialog.set_value("ram_budget_bytes", 2 * 1024**3)
    assert dialog.apply()
    assert dialog.visible_problems() == {}
    assert s.ram_budget_bytes == 2 * 1024**3
    (config_dir() / "settings.json").unlink()


def test_budgets_reach_a_running_engine(make_window):
    from studio.app.preferences_dialog import PreferencesDialog

    class Engine:
        class cache:
            max_bytes = 1

        class models:
            ram_budget = 1
            vram_budget = 1

    s = Settings()
    dialog = PreferencesDialog(s, engine_getter=lambda: Engine, path=config_dir() / "p.json")
    dialog.set_value("cache_bytes", 1024**3)
    dialog.set_value("ram_budget_bytes", 3 * 1024**3)
    assert dialog.apply()
    assert Engine.cache.max_bytes == 1024**3
    assert Engine.models.ram_budget == 3 * 1024**3
    dialog.deleteLater()


def test_a_setting_without_a_row_still_appears(make_window, monkeypatch):
    # A feature that adds a Settings field gets an editor even before it declares a row;
    # declaring one (a few lines) gives it a label, a section and a check.
    monkeypatch.setattr(
        prefs, "PREFERENCES", [p for p in prefs.PREFERENCES if p.key != "input_dir"]
    )
    row = {p.key: p for p in prefs.rows()}["input_dir"]
    assert (row.section, row.kind) == ("Other", "text")
    prefs.add_preference(prefs.Pref("input_dir", "Pasted images", "Output", "folder"))
    row = {p.key: p for p in prefs.rows()}["input_dir"]
    assert (row.label, row.section, row.kind) == ("Pasted images", "Output", "folder")


def test_fields_of_later_features_get_their_rows(qtbot, tmp_path):
    # The provenance fields (another branch adds them to Settings) have declared rows; a
    # field nobody declared gets an editor from its type.
    from dataclasses import dataclass

    from studio.app.preferences_dialog import PreferencesDialog

    @dataclass
    class Later(Settings):
        image_metadata: str = "everything"
        watermark: bool = True
        signing_key: str = ""
        tiles_per_batch: int = 4

    s = Later()
    dialog = PreferencesDialog(s, path=tmp_path / "settings.json")
    qtbot.addWidget(dialog)
    assert "Provenance" in dialog.section_names() and "Other" in dialog.section_names()
    dialog.set_value("watermark", False)
    dialog.set_value("image_metadata", "manifest")
    dialog.set_value("tiles_per_batch", 9)
    dialog.set_value("signing_key", str(tmp_path / "missing.pem"))
    assert not dialog.apply()
    assert "missing.pem" in dialog.visible_problems()["signing_key"]
    dialog.set_value("signing_key", "")
    assert dialog.apply()
    assert (s.watermark, s.image_metadata, s.tiles_per_batch) == (False, "manifest", 9)
    saved = json.loads((tmp_path / "settings.json").read_text())
    assert saved["watermark"] is False and saved["tiles_per_batch"] == 9


def test_first_start_prepares_models_folder_and_offers_other_tools(make_window, tmp_path):
    from studio.app.first_start import welcome
    from studio.paths import README_NAME

    home = tmp_path / "home"
    comfy = _models_folder(home / "ComfyUI" / "models")
    _models_folder(home / "stable-diffusion-webui" / "models", a1111=True)
    s = Settings(models_root=str(tmp_path / "fresh-models"))
    w = make_window(studio_settings=s)
    asked = []
    added = welcome(w, ask=lambda text: asked.append(text) or True, home=home)
    assert str(comfy) in asked[0] and "stable-diffusion-webui" in asked[0]
    assert [p.name for p in added] == ["models", "models"]
    assert s.extra_model_roots == [str(p) for p in added]
    root = tmp_path / "fresh-models"
    for sub in ("checkpoints", "loras", "controlnet", "vae", "upscale_models"):
        assert (root / sub).is_dir()
    readme = (root / README_NAME).read_text()
    assert "checkpoints/" in readme and "Stable-diffusion" in readme
    assert (config_dir() / "settings.json").is_file()  # the next start is not a first start
    (config_dir() / "settings.json").unlink()

    # Declining adds nothing; a models folder that has files is never touched.
    s2 = Settings(models_root=str(root))
    w2 = make_window(studio_settings=s2)
    (root / README_NAME).write_text("mine")
    assert welcome(w2, ask=lambda text: False, home=home) == []
    assert s2.extra_model_roots == []
    assert (root / README_NAME).read_text() == "mine"
    (config_dir() / "settings.json").unlink()


def test_help_menu_about_and_log_folder(make_window, monkeypatch):
    from PySide6.QtGui import QDesktopServices

    from studio.about import version
    from studio.app import app_menus
    from studio.paths import log_dir

    opened = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url) or True)
    w = make_window()
    w.log_folder_action.trigger()
    assert opened and Path(opened[0].toLocalFile()) == log_dir()
    text = app_menus.about_text("auto")
    assert f"Studio {version()}" in text
    assert "Torch" in text and "Device" in text and "never checked" in text
    box = app_menus.show_about(w)
    assert version() in box.text()
    box.close()


def test_user_folders_follow_the_environment(monkeypatch, tmp_path):
    from studio import paths

    # The test environment's overrides (tests/conftest.py) are honoured everywhere.
    assert config_dir() == Path(os.environ["STUDIO_CONFIG_DIR"])
    assert data_dir() == Path(os.environ["STUDIO_DATA_DIR"])
    assert paths.log_dir().is_relative_to(data_dir())
    assert Settings().output_path.is_relative_to(data_dir())
    assert Settings().models_root_path == data_dir() / "models"
    assert paths.keys_dir().is_relative_to(config_dir())
    monkeypatch.setenv("STUDIO_LOG_DIR", str(tmp_path / "logs"))
    assert paths.log_dir() == tmp_path / "logs"
    # Without overrides: platformdirs' places (XDG on Linux), outputs in Pictures.
    for var in ("STUDIO_CONFIG_DIR", "STUDIO_DATA_DIR", "STUDIO_LOG_DIR"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    if sys.platform.startswith("linux"):
        assert config_dir() == tmp_path / "xdg-config" / "Studio"
        assert data_dir() == tmp_path / "xdg-data" / "Studio"
        assert paths.log_dir() == tmp_path / "xdg-state" / "Studio" / "log"
        assert paths.default_output_dir().name == "Studio"


def test_log_file_rotates_and_records_errors(tmp_path, monkeypatch):
    import studio.logs as logs

    monkeypatch.setattr(logs, "_handler", None)
    monkeypatch.setattr(logs, "MAX_BYTES", 2000)
    root = logging.getLogger()
    before = list(root.handlers)
    path = logs.setup_logging(tmp_path / "logs" / "studio.log")
    try:
        text = path.read_text()
        assert "Studio" in text and "starting" in text and "Logs:" in text
        for i in range(60):
            logging.getLogger("studio").error("node %d failed: out of memory", i)
        assert (tmp_path / "logs" / "studio.log.1").is_file()
        assert "node 59 failed" in path.read_text()
    finally:
        for h in root.handlers[:]:
            if h not in before:
                root.removeHandler(h)
                h.close()
        import sys
        import threading

        sys.excepthook = sys.__excepthook__
        threading.excepthook = threading.__excepthook__


def test_open_with_studio_on_a_plain_png_starts_img2img(make_window, tmp_path):
    from PIL import Image

    from studio.app.main import open_file
    from studio.library import installed_registry

    png = tmp_path / "holiday.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(png)
    w = make_window(registry=installed_registry())
    assert open_file(w, png)
    loads = [n for n in w.controller.wf.nodes if n.type == "load_image"]
    assert [n.params["image"] for n in loads] == [str(png.resolve())]
    assert any(n.type == "vae_encode" for n in w.controller.wf.nodes)  # img2img, on it
