"""The guidance interval (studio.recipes.guide_from): no guidance for the first part of the
sampling, expressed with Conditioning Set Timestep Range and Conditioning Combine on the
negative, on both model families (studio-tiny's UNet, studio-tiny-flow's transformer)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from studio.library import installed_registry
from studio.modelfiles import ModelFiles
from studio.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MODELS = {"studio-tiny": 6, "studio-tiny-flow": 4}  # checkpoint: steps
PROMPT = "a large red circle on a blue background, left"


@pytest.fixture(scope="module")
def engine():
    import torch

    from studio.engine import Engine

    torch.set_num_threads(2)
    return Engine(installed_registry())


def draw(engine, model, cfg, guidance_start=0.0, seed=3):
    from studio import recipes
    from training.studio_run import to_uint8

    wf, ids = recipes.txt2img(
        installed_registry(),
        model,
        PROMPT,
        seed=seed,
        steps=MODELS[model],
        cfg=cfg,
        guidance_start=guidance_start,
    )
    result = engine.run(wf)
    assert result.ok, result.errors
    return to_uint8(result.outputs[ids["decode"]]["image"])[0].astype(int)


@pytest.mark.parametrize("model", list(MODELS))
def test_unguided_steps_are_cfg_1_and_guided_ones_are_cfg(engine, model):
    if model not in ModelFiles(Settings()).list("checkpoints"):
        pytest.skip(f"{model} is not in resources/models")
    plain, unguided = draw(engine, model, 3.0), draw(engine, model, 1.0)
    # Unguided over the whole sampling: the negative is the prompt itself at every step,
    # so cfg 3 draws cfg 1's picture.
    whole = draw(engine, model, 3.0, guidance_start=1.0)
    assert abs(whole - unguided).max() <= 2
    # Unguided for the first half only: a picture of its own, neither of the two.
    half = draw(engine, model, 3.0, guidance_start=0.5)
    assert abs(half - plain).mean() > 1 and abs(half - unguided).mean() > 1


def test_the_sd3_default_workflow_guides_from_40_percent_on():
    from studio.graph.fileformat import load_workflow
    from training.flow_models import DEFAULT_GUIDANCE_START

    wf = load_workflow(ROOT / "resources/workflows/txt2img_sd3.json", installed_registry())
    ranges = sorted(
        (n.params["start"], n.params["end"])
        for n in wf.nodes
        if n.type == "conditioning_set_timestep_range"
    )
    start = DEFAULT_GUIDANCE_START
    assert ranges == [(0.0, start), (start, 1.0)]
    (sampler,) = [n for n in wf.nodes if n.type == "sampler"]
    (negative,) = [
        link for link in wf.links if link.target == sampler.id and link.input == "negative"
    ]
    assert wf.get_node(negative.source).type == "conditioning_combine"
