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


# -- Rescale CFG (ComfyUI's RescaleCFG) -----------------------------------------------------------


def patched(engine, ckpt: str, patches: list[tuple[str, dict]], **kw) -> np.ndarray:
    """txt2img with model patch nodes chained between the checkpoint and the Sampler."""
    wf, ids = fx.txt2img(
        ckpt, prompt=PROMPT, negative=NEGATIVE, seed=SEED, steps=STEPS,
        **{"cfg": CFG, "scheduler": "normal", **kw},
    )  # fmt: skip
    source = (ids["ckpt"], "model")
    for kind, params in patches:
        node = wf.add_node(kind, params).id
        wf.connect(*source, node, "model")
        source = (node, "model")
    wf.connect(*source, ids["sampler"], "model")
    result = engine.run(wf, targets=[ids["decode"]])
    assert result.ok, result.errors
    return result.outputs[ids["decode"]]["image"].numpy()


@pytest.mark.parametrize("sampler", ["euler", "ddim"])
def test_rescale_cfg_on_a_v_prediction_model_equals_the_pipelines_guidance_rescale(
    engine, models_root, sampler
):
    """On a v-prediction model ComfyUI's RescaleCFG is the pipelines' ``guidance_rescale``
    (both rescale the v-prediction's spread per image)."""
    vpred = ("model_sampling_discrete", {"sampling": "v_prediction", "zsnr": False})
    got = patched(
        engine, "tiny-sd1", [vpred, ("rescale_cfg", {"multiplier": 0.7})], sampler=sampler
    )
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        str(models_root / "checkpoints" / "tiny-sd1"), safety_checker=None
    )
    cls = diffusers.EulerDiscreteScheduler if sampler == "euler" else diffusers.DDIMScheduler
    pipe.scheduler = cls.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    want = pipe(
        PROMPT, negative_prompt=NEGATIVE, height=64, width=64, num_inference_steps=STEPS,
        guidance_scale=CFG, guidance_rescale=0.7,
        generator=torch.Generator("cpu").manual_seed(SEED), output_type="np",
    ).images  # fmt: skip
    assert np.abs(got - want).max() <= 1e-4
    assert np.abs(got - patched(engine, "tiny-sd1", [vpred], sampler=sampler)).max() > 2 / 255


@pytest.mark.parametrize("scheduler", ["normal", "comfy_normal"])
def test_rescale_cfg_on_an_eps_model_works_in_v_space(engine, scheduler):
    """Multiplier 0 is plain cfg; at cfg 1 there is nothing to rescale; at cfg 6 the
    picture changes (the eps prediction is rescaled as the v-prediction it implies)."""
    plain = patched(engine, "tiny-sd1", [], scheduler=scheduler)
    zero = patched(engine, "tiny-sd1", [("rescale_cfg", {"multiplier": 0.0})], scheduler=scheduler)
    assert np.abs(zero - plain).max() <= 1e-5
    rescaled = patched(
        engine, "tiny-sd1", [("rescale_cfg", {"multiplier": 1.0})], scheduler=scheduler
    )
    assert np.abs(rescaled - plain).max() > 1e-3  # 100x the identity's bound (random weights)
    one = patched(engine, "tiny-sd1", [], scheduler=scheduler, cfg=1.0)
    one_rescaled = patched(
        engine, "tiny-sd1", [("rescale_cfg", {"multiplier": 1.0})], scheduler=scheduler, cfg=1.0
    )
    assert np.abs(one_rescaled - one).max() <= 1e-5


def test_rescale_cfgs_v_space_is_comfyuis():
    """The eps -> v -> eps round trip at a step: ComfyUI's formula (its sampler_cfg_function
    on x - denoised) written out, against RescaledGuidance on the UNet's eps outputs."""
    from nodes import ksampling
    from nodes.denoise import CfgGuidance

    config = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
    ms = ksampling.ModelSampling({**config, "num_train_timesteps": 1000})
    sched = ksampling.KSchedule(ms, "euler", torch.tensor([2.5, 0.0]), seed=0)  # at sigma 2.5
    gen = torch.Generator().manual_seed(0)
    x_orig = torch.randn(2, 4, 8, 8, generator=gen) * 2.7  # k-diffusion's x at sigma 2.5
    e_u, e_c = torch.randn(2, 2, 4, 8, 8, generator=gen)
    sigma, cfg, m = 2.5, 5.0, 0.7
    guide = CfgGuidance(m, False, False, sched, None)
    got = guide(e_u, e_c, cfg, x_orig, torch.tensor(0), 0)
    # ComfyUI: cond / uncond are x - denoised = sigma * eps; its formula returns the same
    cond, uncond = sigma * e_c, sigma * e_u
    x = x_orig / (sigma * sigma + 1.0)
    v_c = ((x - (x_orig - cond)) * (sigma**2 + 1.0) ** 0.5) / sigma
    v_u = ((x - (x_orig - uncond)) * (sigma**2 + 1.0) ** 0.5) / sigma
    v_cfg = v_u + cfg * (v_c - v_u)
    ro_pos = torch.std(v_c, dim=(1, 2, 3), keepdim=True)
    ro_cfg = torch.std(v_cfg, dim=(1, 2, 3), keepdim=True)
    v_final = m * v_cfg * (ro_pos / ro_cfg) + (1.0 - m) * v_cfg
    noise = x_orig - (x - v_final * sigma / (sigma * sigma + 1.0) ** 0.5)
    assert torch.allclose(got, noise / sigma, atol=1e-5)  # as eps: noise / sigma


@pytest.mark.parametrize("scheduler", ["normal", "comfy_normal", "karras"])
def test_cfg_zero_star_runs_on_an_sd_model_on_every_path(engine, scheduler):
    """CFG-Zero* (tests/test_cfg_zero_star.py checks its formula) on the diffusers path,
    ComfyUI's, and with Rescale CFG before it: each changes the picture."""
    sampler = "dpmpp_2m" if scheduler == "karras" else "euler"
    plain = patched(engine, "tiny-sd1", [], scheduler=scheduler, sampler=sampler)
    star = patched(
        engine, "tiny-sd1", [("cfg_zero_star", {})], scheduler=scheduler, sampler=sampler
    )
    assert np.isfinite(star).all()
    assert np.abs(star - plain).max() > 1e-3
    both = patched(
        engine, "tiny-sd1", [("rescale_cfg", {"multiplier": 0.7}), ("cfg_zero_star", {})],
        scheduler=scheduler, sampler=sampler,
    )  # fmt: skip
    assert np.abs(both - star).max() > 1e-4
