"""Save Image against unlucky files: a process killed mid-save, a disk that fails, a
second writer, no hard links."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.fsutil import STALE_TEMP_SECONDS, TEMP_SUFFIX, remove_stale_temps, write_numbered
from studio.graph.workflow import Workflow

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def engine(tmp_path):
    from studio.engine import Engine
    from studio.settings import Settings, set_active_settings

    settings = Settings(
        models_root=str(tmp_path / "models"),
        output_dir=str(tmp_path / "out"),
        input_dir=str(tmp_path / "in"),
    )
    settings.input_path.mkdir()
    set_active_settings(settings)
    yield Engine(settings=settings)
    set_active_settings(Settings())


def _picture(path: Path, size=(24, 16)) -> Path:
    rgb = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    rgb[..., 1] = 200
    Image.fromarray(rgb, "RGB").save(path)
    return path


# -- item 8: Save Image never leaves an empty or temporary file --------------------------------


def _save_workflow(engine, picture: Path) -> tuple[Workflow, str]:
    wf = Workflow()
    load = wf.add_node("load_image", {"image": str(picture)}).id
    save = wf.add_node("save_image", {"filename_prefix": "Studio"}).id
    wf.connect(load, "image", save, "images")
    return wf, save


def _everything_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_crash_between_writing_and_naming_leaves_no_png(engine, tmp_path, monkeypatch):
    wf, save = _save_workflow(engine, _picture(tmp_path / "pic.png"))

    def disk_fails(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", disk_fails)
    result = engine.run(wf)
    assert save in result.errors
    assert _everything_in(engine.settings.output_path) == []
    monkeypatch.undo()
    assert engine.run(wf).ok
    assert _everything_in(engine.settings.output_path) == ["Studio_00001.png"]


def test_save_image_takes_the_next_name_when_another_writer_got_there_first(
    engine, tmp_path, monkeypatch
):
    wf, _ = _save_workflow(engine, _picture(tmp_path / "pic.png"))
    out = engine.settings.output_path
    real_link = os.link

    def racing_link(src, dst):
        if Path(dst).name == "Studio_00001.png" and not Path(dst).exists():
            Path(dst).write_bytes(b"the other writer's file")
        return real_link(src, dst)

    monkeypatch.setattr(os, "link", racing_link)
    assert engine.run(wf).ok
    assert _everything_in(out) == ["Studio_00001.png", "Studio_00002.png"]
    assert (out / "Studio_00001.png").read_bytes() == b"the other writer's file"
    with Image.open(out / "Studio_00002.png") as im:
        assert im.size == (24, 16)


def test_save_image_works_where_hard_links_do_not(engine, tmp_path, monkeypatch):
    wf, _ = _save_workflow(engine, _picture(tmp_path / "pic.png"))

    def no_links(src, dst):
        # ... and another writer takes the name meanwhile.
        if not Path(dst).exists():
            Path(dst).write_bytes(b"the other writer's file")
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    out = engine.settings.output_path
    assert engine.run(wf).ok
    assert _everything_in(out) == ["Studio_00001.png", "Studio_00002.png"]
    assert (out / "Studio_00001.png").read_bytes() == b"the other writer's file"
    with Image.open(out / "Studio_00002.png") as im:
        assert im.size == (24, 16)


def _temp(folder: Path, target: str, age: float, random_part: str = "ab3d_f9z") -> Path:
    p = folder / f".{target}.{random_part}{TEMP_SUFFIX}"
    p.write_bytes(b"half a png")
    then = time.time() - age
    os.utime(p, (then, then))
    return p


def test_stale_temp_files_of_a_crash_are_removed_by_the_next_save(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    stale = _temp(folder, "Studio.png", STALE_TEMP_SECONDS + 60)
    legacy = folder / ".Studio_00003.png.k2j4l5m6.tmp"  # as Studio named them before
    legacy.write_bytes(b"")
    os.utime(legacy, (0, 0))
    fresh = _temp(folder, "Studio.png", 1, "q8r7s6t5")  # another process is writing it right now
    other_stem = _temp(folder, "Other.png", STALE_TEMP_SECONDS + 60)
    users = folder / ".Studio.png.notours.tmp.bak"
    users.write_bytes(b"")
    os.utime(users, (0, 0))
    path = write_numbered(folder, "Studio", ".png", b"png bytes")
    assert path.name == "Studio_00001.png" and path.read_bytes() == b"png bytes"
    assert not stale.exists() and not legacy.exists()
    assert fresh.exists() and other_stem.exists() and users.exists()
    assert remove_stale_temps(folder) == [other_stem]


_SAVER = """
import os, sys, time
from pathlib import Path
from types import SimpleNamespace

from PIL import Image

import nodes.image as image_nodes

real_fsync = os.fsync


def slow_fsync(fd):  # a slow disk, so that most kills land inside a write
    time.sleep(0.01)
    real_fsync(fd)


os.fsync = slow_fsync
picture = Image.effect_noise((256, 256), 64).convert("RGB")
image_nodes.to_pil = lambda images: [picture]  # the images, without importing torch
ctx = SimpleNamespace(
    settings=SimpleNamespace(output_path=Path(sys.argv[1])),
    workflow=None, node_id="save", run_info={}, show=lambda images: None,
)
print("ready", flush=True)
while True:
    image_nodes.save_image.execute(ctx, images=None, filename_prefix="Studio")
"""


def test_killing_studio_mid_save_never_leaves_a_broken_png(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "saver.py"
    script.write_text(_SAVER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = random.Random(7)
    deadline = time.monotonic() + 60
    for _ in range(6):
        child = subprocess.Popen(
            [sys.executable, str(script), str(out)], stdout=subprocess.PIPE, env=env, cwd=ROOT
        )
        try:
            assert child.stdout.readline() == b"ready\n"
            time.sleep(rng.uniform(0.05, 0.25))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        assert time.monotonic() < deadline
    pngs = sorted(out.glob("*.png"))
    assert pngs, "the saver never saved"
    for png in pngs:
        assert png.stat().st_size > 0, f"{png.name} is empty"
        with Image.open(png) as im:
            im.load()
            assert im.size == (256, 256)
    # Temporary files the kills left go away with the next save once they are stale.
    leftovers = [p for p in out.iterdir() if p.suffix != ".png"]
    assert all(p.name.startswith(".Studio.png.") for p in leftovers), leftovers
    then = time.time() - STALE_TEMP_SECONDS - 1
    for p in leftovers:
        os.utime(p, (then, then))
    write_numbered(out, "Studio", ".png", pngs[0].read_bytes())
    assert [p for p in out.iterdir() if p.suffix != ".png"] == []
