"""Inpainting: 9-channel checkpoints equal StableDiffusionInpaintPipeline; Set Latent Noise
Mask keeps the latent outside the mask; Composite keeps unmasked pixels exactly."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import diffusion_fixtures as fx  # noqa: E402
from PIL import Image  # noqa: E402

from studio.engine import Engine  # noqa: E402
from studio.graph import Workflow  # noqa: E402
from studio.library import installed_registry  # noqa: E402
from studio.settings import Settings  # noqa: E402

PROMPT, NEGATIVE, SEED, STEPS, CFG = "a blue square", "blurry", 11, 3, 5.0


def tiny_inpaint_parts():
    parts = fx.tiny_sd1()
    torch.manual_seed(5)
    parts["unet"] = diffusers.UNet2DConditionModel(
        **{**dict(parts["unet"].config), "in_channels": 9}
    ).eval()
    return parts


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    fx.save_folder(fx.sd1_pipeline(tiny_inpaint_parts()), root / "checkpoints" / "tiny-inpaint")
    fx.save_folder(fx.sd1_pipeline(fx.tiny_sd1()), root / "checkpoints" / "tiny-sd1")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "photo.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[:, :32] = 255  # repaint the left half
    Image.fromarray(mask).save(root / "mask.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "small-mask.png")
    return root


@pytest.fixture
def engine(models_root, tmp_path):
    settings = Settings(models_root=str(models_root), output_dir=str(tmp_path / "out"))
    yield Engine(installed_registry(), settings=settings)


def inpaint_graph(models_root, ckpt, *, how="encode_for_inpaint", grow=0, mask_file="mask.png"):
    wf = Workflow(installed_registry())
    add = wf.add_node
    ids = {
        "ckpt": add("load_checkpoint", {"ckpt_name": ckpt}).id,
        "pos": add("text_encode", {"text": PROMPT}).id,
        "neg": add("text_encode", {"text": NEGATIVE}).id,
        "photo": add("load_image", {"image": str(models_root / "photo.png")}).id,
        "mask_img": add("load_image", {"image": str(models_root / mask_file)}).id,
        "mask": add("mask_from_image", {"channel": "red"}).id,
        "sampler": add(
            "sampler",
            {
                "seed": SEED,
                "steps": STEPS,
                "cfg": CFG,
                "sampler": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
            },
        ).id,
        "decode": add("vae_decode").id,
        "composite": add("composite_masked").id,
        "out": add("preview_image").id,
    }
    c = wf.connect
    c(ids["ckpt"], "clip", ids["pos"], "clip")
    c(ids["ckpt"], "clip", ids["neg"], "clip")
    c(ids["ckpt"], "model", ids["sampler"], "model")
    c(ids["pos"], "conditioning", ids["sampler"], "positive")
    c(ids["neg"], "conditioning", ids["sampler"], "negative")
    c(ids["mask_img"], "image", ids["mask"], "image")
    if how == "encode_for_inpaint":
        enc = add("vae_encode_inpaint", {"grow_mask_by": grow}).id
        c(ids["photo"], "image", enc, "pixels")
        c(ids["ckpt"], "vae", enc, "vae")
        c(ids["mask"], "mask", enc, "mask")
        c(enc, "latent", ids["sampler"], "latent")
    elif how == "model_conditioning":  # ComfyUI's InpaintModelConditioning
        enc = add("inpaint_model_conditioning", {"noise_mask": True}).id
        c(ids["photo"], "image", enc, "pixels")
        c(ids["ckpt"], "vae", enc, "vae")
        c(ids["mask"], "mask", enc, "mask")
        c(ids["pos"], "conditioning", enc, "positive")
        c(ids["neg"], "conditioning", enc, "negative")
        c(enc, "positive", ids["sampler"], "positive")
        c(enc, "negative", ids["sampler"], "negative")
        c(enc, "latent", ids["sampler"], "latent")
    else:
        enc = add("vae_encode").id
        noise_mask = add("set_latent_noise_mask").id
        c(ids["photo"], "image", enc, "image")
        c(ids["ckpt"], "vae", enc, "vae")
        c(enc, "latent", noise_mask, "latent")
        c(ids["mask"], "mask", noise_mask, "mask")
        c(noise_mask, "latent", ids["sampler"], "latent")
    ids["encode"] = enc
    c(ids["sampler"], "latent", ids["decode"], "latent")
    c(ids["ckpt"], "vae", ids["decode"], "vae")
    c(ids["photo"], "image", ids["composite"], "original")
    c(ids["decode"], "image", ids["composite"], "changed")
    c(ids["mask"], "mask", ids["composite"], "mask")
    c(ids["composite"], "image", ids["out"], "images")
    return wf, ids


def test_nine_channel_inpaint_equals_pipeline(engine, models_root):
    wf, ids = inpaint_graph(models_root, "tiny-inpaint")
    result = engine.run(wf)
    assert result.ok, result.errors
    got = result.outputs[ids["decode"]]["image"].numpy()
    pipe = diffusers.StableDiffusionInpaintPipeline.from_pretrained(
        str(models_root / "checkpoints" / "tiny-inpaint"), safety_checker=None
    )
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    want = pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        image=Image.open(models_root / "photo.png").convert("RGB"),
        mask_image=Image.open(models_root / "mask.png").convert("L"),
        height=64,
        width=64,
        strength=1.0,
        num_inference_steps=STEPS,
        guidance_scale=CFG,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="np",
    ).images
    assert got.shape == want.shape == (1, 64, 64, 3)
    assert np.abs(got - want).max() <= 1e-4


def test_noise_mask_keeps_the_latent_outside_the_mask(engine, models_root):
    wf, ids = inpaint_graph(models_root, "tiny-sd1", how="noise_mask")
    result = engine.run(wf)
    assert result.ok, result.errors
    before = result.outputs[ids["encode"]]["latent"]["samples"]
    after = result.outputs[ids["sampler"]]["latent"]["samples"]
    right = slice(4, None)  # latent columns of the unmasked right half
    assert torch.equal(after[..., right], before[..., right])
    assert (after[..., :4] - before[..., :4]).abs().max() > 1e-2  # the left half was repainted
    # and the composite puts back the original pixels exactly where the mask is 0
    final = result.outputs[ids["composite"]]["image"]
    photo = result.outputs[ids["photo"]]["image"]
    assert torch.equal(final[:, :, 32:], photo[:, :, 32:])


def _picture(engine, wf, ids, denoise=1.0):
    wf.get_node(ids["sampler"]).params["denoise"] = denoise
    result = engine.run(wf)
    assert result.ok, result.errors
    return result.outputs[ids["decode"]]["image"].numpy()


def test_inpaint_model_conditioning_is_comfyuis_way_on_both_kinds_of_checkpoint(
    engine, models_root
):
    """On an ordinary checkpoint: VAE Encode + Set Latent Noise Mask (the picture itself as
    the start, so denoise 0.6 keeps its colours); on a 9-channel one at denoise 1: VAE
    Encode for Inpaint's picture (the same masked image and mask reach the UNet)."""
    got = _picture(engine, *inpaint_graph(models_root, "tiny-sd1", how="model_conditioning"), 0.6)
    want = _picture(engine, *inpaint_graph(models_root, "tiny-sd1", how="noise_mask"), 0.6)
    assert np.array_equal(got, want)
    greyed = _picture(engine, *inpaint_graph(models_root, "tiny-sd1"), 0.6)
    assert np.abs(got - greyed).max() > 0.05
    got = _picture(engine, *inpaint_graph(models_root, "tiny-inpaint", how="model_conditioning"))
    want = _picture(engine, *inpaint_graph(models_root, "tiny-inpaint"))
    assert np.abs(got - want).max() <= 1e-6


def test_inpaint_checkpoint_needs_the_inpaint_latent(engine, models_root):
    wf, ids = inpaint_graph(models_root, "tiny-inpaint", how="noise_mask")
    result = engine.run(wf)
    assert "inpainting checkpoint" in result.errors[ids["sampler"]]
    assert "VAE Encode for Inpaint" in result.errors[ids["sampler"]]


def test_mask_of_another_size_is_a_clear_error(engine, models_root):
    wf, ids = inpaint_graph(models_root, "tiny-sd1", mask_file="small-mask.png")
    result = engine.run(wf)
    assert "the mask is 32x32 but the image is 64x64" in result.errors[ids["encode"]]


def test_grow_mask_by_widens_the_repainted_area(engine, models_root):
    wf, ids = inpaint_graph(models_root, "tiny-sd1", grow=6)
    result = engine.run(wf)
    assert result.ok, result.errors
    noise_mask = result.outputs[ids["encode"]]["latent"]["noise_mask"]
    assert noise_mask[0, 10, 37] == 1 and noise_mask[0, 10, 39] == 0


def test_area_prompts_on_a_nine_channel_checkpoint(engine, models_root):
    """The UNet's mask and masked image are cut to an area prompt's part, as ComfyUI cuts
    them: an area over the whole image is the plain prompt, one over the right half changes
    that half only (one step, so the left half sees the same predictions)."""

    def latent(area=None):
        wf, ids = inpaint_graph(models_root, "tiny-inpaint")
        wf.get_node(ids["sampler"]).params["steps"] = 1
        if area is not None:
            other = wf.add_node("text_encode", {"text": "a red circle"}).id
            wf.connect(ids["ckpt"], "clip", other, "clip")
            x, width = area
            placed = wf.add_node(
                "conditioning_set_area", {"x": x, "y": 0, "width": width, "height": 64}
            ).id
            wf.connect(other, "conditioning", placed, "conditioning")
            comb = wf.add_node("conditioning_combine").id
            wf.connect(ids["pos"], "conditioning", comb, "conditioning_1")
            wf.connect(placed, "conditioning", comb, "conditioning_2")
            wf.connect(comb, "conditioning", ids["sampler"], "positive")
        result = engine.run(wf)
        assert result.ok, result.errors
        return result.outputs[ids["sampler"]]["latent"]["samples"]

    plain = latent()
    right = latent((32, 32))
    assert torch.allclose(right[..., :4], plain[..., :4], atol=1e-5)
    assert (right[..., 4:] - plain[..., 4:]).abs().max() > 1e-3
    whole = latent((0, 64))  # both prompts everywhere, equal weights: their average
    assert (whole - plain).abs().max() > 1e-3
    assert (whole - right)[..., 4:].abs().max() > 1e-4  # the right half's weights fade in
