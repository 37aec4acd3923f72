"""What studio-tiny's images show, drawn through Studio's own txt2img graph.

Captions come from the held-out colour x shape x background combinations (never drawn
in training); every rate is measured on the images with training.evaluate's pixel
statistics. ``python benchmarks/bench_tiny.py`` prints the same figures.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from studio.library import installed_registry
from studio.modelfiles import ModelFiles
from studio.settings import Settings
from training.data import eval_scenes, heldout_combos
from training.studio_run import MODEL, TXT2IMG_CFG, StudioTxt2Img, held_out_adherence

pytestmark = pytest.mark.skipif(
    MODEL not in ModelFiles(Settings()).list("checkpoints"),
    reason=f"{MODEL} is not in resources/models",
)

CAPTIONS = 60  # held-out captions, each naming a size and a position
PER_CAPTION = 3  # images per caption (one seeded batch each)


@pytest.fixture(scope="module")
def engine():
    import torch

    from studio.engine import Engine

    torch.set_num_threads(2)
    return Engine(installed_registry())


@pytest.fixture(scope="module")
def rates_cfg7(engine) -> dict[str, float]:
    return held_out_adherence(StudioTxt2Img(cfg=7.0, engine=engine), CAPTIONS, 0, PER_CAPTION)


def test_the_captions_are_held_out_combinations():
    scenes = eval_scenes(CAPTIONS)
    assert len(scenes) >= 50
    held = heldout_combos()
    assert all((s.color, s.shape, s.background) in held for s in scenes)


def test_shape_colour_background_and_shape_follow_the_prompt(rates_cfg7):
    assert rates_cfg7["n"] == CAPTIONS * PER_CAPTION
    assert rates_cfg7["color"] >= 0.90, rates_cfg7
    assert rates_cfg7["background"] >= 0.90, rates_cfg7
    assert rates_cfg7["shape"] >= 0.80, rates_cfg7


def test_position_word_puts_the_shape_there(rates_cfg7):
    assert rates_cfg7["position"] >= 0.90, rates_cfg7


def test_guidance_1_adheres_less_than_guidance_7(engine, rates_cfg7):
    # Without guidance the model follows the caption less: over the four attributes, and
    # clearly for the shape (studio-tiny at zero terminal SNR still gets the background and
    # most colours right from the caption alone; measured: mean 0.90 against 0.98, shape
    # 0.79 against 0.98).
    rates_cfg1 = held_out_adherence(StudioTxt2Img(cfg=1.0, engine=engine), CAPTIONS, 0, PER_CAPTION)
    assert rates_cfg1["mean"] < rates_cfg7["mean"] - 0.04, (rates_cfg1, rates_cfg7)
    assert rates_cfg1["shape"] < rates_cfg7["shape"] - 0.1, (rates_cfg1, rates_cfg7)


def test_the_default_txt2img_cfg_follows_the_prompt(engine):
    # resources/workflows/txt2img.json's cfg (2: seeds vary the shape's place and size nearly
    # as the training data does; measured on 60 captions: colour / background / position /
    # shape 1.0 / 1.0 / 0.97 / 0.95).
    rates = held_out_adherence(StudioTxt2Img(cfg=TXT2IMG_CFG, engine=engine), CAPTIONS, 0, 1)
    assert rates["n"] == CAPTIONS
    for attribute, goal in (("color", 0.9), ("background", 0.9), ("position", 0.9), ("shape", 0.8)):
        assert rates[attribute] >= goal, rates
