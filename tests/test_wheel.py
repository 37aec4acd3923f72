"""The wheel carries everything Studio needs: built from a copy of the checkout, installed
without ``-e`` into a fresh virtual environment outside it, it runs the default txt2img
workflow and validates every default workflow, offline.

The fresh environment reuses the test interpreter's installed dependencies (a ``.pth``
line naming its site-packages, whose own ``.pth`` files, the editable install among
them, are not run), so nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "studio", "nodes", "resources")
SKIP = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "build", "dist", "*.egg-info", ".*_cache", ".hypothesis"
)


def _offline_env(home: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_"))
    }
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PIP_NO_INDEX="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        STUDIO_CONFIG_DIR=str(home / "config"),
        STUDIO_DATA_DIR=str(home / "data"),
        OMP_NUM_THREADS="1",
    )
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv python, wheel path, env, cwd): the wheel installed in a fresh venv."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in BUILD_INPUTS:  # what setup.py packages (not training/, tests/, ...)
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=SKIP)
        else:
            shutil.copy2(ROOT / name, src / name)
    env = _offline_env(tmp / "home")
    dist = tmp / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(src),
        ],
        check=True,
        env=env,
        cwd=tmp,
        capture_output=True,
    )
    (wheel,) = dist.glob("studio-*.whl")
    venv = tmp / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    deps = sysconfig.get_paths()["purelib"]
    Path(purelib, "_studio_test_deps.pth").write_text(deps + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "--no-deps",
            "-q",
            str(wheel),
        ],
        check=True,
        env=env,
        cwd=tmp,
        capture_output=True,
    )
    shutil.rmtree(src)  # nothing may come from the copy of the checkout
    work = tmp / "elsewhere"
    work.mkdir()
    return py, wheel, env, work


def test_wheel_carries_every_resource_file(installed):
    _py, wheel, _env, _work = installed
    want = {
        p.relative_to(ROOT / "resources").as_posix()
        for p in (ROOT / "resources").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    with zipfile.ZipFile(wheel) as z:
        have = {
            n.removeprefix("studio_resources/")
            for n in z.namelist()
            if n.startswith("studio_resources/")
        }
    assert want - have == set(), "files under resources/ missing from the wheel"


def test_installed_wheel_runs_and_validates_offline(installed):
    py, _wheel, env, work = installed
    venv = py.parent.parent
    where = subprocess.run(
        [
            str(py),
            "-c",
            "import json, studio, studio.modelfiles as m; print(json.dumps("
            "[studio.__file__, str(m.RESOURCES), sorted(p.name for p in "
            "(m.RESOURCES / 'workflows').glob('*.json'))]))",
        ],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
    )
    studio_file, resources, names = json.loads(where.stdout)
    assert Path(studio_file).is_relative_to(venv), studio_file
    assert Path(resources).is_relative_to(venv), resources
    checkout_names = sorted(p.name for p in (ROOT / "resources" / "workflows").glob("*.json"))
    assert names == checkout_names

    out = work / "out"
    run = subprocess.run(
        [
            str(venv / "bin" / "studio"),
            "run",
            f"{resources}/workflows/txt2img.json",
            "--set",
            "Sampler.steps=4",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    from PIL import Image

    (png,) = out.glob("*.png")
    with Image.open(png) as im:
        assert im.size == (64, 64)
        assert len(set(im.convert("RGB").getdata())) > 1  # a picture, not a blank

    # Every default workflow validates (one process; the same code path as the command).
    check = (
        "import sys, studio.cli as c, studio.modelfiles as m\n"
        "bad = [p.name for p in sorted((m.RESOURCES / 'workflows').glob('*.json'))"
        " if c.main(['validate', str(p)]) != 0]\n"
        "sys.exit(f'invalid: {bad}' if bad else 0)\n"
    )
    val = subprocess.run(
        [str(py), "-c", check], capture_output=True, text=True, env=env, cwd=work, timeout=300
    )
    assert val.returncode == 0, val.stdout + val.stderr

    version = subprocess.run(
        [str(venv / "bin" / "studio"), "--version"],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
    )
    assert version.returncode == 0, version.stderr
    import tomllib

    want = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert version.stdout.strip() == f"studio {want}"
