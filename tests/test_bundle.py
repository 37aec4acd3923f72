"""The built app bundle runs on its own: started with ``env -i`` (no venv, no PYTHONPATH,
no Python of the user's), it opens the default workflow on studio-tiny, runs it and saves
a screenshot, offscreen.

Marked ``bundle``: it runs only where ``bash packaging/build_app.sh`` built dist/Studio
(or where STUDIO_BUNDLE names a built bundle folder); the build is never part of the suite.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = Path(os.environ.get("STUDIO_BUNDLE") or ROOT / "dist" / "Studio")
EXE = BUNDLE / "studio"

pytestmark = [
    pytest.mark.bundle,
    pytest.mark.skipif(not EXE.is_file(), reason=f"no built bundle at {BUNDLE}"),
]


def _bare_env(tmp_path: Path) -> list[str]:
    return [
        "env",
        "-i",
        "PATH=/usr/bin:/bin",
        f"HOME={tmp_path}",
        "QT_QPA_PLATFORM=offscreen",
        f"STUDIO_CONFIG_DIR={tmp_path / 'config'}",
        f"STUDIO_DATA_DIR={tmp_path / 'data'}",
        "OMP_NUM_THREADS=1",
    ]


def test_bundle_runs_default_workflow_and_screenshots(tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    out = subprocess.run(
        [*_bare_env(tmp_path), str(EXE), "open", "--run", "--screenshot", str(shot)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    with Image.open(shot) as im:
        assert im.size[0] >= 800 and len(set(im.convert("RGB").getdata())) > 100
    # The run's image was saved where the bundle's settings say, by the bundle's engine.
    saved = list((tmp_path / "data" / "output").rglob("*.png"))
    assert saved, "the run saved no image"
    with Image.open(saved[0]) as im:
        assert im.size == (64, 64)
        assert len(set(im.convert("RGB").getdata())) > 1


def test_bundle_version_and_headless_run(tmp_path):
    from studio.about import version

    out = subprocess.run(
        [*_bare_env(tmp_path), str(EXE), "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip() == f"studio {version()}"
    wf = BUNDLE / "_internal" / "studio_resources" / "workflows"
    for path in sorted(wf.glob("*.json")):
        v = subprocess.run(
            [*_bare_env(tmp_path), str(EXE), "validate", str(path)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert v.returncode == 0, f"{path.name}: {v.stdout}{v.stderr}"
