"""Load Image and Save Image against hostile or unlucky files: decompression bombs, names
leading out of the input folder, devices and pipes, and a process killed mid-save."""

from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

import nodes.image as image_nodes
from studio.errors import NodeError
from studio.fsutil import STALE_TEMP_SECONDS, TEMP_SUFFIX, remove_stale_temps, write_numbered
from studio.graph.workflow import Workflow
from studio.library import installed_registry

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def engine(tmp_path):
    from studio.engine import Engine
    from studio.settings import Settings

    settings = Settings(
        models_root=str(tmp_path / "models"),
        output_dir=str(tmp_path / "out"),
        input_dir=str(tmp_path / "in"),
    )
    settings.input_path.mkdir()
    return Engine(installed_registry(), settings=settings)


@pytest.fixture
def no_decoding(monkeypatch):
    """Fails a test that decodes pixels (the refusal must come from the header)."""
    decoded = []

    def load(self):
        decoded.append(self.size)
        raise RuntimeError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return decoded


def _picture(path: Path, size=(24, 16)) -> Path:
    rgb = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    rgb[..., 1] = 200
    Image.fromarray(rgb, "RGB").save(path)
    return path


def _bomb_png(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit PNG of width x height black pixels: a few kB on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    z = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)
    idat = b"".join(z.compress(row * 500) for _ in range(height // 500))
    idat += z.compress(row * (height % 500)) + z.flush()
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )
    return path


def _run_load(engine, name: str, timeout: float = 20.0) -> tuple[dict, float]:
    """Run a Load Image node in a thread, so that a read that never ends fails the test."""
    wf = Workflow(engine.registry)
    node = wf.add_node("load_image", {"image": name}).id
    out: dict = {}
    start = time.monotonic()
    worker = threading.Thread(target=lambda: out.update(r=engine.run(wf, targets=[node])))
    worker.daemon = True
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), f"Load Image of {name!r} still running after {timeout} s"
    result = out["r"]
    return {"ok": result.ok, "error": result.errors.get(node, ""), "out": result.outputs}, (
        time.monotonic() - start
    )


# -- item 6: an image too large to decode ----------------------------------------------------


def test_a_huge_image_is_refused_from_its_header_before_decoding(engine, no_decoding):
    bomb = _bomb_png(engine.settings.input_path / "bomb.png", 12000, 12000)
    assert bomb.stat().st_size < 100_000
    run, _ = _run_load(engine, "bomb.png")
    assert not run["ok"]
    message = run["error"]
    for part in (
        "image 'bomb.png'",
        "bomb.png",
        "12000x12000",
        "67,108,864",
        "as many as 8192x8192",
    ):
        assert part in message, message
    assert no_decoding == []


def test_an_image_over_pillows_own_bomb_limit_gets_the_same_message(engine, no_decoding):
    _bomb_png(engine.settings.input_path / "vast.png", 20000, 20000)
    run, _ = _run_load(engine, "vast.png")
    assert "400,000,000 pixels" in run["error"] and "as many as 8192x8192" in run["error"], run[
        "error"
    ]
    assert no_decoding == []


def test_the_pixel_limit_is_inclusive(engine, monkeypatch):
    monkeypatch.setattr(image_nodes, "MAX_IMAGE_PIXELS", 24 * 16)
    _picture(engine.settings.input_path / "fits.png", (24, 16))
    _picture(engine.settings.input_path / "over.png", (24, 17))
    assert _run_load(engine, "fits.png")[0]["ok"]
    assert "24x17" in _run_load(engine, "over.png")[0]["error"]


def test_a_painted_mask_of_another_size_is_refused_before_decoding(no_decoding):
    import base64
    import io

    buf = io.BytesIO()
    Image.new("L", (30, 20)).save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode()
    with pytest.raises(NodeError, match="30x20 but the image is 24x16"):
        image_nodes.decode_mask(data, (24, 16))
    assert no_decoding == []


# -- item 7: a relative name stays inside its folder -----------------------------------------


def test_dot_dot_in_a_relative_name_cannot_leave_the_input_folder(engine, tmp_path):
    _picture(tmp_path / "secret.png")
    run, _ = _run_load(engine, "../secret.png")
    assert not run["ok"]
    assert "'../secret.png' leads out of the folder" in run["error"], run["error"]


def test_a_symlink_cannot_lead_out_of_the_input_folder(engine, tmp_path):
    _picture(tmp_path / "secret.png")
    (tmp_path / "elsewhere").mkdir()
    _picture(tmp_path / "elsewhere" / "b.png")
    (engine.settings.input_path / "link.png").symlink_to(tmp_path / "secret.png")
    (engine.settings.input_path / "folder").symlink_to(tmp_path / "elsewhere")
    assert "leads out of the folder" in _run_load(engine, "link.png")[0]["error"]
    assert "leads out of the folder" in _run_load(engine, "folder/b.png")[0]["error"]


def test_names_inside_the_input_folder_and_absolute_paths_still_load(engine, tmp_path):
    (engine.settings.input_path / "sub").mkdir()
    _picture(engine.settings.input_path / "a.png")
    (engine.settings.input_path / "sub" / "alias.png").symlink_to(
        engine.settings.input_path / "a.png"
    )
    _picture(tmp_path / "outside.png")
    for name in ("a.png", "sub/../a.png", "sub/alias.png", str(tmp_path / "outside.png")):
        run, _ = _run_load(engine, name)
        assert run["ok"], (name, run["error"])


def test_inside_folder_checks_the_resolved_path(tmp_path):
    (tmp_path / "in").mkdir()
    assert (
        image_nodes.inside_folder(tmp_path / "in", "x/../y.png") == tmp_path / "in" / "x/../y.png"
    )
    with pytest.raises(NodeError, match="leads out of the folder"):
        image_nodes.inside_folder(tmp_path / "in", "x/../../y.png")
    with pytest.raises(NodeError, match="leads out of the folder"):
        image_nodes.inside_folder(tmp_path / "in", "../in2/y.png")


# -- item 4: devices, pipes, folders and huge files ------------------------------------------


def test_dev_zero_as_the_image_fails_promptly(engine):
    run, seconds = _run_load(engine, "/dev/zero")
    assert "image '/dev/zero'" in run["error"] and "not a regular file" in run["error"], run
    assert seconds < 10


def test_a_fifo_as_the_image_fails_promptly(engine):
    fifo = engine.settings.input_path / "pipe.png"
    os.mkfifo(fifo)
    run, seconds = _run_load(engine, "pipe.png")
    assert "image 'pipe.png'" in run["error"] and "not a regular file" in run["error"], run
    assert str(fifo) in run["error"]
    assert seconds < 10


def test_a_folder_or_an_oversized_file_as_the_image_is_refused(engine):
    (engine.settings.input_path / "album.png").mkdir()
    assert "is a folder" in _run_load(engine, "album.png")[0]["error"]
    huge = engine.settings.input_path / "huge.png"
    with open(huge, "wb") as f:
        f.truncate(image_nodes.MAX_IMAGE_FILE_BYTES + 1)  # sparse: no disk used
    error = _run_load(engine, "huge.png")[0]["error"]
    assert "image 'huge.png'" in error and "too large" in error and "512 MiB" in error, error


# -- item 8: Save Image never leaves an empty or temporary file --------------------------------


def _save_workflow(engine, picture: Path) -> tuple[Workflow, str]:
    wf = Workflow(engine.registry)
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
    # Only the writing is under test: no signing or watermark (their first use imports
    # c2pa and numpy, which a save in the app has loaded long before).
    settings=SimpleNamespace(output_path=Path(sys.argv[1]), image_metadata="nothing", watermark=False),
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
