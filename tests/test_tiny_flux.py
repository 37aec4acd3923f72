"""What studio-tiny-flux's images show (the Flux-layout sibling of studio-tiny-flow, shipped
in resources/models/checkpoints): drawn by diffusers' FluxPipeline from the folder and by
Studio's graph (resources/workflows/txt2img_flux.json's wiring) in 8 steps, on the held-out
captions, read by training.evaluate as test_tiny_flow does. ``benchmarks/bench_tiny_flow.py
--models flux`` prints the same figures and more."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.data import eval_scenes  # noqa: E402
from training.evaluate import adherence  # noqa: E402
from training.flow_models import (  # noqa: E402
    DEFAULT_CFG,
    DEFAULT_STEPS,
    FLUX_FOLDER,
    load_flux_pipeline,
)

pytestmark = pytest.mark.skipif(not FLUX_FOLDER.is_dir(), reason=f"{FLUX_FOLDER} is not there")

CAPTIONS = 60
GRAPH_CAPTIONS = 30
GOALS = (("color", 0.9), ("background", 0.9), ("position", 0.9), ("shape", 0.8))


def test_the_folder_is_small_and_a_flux_pipeline_with_t5():
    size = sum(f.stat().st_size for f in FLUX_FOLDER.rglob("*") if f.is_file())
    assert size < 30_000_000
    index = json.loads((FLUX_FOLDER / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    assert index["transformer"] == ["diffusers", "FluxTransformer2DModel"]
    assert index["text_encoder_2"] == ["transformers", "T5EncoderModel"]


def test_held_out_captions_in_8_steps_follow_the_prompt_through_flux_pipeline():
    import torch

    torch.set_num_threads(2)
    pipe = load_flux_pipeline(FLUX_FOLDER)
    caps = [s.caption for s in eval_scenes(CAPTIONS)]
    images = pipe(
        caps,
        negative_prompt=[""] * len(caps),
        true_cfg_scale=DEFAULT_CFG,
        num_inference_steps=DEFAULT_STEPS,
        height=64,
        width=64,
        max_sequence_length=pipe.tokenizer_2.model_max_length,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    rates = adherence(caps, list((images * 255).round().astype("uint8")))
    assert rates["n"] == CAPTIONS
    for attribute, goal in GOALS:
        assert rates[attribute] >= goal, rates


def test_the_default_flux_workflow_draws_the_held_out_captions():
    """resources/workflows/txt2img_flux.json as an artist opens it (Load Checkpoint on
    studio-tiny-flux, 8 steps, true cfg against ""), its prompt set to each caption."""
    import numpy as np
    import torch

    from studio.engine import Engine
    from studio.graph.fileformat import load_workflow
    from studio.library import installed_registry
    from training.studio_run import to_uint8

    torch.set_num_threads(2)
    reg = installed_registry()
    wf = load_workflow(ROOT / "resources" / "workflows" / "txt2img_flux.json", reg)
    sampler = next(n for n in wf.nodes if n.type == "sampler")
    assert sampler.params["steps"] <= 8
    positive = wf.get_node(wf.link_into(sampler.id, "positive").source)
    while positive.type != "text_encode":  # through Flux Guidance, if any
        positive = wf.get_node(wf.link_into(positive.id, "conditioning").source)
    decode = next(n for n in wf.nodes if n.type == "vae_decode")
    engine = Engine(reg)
    caps = [s.caption for s in eval_scenes(GRAPH_CAPTIONS)]
    images = []
    for i, caption in enumerate(caps):
        positive.params["text"] = caption
        sampler.params["seed"] = i
        result = engine.run(wf, targets=[decode.id])
        assert result.ok, result.errors
        images.append(to_uint8(result.outputs[decode.id]["image"])[0])
    rates = adherence(caps, images)
    assert rates["n"] == GRAPH_CAPTIONS
    for attribute, goal in GOALS:
        assert rates[attribute] >= goal, rates
    assert np.std([im.mean() for im in images]) > 1  # not one picture for every caption
