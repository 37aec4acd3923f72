"""studio-tiny's companion models, run through Studio's own nodes and engine, found by name
in the embedded models root: what a user would notice, measured on the images.

- the x4 upscaler makes images 4x the size that are closer to the scene drawn at 256x256
  than bicubic is;
- the canny ControlNet puts the shape on the side the control picture shows, with a
  caption that names no position, which the base model alone does not do;
- the outline LoRA at strength 1 (against 0) leaves the shape's bounding box emptier and
  its middle showing the background.

``python -m training.evaluate_companions`` prints the same measurements with more images.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
# training/ is a repo-root package, not part of the installed app
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from studio.library import installed_registry
from studio.modelfiles import ModelFiles
from studio.settings import Settings
from training import evaluate_companions as ec

CAPTIONS = 4  # held-out colour x shape x background combinations
PER_CAPTION = 4  # images per caption (one batch), 64x64, 20 euler steps, cfg 7


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """An engine whose own models root is empty: only the embedded models are there."""
    import torch

    from studio.engine import Engine

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("companions")
    settings = Settings(models_root=str(root / "models"), output_dir=str(root / "out"))
    yield Engine(installed_registry(), settings=settings)


@pytest.fixture
def workdir(tmp_path) -> Path:
    return tmp_path


def test_the_companion_models_are_listed_next_to_the_users(engine):
    assert ec.BASE in ModelFiles(Settings()).list("checkpoints")
    assert ec.UPSCALER in ModelFiles(Settings()).list("upscale_models")
    assert ec.CONTROLNET in ModelFiles(Settings()).list("controlnet")
    assert ec.LORA in ModelFiles(Settings()).list("loras")


def test_the_upscaler_is_x4_and_closer_to_the_high_resolution_render_than_bicubic(engine, workdir):
    rates = ec.measure_upscaler(engine, ec.upscale_scenes(8), workdir)
    assert rates["size_x4"] == 1.0, rates
    assert rates["psnr"] > rates["bicubic_psnr"] + 1.0, rates
    assert rates["mae"] < rates["bicubic_mae"], rates
    assert rates["closer_psnr"] >= 0.75, rates


@pytest.fixture(scope="module")
def control_rates(engine, tmp_path_factory):
    work = tmp_path_factory.mktemp("control")
    return ec.measure_controlnet(engine, CAPTIONS, PER_CAPTION, work)


def test_the_controlnet_puts_the_shape_where_the_control_picture_has_it(control_rates):
    # no position word in the captions: only the edge map says where
    assert control_rates["n_per_side"] == CAPTIONS * PER_CAPTION
    assert control_rates["right_with"] >= 0.8, control_rates
    assert control_rates["left_with"] >= 0.8, control_rates


def test_without_the_controlnet_the_same_captions_do_not_put_it_there(control_rates):
    for side in ec.SIDES:
        assert control_rates[f"{side}_without"] < 0.8, control_rates
        assert control_rates[f"{side}_with"] >= control_rates[f"{side}_without"] + 0.3, (
            control_rates
        )


def test_the_controlnet_keeps_the_caption_colour(control_rates):
    assert control_rates["color_with"] >= 0.7, control_rates


@pytest.fixture(scope="module")
def lora_rates(engine):
    return ec.measure_lora(engine, CAPTIONS, PER_CAPTION)


def test_the_outline_lora_empties_the_shapes(lora_rates):
    assert lora_rates["n"] == CAPTIONS * PER_CAPTION
    assert lora_rates["fill_strength_1"] <= lora_rates["fill_strength_0"] - 0.15, lora_rates
    assert lora_rates["fill_dropped"] >= 0.75, lora_rates
    assert lora_rates["hollow_strength_1"] >= lora_rates["hollow_strength_0"] + 0.3, lora_rates


def test_the_outline_lora_keeps_the_background_and_mostly_the_colour(lora_rates):
    assert lora_rates["background_strength_1"] >= 0.9, lora_rates
    # a thin ring comes out of the 4x VAE with mixed colours; most still read right
    assert lora_rates["color_strength_1"] >= 0.5, lora_rates
