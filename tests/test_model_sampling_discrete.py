"""Model Sampling Discrete (ComfyUI's ModelSamplingDiscrete): what a Stable Diffusion model
predicts (eps or v) and the zero-terminal-SNR schedule, for files that do not say it.

On the tiny SD1 model of tests/diffusion_fixtures.py: v_prediction with zsnr equals
StableDiffusionPipeline with its scheduler set the same way; eps without zsnr changes
nothing; on the ComfyUI schedules the setting reaches ComfyUI's own sampling too."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import diffusion_fixtures as fx  # noqa: E402

from studio.engine import Engine  # noqa: E402
from studio.graph.importers.comfyui import import_comfyui  # noqa: E402
from studio.graph.importers.comfyui_export import export_comfyui_api  # noqa: E402
from studio.library import installed_registry  # noqa: E402

engine, models_root, tiny_parts = fx.engine, fx.models_root, fx.tiny_parts

PROMPT, NEGATIVE, SEED, STEPS, CFG = "a photo of a cat", "blurry", 5, 4, 6.0


def picture(engine, ckpt: str, sampling: dict | None, scheduler: str = "normal") -> np.ndarray:
    wf, ids = fx.txt2img(
        ckpt, prompt=PROMPT, negative=NEGATIVE, seed=SEED, steps=STEPS, cfg=CFG,
        scheduler=scheduler,
    )  # fmt: skip
    if sampling is not None:
        node = wf.add_node("model_sampling_discrete", sampling).id
        wf.connect(ids["ckpt"], "model", node, "model")
        wf.connect(node, "model", ids["sampler"], "model")
    result = engine.run(wf, targets=[ids["decode"]])
    assert result.ok, result.errors
    return result.outputs[ids["decode"]]["image"].numpy()


def test_v_prediction_with_zsnr_equals_the_pipeline_set_so(engine, models_root):
    got = picture(engine, "tiny-sd1", {"sampling": "v_prediction", "zsnr": True})
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        str(models_root / "checkpoints" / "tiny-sd1"), safety_checker=None
    )
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(
        pipe.scheduler.config, prediction_type="v_prediction", rescale_betas_zero_snr=True
    )
    want = pipe(
        PROMPT, negative_prompt=NEGATIVE, height=64, width=64, num_inference_steps=STEPS,
        guidance_scale=CFG, generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="np",
    ).images  # fmt: skip
    assert np.abs(got - want).max() <= 1e-4
    assert np.abs(got - picture(engine, "tiny-sd1", None)).max() > 4 / 255


def test_eps_without_zsnr_is_the_model_as_it_was(engine):
    plain = picture(engine, "tiny-sd1", None)
    assert np.array_equal(picture(engine, "tiny-sd1", {"sampling": "eps", "zsnr": False}), plain)


def test_on_comfyuis_schedules_it_changes_comfyuis_sampling(engine):
    plain = picture(engine, "tiny-sd1", None, "comfy_normal")
    v = picture(engine, "tiny-sd1", {"sampling": "v_prediction", "zsnr": False}, "comfy_normal")
    zsnr = picture(engine, "tiny-sd1", {"sampling": "v_prediction", "zsnr": True}, "comfy_normal")
    assert np.abs(v - plain).max() > 4 / 255
    assert np.abs(zsnr - v).max() > 1 / 255


def test_on_a_flow_model_it_points_at_the_right_node():
    wf, ids = fx.txt2img("studio-tiny-flow")
    node = wf.add_node("model_sampling_discrete", {"sampling": "v_prediction"}).id
    wf.connect(ids["ckpt"], "model", node, "model")
    wf.connect(node, "model", ids["sampler"], "model")
    result = Engine(installed_registry()).run(wf, targets=[ids["sampler"]])
    assert not result.ok
    assert "use Model Sampling SD3" in str(result.errors)


def test_comfyuis_node_imports_and_exports():
    api = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "noob-vpred"}},
        "2": {
            "class_type": "ModelSamplingDiscrete",
            "inputs": {"sampling": "v_prediction", "zsnr": True, "model": ["1", 0]},
        },
    }
    wf = import_comfyui(api, installed_registry(), source="vpred.json").workflow
    assert wf.get_node("2").type == "model_sampling_discrete"
    assert wf.get_node("2").params == {"sampling": "v_prediction", "zsnr": True}
    assert export_comfyui_api(wf)["2"]["inputs"] == api["2"]["inputs"]
