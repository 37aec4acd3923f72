"""Differential Diffusion (ComfyUI's DifferentialDiffusion): with the node on the model, a soft
noise mask repaints gradually, each model call blending with the soft mask thresholded at that
call's place in the schedule. On the embedded studio-tiny UNet (ComfyUI schedule, and a
diffusers one) and a tiny Flux built in code, against a reference loop written here from
ComfyUI's formula; a hard mask is unchanged by the node, and strength 0 is no node."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import dit_fixtures as fx  # noqa: E402
from PIL import Image  # noqa: E402

from studio.engine import Engine  # noqa: E402
from studio.graph import Workflow  # noqa: E402
from studio.library import installed_registry  # noqa: E402
from studio.settings import Settings  # noqa: E402

SIZE, SEED, STEPS = 64, 5, 4


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A models root with the tiny Flux as a diffusers folder (studio-tiny is embedded), a
    photo, a soft mask (a left-to-right ramp in 8-pixel columns), a hard one and a full one."""
    root = tmp_path_factory.mktemp("dd-models")
    fx.flux_pipeline(fx.tiny_flux()).save_pretrained(str(root / "checkpoints" / "tiny-flux"))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / "photo.png")
    ramp = np.repeat(np.round(np.linspace(0, 255, SIZE // 8)), 8).astype(np.uint8)
    Image.fromarray(np.tile(ramp, (SIZE, 1))).save(root / "soft.png")
    hard = np.zeros((SIZE, SIZE), np.uint8)
    hard[:, : SIZE // 2] = 255
    Image.fromarray(hard).save(root / "hard.png")
    Image.fromarray(np.full((SIZE, SIZE), 255, np.uint8)).save(root / "full.png")
    return root


@pytest.fixture(scope="module")
def engine(root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dd-run")
    settings = Settings(models_root=str(root), output_dir=str(tmp / "o"), input_dir=str(tmp / "i"))
    return Engine(installed_registry(), settings=settings)


def picture(engine, root, ckpt, mask, *, strength=None, scheduler="comfy_normal", window=None):
    """Photo -> VAE Encode -> Set Latent Noise Mask -> Sampler (Sampler (Advanced) with the
    ``window``'s params) through Differential Diffusion when ``strength`` is given -> VAE
    Decode, as float pixels."""
    flux = ckpt == "tiny-flux"
    wf = Workflow(installed_registry())
    add, c = wf.add_node, wf.connect
    ck = add("load_checkpoint", {"ckpt_name": ckpt}).id
    pos = add("text_encode", {"text": "a red fox"}).id
    neg = add("text_encode", {"text": "blurry"}).id
    photo = add("load_image", {"image": str(root / "photo.png")}).id
    mask_img = add("load_image", {"image": str(root / mask)}).id
    m = add("mask_from_image", {"channel": "red"}).id
    enc = add("vae_encode").id
    noise_mask = add("set_latent_noise_mask").id
    params = {"seed": SEED, "steps": STEPS, "cfg": 1.0 if flux else 4.0, "sampler": "euler"}
    params["scheduler"] = scheduler
    if window is None:
        s = add("sampler", {**params, "denoise": 1.0}).id
    else:
        s = add("sampler_advanced", {**params, "add_noise": True, **window}).id
    dec = add("vae_decode").id
    out = add("preview_image").id
    for side in (pos, neg):
        c(ck, "clip", side, "clip")
    model = (ck, "model")
    if strength is not None:
        dd = add("differential_diffusion", {"strength": strength}).id
        c(ck, "model", dd, "model")
        model = (dd, "model")
    c(*model, s, "model")
    c(pos, "conditioning", s, "positive")
    c(neg, "conditioning", s, "negative")
    c(photo, "image", enc, "image")
    c(ck, "vae", enc, "vae")
    c(mask_img, "image", m, "image")
    c(enc, "latent", noise_mask, "latent")
    c(m, "mask", noise_mask, "mask")
    c(noise_mask, "latent", s, "latent")
    c(s, "latent", dec, "latent")
    c(ck, "vae", dec, "vae")
    c(dec, "image", out, "images")
    result = engine.run(wf)
    assert result.ok, result.errors
    return result.outputs[dec]["image"].numpy()


def soft_latent_mask(root, size: tuple[int, int]) -> torch.Tensor:
    pixels = np.asarray(Image.open(root / "soft.png"), dtype=np.float32) / 255.0
    m = torch.from_numpy(pixels)[None, None]
    return torch.nn.functional.interpolate(m, size=size)


def comfy_mask(soft: torch.Tensor, current: float, start: float, end: float, strength: float):
    """ComfyUI's DifferentialDiffusion.forward: the thresholded mask, mixed by strength."""
    threshold = (current - end) / (start - end)
    binary = (soft >= threshold).to(soft.dtype)
    return strength * binary + (1 - strength) * soft if strength < 1 else binary


#: Sampler (Advanced) running steps 1..3 of 6 (timesteps 799, 599, 400), leaving noise
#: (at 200): its own span, not the schedule's.
LEFTOVER = {"steps": 6, "start_at_step": 1, "end_at_step": 4, "return_with_leftover_noise": True}


@pytest.mark.parametrize("window", [None, LEFTOVER])
def test_the_unet_sampler_equals_comfyuis_loop(engine, root, monkeypatch, window):
    """studio-tiny, ComfyUI's normal schedule and euler: the picture with the node equals a run
    of the full-mask graph whose model calls do ComfyUI's Differential Diffusion here; in
    Sampler (Advanced), over the steps it runs."""
    from nodes import ksampling

    strength = 0.7
    got = picture(engine, root, "studio-tiny", "soft.png", strength=strength, window=window)
    real_run = ksampling.run

    def reference_run(ctx, ks, x, predict, keep, on_step, differential=None):
        assert differential is None
        full, init, drawn = keep
        assert bool((full == 1).all()), full.unique()
        soft = soft_latent_mask(root, tuple(x.shape[-2:])).to(x.device)
        ms = ks.ms
        ts_from = float(ms.timestep(ks.sigmas[:1])[0])
        ts_to = float(ms.timestep(torch.maximum(ks.sigmas[-1:], ms.sigma_min.reshape(1)))[0])

        def model_call(x_in, i, t):
            sigma = ks.sigma.to(x_in.device)
            current = float(ms.timestep(sigma.cpu().reshape(1))[0])
            m = comfy_mask(soft, current, ts_from, ts_to, strength)
            x_m = x_in * m + (init + drawn * sigma) * (1 - m)
            den = ms.denoised(predict(x_m, i, t).float(), x_m, sigma)
            den = den * m + init * (1 - m)
            # the output whose denoised latent at x_in is den (v-prediction)
            s2 = sigma**2 + 1.0
            return (x_in / s2 - den) * s2**0.5 / sigma

        return real_run(ctx, ks, x, model_call, keep, on_step)

    monkeypatch.setattr(ksampling, "run", reference_run)
    want = picture(engine, root, "studio-tiny", "full.png", window=window)
    monkeypatch.undo()
    assert np.abs(got - want).max() <= 1 / 255
    plain = picture(engine, root, "studio-tiny", "soft.png", window=window)
    assert np.abs(got - plain).max() > 4 / 255


def test_the_flux_sampler_equals_comfyuis_loop(engine, root, monkeypatch):
    """The tiny Flux: the picture with the node equals a run of the full-mask graph whose
    model calls do ComfyUI's Differential Diffusion (inside each call) here."""
    from nodes import dit

    got = picture(engine, root, "tiny-flux", "soft.png", strength=1.0)
    start, call = dit._start, dit._flux_call
    seen: dict = {}

    def recorded_start(*args, **kwargs):
        init, noise, latents = start(*args, **kwargs)
        seen.update(init=init, noise=noise, sigmas=[])
        return init, noise, latents

    def model_call(net, x, t, inputs, cfg, guided, keep=None):
        h, w = seen["init"].shape[-2:]
        soft = dit.pack(soft_latent_mask(root, (h, w)).expand_as(seen["init"]).to(x.dtype))
        init, noise = dit.pack(seen["init"]), dit.pack(seen["noise"])
        sigma = float(t) / 1000
        seen["sigmas"].append(sigma)
        # ComfyUI's Flux: 10,000 training steps, shifted by mu; sigma_min its first
        seq = x.shape[1]
        slope = (1.15 - 0.5) / (4096 - 256)
        mu = seq * slope + 0.5 - slope * 256
        sigma_min = math.exp(mu) / (math.exp(mu) + (1 / 1e-4 - 1))
        m = comfy_mask(soft, sigma, seen["sigmas"][0], sigma_min, 1.0)
        x_m = x * m + (sigma * noise + (1 - sigma) * init) * (1 - m)
        den = x_m - sigma * call(net, x_m, t, inputs, cfg, guided)
        den = den * m + init * (1 - m)
        return (x - den) / sigma  # the velocity whose euler step is ComfyUI's

    monkeypatch.setattr(dit, "_start", recorded_start)
    monkeypatch.setattr(dit, "_flux_call", model_call)
    want = picture(engine, root, "tiny-flux", "full.png")
    monkeypatch.undo()
    assert len(seen["sigmas"]) == STEPS
    assert np.abs(got - want).max() <= 1 / 255
    assert np.abs(got - picture(engine, root, "tiny-flux", "soft.png")).max() > 4 / 255


@pytest.mark.parametrize(
    "ckpt,scheduler",
    # (comfy_simple: a schedule whose last call is above the model's smallest sigma; at that
    # sigma ComfyUI's threshold is 0, and its last call repaints everywhere by a hair)
    [("studio-tiny", "comfy_simple"), ("studio-tiny", "normal"), ("tiny-flux", "normal")],
)
def test_a_hard_mask_gives_the_same_picture_and_strength_0_is_no_node(
    engine, root, ckpt, scheduler
):
    plain = picture(engine, root, ckpt, "hard.png", scheduler=scheduler)
    with_node = picture(engine, root, ckpt, "hard.png", strength=1.0, scheduler=scheduler)
    assert np.array_equal(plain, with_node)
    soft = picture(engine, root, ckpt, "soft.png", scheduler=scheduler)
    assert np.array_equal(
        soft, picture(engine, root, ckpt, "soft.png", strength=0.0, scheduler=scheduler)
    )
    # and the soft mask repaints differently with the node (more so at full strength)
    half = picture(engine, root, ckpt, "soft.png", strength=0.5, scheduler=scheduler)
    full = picture(engine, root, ckpt, "soft.png", strength=1.0, scheduler=scheduler)
    assert np.abs(half - soft).max() > 2 / 255
    assert np.abs(full - half).max() > 2 / 255


@pytest.mark.parametrize("ckpt", ["studio-tiny", "tiny-flux"])
def test_sampler_advanced_stopping_early_keeps_a_hard_mask(engine, root, ckpt):
    """Sampler (Advanced) ending before the schedule's end without leftover noise (its last
    call gives the clean latent): a hard mask as without the node, a soft one differs."""
    window = {"start_at_step": 0, "end_at_step": 3, "return_with_leftover_noise": False}
    kw = {"scheduler": "normal", "window": window}
    hard = picture(engine, root, ckpt, "hard.png", **kw)
    assert np.array_equal(hard, picture(engine, root, ckpt, "hard.png", strength=1.0, **kw))
    soft = picture(engine, root, ckpt, "soft.png", **kw)
    assert (
        np.abs(soft - picture(engine, root, ckpt, "soft.png", strength=1.0, **kw)).max() > 2 / 255
    )
