"""A graph equals the matching diffusers pipeline, number for number (tiny models, CPU)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import diffusion_fixtures as fx  # noqa: E402

# Shared fixtures (a session's tiny models on disk, an engine pointed at them).
engine, models_root, tiny_parts = fx.engine, fx.models_root, fx.tiny_parts


PROMPT = "a photo of an astronaut riding a horse"
NEGATIVE = "blurry, low quality"
SEED = 1234
STEPS = 4
CFG = 7.5


def _graph_image(engine, ckpt, **kw) -> np.ndarray:
    kw = {"seed": SEED, "steps": STEPS, "cfg": CFG, **kw}
    wf, ids = fx.txt2img(ckpt, prompt=PROMPT, negative=NEGATIVE, **kw)
    result = engine.run(wf)
    assert result.ok, result.errors
    return result.outputs[ids["decode"]]["image"].numpy()


def _pipe_scheduler(config, sampler: str, scheduler: str):
    if sampler == "euler":
        return diffusers.EulerDiscreteScheduler.from_config(config)
    if sampler == "dpmpp_2m":
        return diffusers.DPMSolverMultistepScheduler.from_config(
            config, use_karras_sigmas=scheduler == "karras"
        )
    if sampler == "ddim":
        return diffusers.DDIMScheduler.from_config(config)
    raise AssertionError(sampler)


@pytest.mark.parametrize(
    ("sampler", "scheduler"), [("euler", "normal"), ("dpmpp_2m", "karras"), ("ddim", "normal")]
)
def test_txt2img_equals_stable_diffusion_pipeline(engine, models_root, sampler, scheduler):
    got = _graph_image(engine, "tiny-sd1", sampler=sampler, scheduler=scheduler)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        str(models_root / "checkpoints" / "tiny-sd1"), safety_checker=None
    )
    pipe.scheduler = _pipe_scheduler(pipe.scheduler.config, sampler, scheduler)
    want = pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        height=64,
        width=64,
        num_inference_steps=STEPS,
        guidance_scale=CFG,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="np",
    ).images
    assert got.shape == want.shape == (1, 64, 64, 3)
    assert np.abs(got - want).max() <= 1e-4


def test_sdxl_txt2img_equals_stable_diffusion_xl_pipeline(engine, models_root):
    got = _graph_image(engine, "tiny-sdxl", sampler="euler")
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(
        str(models_root / "checkpoints" / "tiny-sdxl")
    )
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    want = pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        height=64,
        width=64,
        num_inference_steps=STEPS,
        guidance_scale=CFG,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="np",
    ).images
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4


def test_img2img_equals_img2img_pipeline(engine, models_root, tmp_path):
    from PIL import Image

    from studio.graph.workflow import Workflow
    from studio.library import installed_registry

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB")
    photo.save(tmp_path / "photo.png")

    wf = Workflow(installed_registry())
    ck = wf.add_node("load_checkpoint", {"ckpt_name": "tiny-sd1"}).id
    img = wf.add_node("load_image", {"image": str(tmp_path / "photo.png")}).id
    enc = wf.add_node("vae_encode").id
    pos = wf.add_node("text_encode", {"text": PROMPT}).id
    neg = wf.add_node("text_encode", {"text": NEGATIVE}).id
    params = {"seed": SEED, "steps": 10, "cfg": CFG, "sampler": "euler", "denoise": 0.6}
    smp = wf.add_node("sampler", params).id
    dec = wf.add_node("vae_decode").id
    out = wf.add_node("preview_image").id
    for a, b, c, d in [
        (img, "image", enc, "image"),
        (ck, "vae", enc, "vae"),
        (ck, "clip", pos, "clip"),
        (ck, "clip", neg, "clip"),
        (ck, "model", smp, "model"),
        (pos, "conditioning", smp, "positive"),
        (neg, "conditioning", smp, "negative"),
        (enc, "latent", smp, "latent"),
        (smp, "latent", dec, "latent"),
        (ck, "vae", dec, "vae"),
        (dec, "image", out, "images"),
    ]:
        wf.connect(a, b, c, d)
    result = engine.run(wf)
    assert result.ok, result.errors
    got = result.outputs[dec]["image"].numpy()

    pipe = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(
        str(models_root / "checkpoints" / "tiny-sd1"), safety_checker=None
    )
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    want = pipe(
        PROMPT,
        image=photo,
        strength=0.6,
        negative_prompt=NEGATIVE,
        num_inference_steps=10,
        guidance_scale=CFG,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="np",
    ).images
    assert got.shape == want.shape == (1, 64, 64, 3)
    assert np.abs(got - want).max() <= 1e-4
    # It really is img2img: the result keeps something of the photo.
    txt = _graph_image(engine, "tiny-sd1", sampler="euler")
    assert np.abs(got - txt).max() > 1e-2


@pytest.mark.parametrize("sampler", ["euler_ancestral", "uni_pc"])
def test_custom_model_with_a_4x_vae_equals_the_pipeline(engine, models_root, sampler):
    # The embedded studio-tiny model is of this kind: Empty Latent's 64x64 becomes 16x16.
    got = _graph_image(engine, "tiny-custom", sampler=sampler)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        str(models_root / "checkpoints" / "tiny-custom"), safety_checker=None
    )
    cls = {
        "euler_ancestral": "EulerAncestralDiscreteScheduler",
        "uni_pc": "UniPCMultistepScheduler",
    }
    pipe.scheduler = getattr(diffusers, cls[sampler]).from_config(pipe.scheduler.config)
    want = pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        height=64,
        width=64,
        num_inference_steps=STEPS,
        guidance_scale=CFG,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="np",
    ).images
    assert got.shape == want.shape == (1, 64, 64, 3)
    assert np.abs(got - want).max() <= 1e-4


def test_every_sampler_runs_and_a_seed_gives_the_same_image_twice(engine):
    from nodes.values import SAMPLERS

    wf, ids = fx.txt2img("tiny-sd1", steps=2)
    for name, (diffusers_class, _) in SAMPLERS.items():
        wf.set_param(ids["sampler"], "sampler", name)
        # ComfyUI's samplers that diffusers lacks run with ComfyUI's schedules
        wf.set_param(ids["sampler"], "scheduler", "normal" if diffusers_class else "comfy_normal")
        result = engine.run(wf)
        assert result.ok, (name, result.errors)
        image = result.outputs[ids["decode"]]["image"]
        assert torch.isfinite(image).all(), name
        engine.cache.clear()
        again = engine.run(wf).outputs[ids["decode"]]["image"]
        assert torch.equal(image, again), f"{name}: the same seed gave another image"


def test_a_schedule_the_sampler_lacks_is_a_clear_error(engine):
    wf, ids = fx.txt2img("tiny-sd1", steps=2, sampler="ddim", scheduler="karras")
    result = engine.run(wf)
    assert (
        "'karras' scheduler is not available with sampler 'ddim'" in result.errors[ids["sampler"]]
    )


def test_cfg_steers_the_image_as_the_pipelines_guidance_scale_does(engine, models_root):
    # The same seed with and without guidance gives another image...
    unguided = _graph_image(engine, "tiny-sd1", steps=2, cfg=1.0)
    guided = _graph_image(engine, "tiny-sd1", steps=2, cfg=3.0)
    assert np.abs(guided - unguided).max() > 0.05
    # ...and cfg is exactly the pipeline's guidance_scale (not a fixed or default one).
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        str(models_root / "checkpoints" / "tiny-sd1"), safety_checker=None
    )
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    want = pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        height=64,
        width=64,
        num_inference_steps=2,
        guidance_scale=3.0,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="np",
    ).images
    assert np.abs(guided - want).max() <= 1e-4
