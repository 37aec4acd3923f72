"""Test setup: offline, headless, and isolated from the user's own settings and files."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

# Before anything imports huggingface_hub, Qt or Studio's settings.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
_home = Path(tempfile.mkdtemp(prefix="studio-tests-"))
atexit.register(shutil.rmtree, _home, ignore_errors=True)
os.environ["STUDIO_CONFIG_DIR"] = str(_home / "config")
os.environ["STUDIO_DATA_DIR"] = str(_home / "data")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402


@pytest.fixture
def user_settings_file():
    """Write Studio settings as the user's settings file (what the app and the CLI read),
    and remove it afterwards."""
    from studio.settings import config_dir

    path = config_dir() / "settings.json"

    def write(settings):
        settings.save(path)
        return settings

    yield write
    path.unlink(missing_ok=True)


@pytest.fixture
def stub_registry():
    from stubs import CALLS, stub_registry

    CALLS.clear()
    return stub_registry()


@pytest.fixture
def calls():
    from stubs import CALLS

    return CALLS


# Qt fixtures for the GUI tests (make_window, isolated_settings); PySide6 loads only when used.
pytest_plugins = ["gui_support"]
