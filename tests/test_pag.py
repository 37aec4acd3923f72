"""Perturbed-Attention Guidance (ComfyUI's PerturbedAttentionGuidance) on the tiny SD 1.x and
SDXL models: equal to diffusers' StableDiffusionPAGPipeline / StableDiffusionXLPAGPipeline
(``pag_applied_layers=["mid"]``, no adaptive scale) with and without cfg, on both sampling
paths; refused where it does not apply; ComfyUI's node maps."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import diffusion_fixtures as fx  # noqa: E402

from studio.graph import Workflow  # noqa: E402
from studio.graph.importers.comfyui import import_comfyui  # noqa: E402
from studio.graph.importers.comfyui_export import export_comfyui_api  # noqa: E402
from studio.library import installed_registry  # noqa: E402

engine, models_root, tiny_parts = fx.engine, fx.models_root, fx.tiny_parts

PROMPT, NEGATIVE = "a photo of an astronaut riding a horse", "blurry, low quality"
SEED, STEPS = 1234, 4


def graph(ckpt: str, scale: float | None, cfg: float, scheduler: str = "normal"):
    wf, ids = fx.txt2img(
        ckpt, prompt=PROMPT, negative=NEGATIVE, seed=SEED, steps=STEPS, cfg=cfg,
        scheduler=scheduler,
    )  # fmt: skip
    if scale is not None:
        link = wf.link_into(ids["sampler"], "model")
        pag = wf.add_node("perturbed_attention_guidance", {"scale": scale}).id
        wf.connect(link.source, link.output, pag, "model")
        wf.connect(pag, "model", ids["sampler"], "model")
    return wf, ids


def picture(engine, *args, **kw) -> np.ndarray:
    wf, ids = graph(*args, **kw)
    result = engine.run(wf)
    assert result.ok, result.errors
    return result.outputs[ids["decode"]]["image"].numpy()


@pytest.mark.parametrize("cfg", [7.5, 1.0])
@pytest.mark.parametrize("ckpt", ["tiny-sd1", "tiny-sdxl"])
def test_it_equals_diffusers_pag_pipelines(engine, models_root, ckpt, cfg):
    got = picture(engine, ckpt, 3.0, cfg)
    kind = (
        diffusers.StableDiffusionXLPAGPipeline
        if ckpt == "tiny-sdxl"
        else (diffusers.StableDiffusionPAGPipeline)
    )
    extra = {} if ckpt == "tiny-sdxl" else {"safety_checker": None}
    pipe = kind.from_pretrained(
        str(models_root / "checkpoints" / ckpt), pag_applied_layers=["mid"], **extra
    )
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    want = pipe(
        PROMPT, negative_prompt=NEGATIVE, height=64, width=64, num_inference_steps=STEPS,
        guidance_scale=cfg, pag_scale=3.0, pag_adaptive_scale=0.0,
        generator=torch.Generator("cpu").manual_seed(SEED), output_type="np",
    ).images  # fmt: skip
    assert np.abs(got - want).max() <= 1e-4
    assert np.abs(got - picture(engine, ckpt, None, cfg)).max() > 1e-3  # it steers
    # scale 0 is no guidance
    assert np.abs(picture(engine, ckpt, 0.0, cfg) - picture(engine, ckpt, None, cfg)).max() == 0


def test_on_comfyuis_sampling_path_it_moves_each_step_by_its_formula(engine):
    """With a ComfyUI schedule (k-diffusion sampling): the same guidance, so the picture moves
    from the unguided one as on the diffusers path, and scale 0 changes nothing."""
    got = picture(engine, "tiny-sd1", 3.0, 7.5, scheduler="comfy_normal")
    plain = picture(engine, "tiny-sd1", None, 7.5, scheduler="comfy_normal")
    assert np.abs(got - plain).max() > 1e-3
    assert (
        np.abs(picture(engine, "tiny-sd1", 0.0, 7.5, scheduler="comfy_normal") - plain).max() == 0
    )


def test_where_it_does_not_apply_it_says_why(engine):
    wf, ids = graph("tiny-sd1", 3.0, 7.5)
    second = wf.add_node("text_encode", {"text": "a cat"}).id
    combine = wf.add_node("conditioning_combine").id
    ck = next(n.id for n in wf.nodes if n.type == "load_checkpoint")
    wf.connect(ck, "clip", second, "clip")
    pos = wf.link_into(ids["sampler"], "positive")
    wf.connect(pos.source, pos.output, combine, "conditioning_1")
    wf.connect(second, "conditioning", combine, "conditioning_2")
    wf.connect(combine, "conditioning", ids["sampler"], "positive")
    result = engine.run(wf)
    assert not result.ok
    assert "Perturbed-Attention Guidance works on one prompt for now" in str(result.errors)


def test_on_a_transformer_it_points_at_skip_layer_guidance():
    from nodes.comfycore import perturbed_attention_guidance
    from nodes.values import ModelHandle
    from studio.errors import NodeError

    model = ModelHandle.__new__(ModelHandle)
    object.__setattr__(model, "family", "flux")
    with pytest.raises(NodeError, match="use Skip Layer Guidance"):
        perturbed_attention_guidance.execute(None, model, 3.0)


def test_comfyuis_node_imports_and_exports():
    api = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl"}},
        "2": {"class_type": "PerturbedAttentionGuidance",
              "inputs": {"scale": 2.5, "model": ["1", 0]}},
    }  # fmt: skip
    wf = import_comfyui(api, installed_registry(), source="pag.json").workflow
    node = wf.get_node("2")
    assert node.type == "perturbed_attention_guidance" and node.params == {"scale": 2.5}
    assert export_comfyui_api(wf)["2"]["inputs"] == api["2"]["inputs"]
    assert isinstance(wf, Workflow)
