"""Images in and out, progress, previews and interrupt (tiny models, CPU)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import diffusion_fixtures as fx  # noqa: E402
from PIL import Image  # noqa: E402

from studio.engine.events import EventKind  # noqa: E402
from studio.graph.fileformat import loads_workflow  # noqa: E402
from studio.graph.workflow import Workflow  # noqa: E402
from studio.library import installed_registry  # noqa: E402

# Shared fixtures (a session's tiny models on disk, an engine pointed at them).
engine, models_root, tiny_parts = fx.engine, fx.models_root, fx.tiny_parts


def _saved(engine) -> list:
    return sorted(engine.settings.output_path.glob("*.png"))


def test_save_image_writes_a_png_with_the_workflow_and_parameters(engine):
    wf, ids = fx.txt2img(
        "tiny-sd1", prompt="a red fox", negative="blurry", seed=42, steps=2, output="save_image"
    )
    result = engine.run(wf)
    assert result.ok, result.errors
    (path,) = _saved(engine)
    assert path.name == "Studio_00001.png"
    with Image.open(path) as im:
        assert im.size == (64, 64)
        text = dict(im.text)
        pixels = np.asarray(im.convert("RGB"))
    restored = loads_workflow(text["studio_workflow"], registry=installed_registry())
    assert {n.id for n in restored.nodes} == {n.id for n in wf.nodes}
    params = text["parameters"]
    assert params.startswith("a red fox\nNegative prompt: blurry\n")
    for part in ("Steps: 2", "Sampler: Euler", "CFG scale: 7.5", "Seed: 42", "Size: 64x64"):
        assert part in params
    assert "Model: tiny-sd1" in params
    # The file holds the decoded image.
    decoded = result.outputs[ids["decode"]]["image"][0].numpy()
    assert np.abs(pixels / 255.0 - decoded).max() <= 1 / 255 + 1e-6
    assert len(result.images) == 1


def test_save_image_never_overwrites(engine):
    engine.settings.output_path.mkdir(parents=True)
    (engine.settings.output_path / "Studio_00001.png").write_bytes(b"someone else's file")
    wf, ids = fx.txt2img("tiny-sd1", steps=1, output="save_image")
    assert engine.run(wf).ok
    wf.set_param(ids["sampler"], "seed", 9)
    assert engine.run(wf).ok
    names = [p.name for p in _saved(engine)]
    assert names == ["Studio_00001.png", "Studio_00002.png", "Studio_00003.png"]
    assert (engine.settings.output_path / "Studio_00001.png").read_bytes() == b"someone else's file"


def test_load_image_gives_pixels_and_a_mask_from_alpha(engine, tmp_path):
    rgba = np.zeros((16, 24, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:, 12:, 3] = 255  # right half opaque, left half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cut.png")
    wf = Workflow(installed_registry())
    node = wf.add_node("load_image", {"image": str(tmp_path / "cut.png")}).id
    result = engine.run(wf, targets=[node])
    assert result.ok, result.errors
    image, mask = result.outputs[node]["image"], result.outputs[node]["mask"]
    assert image.shape == (1, 16, 24, 3) and image.dtype == torch.float32
    assert torch.all(image[..., 0] == 1.0) and torch.all(image[..., 1:] == 0.0)
    assert mask.shape == (1, 16, 24)
    assert torch.all(mask[:, :, :12] == 1.0) and torch.all(mask[:, :, 12:] == 0.0)


def test_load_image_missing_file_is_a_node_error(engine, tmp_path):
    wf = Workflow(installed_registry())
    node = wf.add_node("load_image", {"image": str(tmp_path / "nothing.png")}).id
    result = engine.run(wf, targets=[node])
    assert "nothing.png" in result.errors[node]


def test_sampler_reports_progress_with_previews_every_step(engine):
    wf, ids = fx.txt2img("tiny-sd1", steps=3)
    events = []
    result = engine.run(wf, on_event=events.append)
    assert result.ok, result.errors
    progress = [e for e in events if e.event == EventKind.PROGRESS and e.node == ids["sampler"]]
    assert [(e.step, e.total) for e in progress] == [(1, 3), (2, 3), (3, 3)]
    assert all(isinstance(e.preview, Image.Image) and e.preview.size == (8, 8) for e in progress)


def test_interrupt_stops_the_sampler_at_the_next_step(engine):
    wf, ids = fx.txt2img("tiny-sd1", steps=20)
    steps_seen = []

    def on_event(e):
        if e.event == EventKind.PROGRESS and e.node == ids["sampler"]:
            steps_seen.append(e.step)
            if e.step == 2:
                engine.interrupt()

    result = engine.run(wf, on_event=on_event)
    assert result.interrupted
    assert steps_seen == [1, 2]
    assert ids["sampler"] not in result.ran and ids["decode"] not in result.ran


def test_tiled_decode_matches_plain_decode_when_one_tile_covers_the_image(engine):
    wf, ids = fx.txt2img("tiny-sd1", steps=1, width=128, height=128)
    plain = engine.run(wf).outputs[ids["decode"]]["image"]
    wf.set_param(ids["decode"], "tiled", True)
    wf.set_param(ids["decode"], "tile_size", 128)
    one_tile = engine.run(wf).outputs[ids["decode"]]["image"]
    assert torch.equal(plain, one_tile)
    wf2, ids2 = fx.txt2img("tiny-sd1", steps=1, width=256, height=256)
    wf2.set_param(ids2["decode"], "tiled", True)
    wf2.set_param(ids2["decode"], "tile_size", 128)
    tiled = engine.run(wf2).outputs[ids2["decode"]]["image"]
    assert tiled.shape == (1, 256, 256, 3)
    assert float(tiled.min()) >= 0.0 and float(tiled.max()) <= 1.0


def test_batch_size_makes_that_many_images(engine):
    wf, ids = fx.txt2img("tiny-sd1", steps=1)
    wf.set_param(ids["latent"], "batch_size", 2)
    result = engine.run(wf)
    image = result.outputs[ids["decode"]]["image"]
    assert image.shape == (2, 64, 64, 3)
    assert not torch.equal(image[0], image[1])
    assert len(result.images) == 2
