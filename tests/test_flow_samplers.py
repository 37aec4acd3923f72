"""ComfyUI's samplers on flow-matching models (SD3: the embedded studio-tiny-flow; Flux: a
tiny one built in code), beside diffusers' euler, heun and dpmpp_2m.

euler_ancestral runs as ComfyUI runs it on them (``sample_euler_ancestral_RF``): each step's
latent is checked against that formula written out here, from the model's own prediction
at the step and ComfyUI's default noise (a generator seeded with seed + 1 on the CPU, one
draw of the unpacked latent's shape per step). dpm_2 runs through ComfyUI's own sampler
(nodes/ksamplers.py) with the model as a denoiser: the same path with ComfyUI's Euler gives
diffusers' Euler picture, and dpm_2 gets ComfyUI's sigmas (one more step, the next-to-last
dropped)."""

from __future__ import annotations

import contextlib
import itertools
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import dit_fixtures as fx  # noqa: E402

from nodes import dit  # noqa: E402
from studio.engine import Engine  # noqa: E402
from studio.graph import Workflow  # noqa: E402
from studio.library import installed_registry  # noqa: E402
from studio.settings import Settings  # noqa: E402

SEED, STEPS = 11, 4


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("anc-models")
    fx.flux_pipeline(fx.tiny_flux()).save_pretrained(str(root / "checkpoints" / "tiny-flux"))
    tmp = tmp_path_factory.mktemp("anc-run")
    settings = Settings(models_root=str(root), output_dir=str(tmp / "o"), input_dir=str(tmp / "i"))
    return Engine(installed_registry(), settings=settings)


def run(
    engine, ckpt: str, sampler: str, seed: int = SEED, cfg: float = 1.0, steps: int = STEPS,
    window: dict | None = None,
):  # fmt: skip
    """txt2img at 64x64 (Sampler (Advanced) with a ``window``): (the Sampler's latent, the
    picture as float pixels)."""
    wf = Workflow(installed_registry())
    add, c = wf.add_node, wf.connect
    ck = add("load_checkpoint", {"ckpt_name": ckpt}).id
    pos = add("text_encode", {"text": "a large red circle on a blue background"}).id
    neg = add("text_encode", {"text": ""}).id
    lat = add("empty_latent", {"width": 64, "height": 64}).id
    params = {"seed": seed, "steps": steps, "cfg": cfg, "sampler": sampler, "scheduler": "normal"}
    if window is None:
        s = add("sampler", {**params, "denoise": 1.0}).id
    else:
        s = add("sampler_advanced", {**params, "add_noise": True, **window}).id
    dec = add("vae_decode").id
    for side in (pos, neg):
        c(ck, "clip", side, "clip")
    c(ck, "model", s, "model")
    c(pos, "conditioning", s, "positive")
    c(neg, "conditioning", s, "negative")
    c(lat, "latent", s, "latent")
    c(s, "latent", dec, "latent")
    c(ck, "vae", dec, "vae")
    result = engine.run(wf, targets=[s, dec])
    assert result.ok, result.errors
    return result.outputs[s]["latent"]["samples"], result.outputs[dec]["image"].numpy()


def fresh(engine) -> Engine:
    """An engine with the same models root and no cached results."""
    return Engine(installed_registry(), settings=engine.settings)


@contextlib.contextmanager
def model_calls(ckpt: str):
    """Each transformer call of the run inside: (its input latent, its noise level, the
    guided prediction)."""
    name = "_flux_call" if ckpt == "tiny-flux" else "_sd3_call"
    original = getattr(dit, name)
    calls: list[tuple[torch.Tensor, float, torch.Tensor]] = []

    def recording(net, x, t, inputs, cfg, guided, keep=None):
        pred = original(net, x, t, inputs, cfg, guided, keep)
        calls.append((x.detach().clone().float(), float(t) / 1000, pred.detach().clone().float()))
        return pred

    setattr(dit, name, recording)
    try:
        yield calls
    finally:
        setattr(dit, name, original)


@pytest.mark.parametrize("ckpt", ["studio-tiny-flow", "tiny-flux"])
def test_euler_ancestral_steps_as_comfyui_steps_a_flow_model(engine, ckpt):
    flux = ckpt == "tiny-flux"
    with model_calls(ckpt) as calls:
        samples, picture = run(fresh(engine), ckpt, "euler_ancestral", cfg=2.0)
    assert len(calls) == STEPS
    # ComfyUI's default noise: seed + 1 on the CPU, the unpacked latent's shape
    generator = torch.Generator("cpu").manual_seed(SEED + 1)
    shape = tuple(samples.shape)
    sigmas = [s for _, s, _ in calls] + [0.0]
    x = calls[0][0]
    for i, (x_in, _, v) in enumerate(calls):
        assert torch.allclose(x_in, x, atol=2e-5), f"step {i}"
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = x - s * v
        if s_next == 0:
            x = denoised
            continue
        down = s_next * (1 + (s_next / s - 1) * 1.0)  # eta 1
        renoise = (s_next**2 - down**2 * (1 - s_next) ** 2 / (1 - down) ** 2) ** 0.5
        x = down / s * x + (1 - down / s) * denoised
        noise = torch.randn(shape, generator=generator)
        x = (1 - s_next) / (1 - down) * x + (dit.pack(noise) if flux else noise) * renoise
    got = dit.pack(samples) if flux else samples
    assert torch.allclose(got.float(), x, atol=2e-5)
    assert np.isfinite(picture).all()


#: ComfyUI's stochastic samplers on flow models.
STOCHASTIC = (
    "euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral",
    "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde", "lcm",
)  # fmt: skip


@pytest.mark.parametrize("sampler", STOCHASTIC)
@pytest.mark.parametrize("ckpt", ["studio-tiny-flow", "tiny-flux"])
def test_stochastic_samplers_on_a_flow_model_are_seeded_and_differ_from_euler(
    engine, ckpt, sampler
):
    a = run(engine, ckpt, sampler)[1]
    assert np.isfinite(a).all()
    assert np.array_equal(a, run(fresh(engine), ckpt, sampler)[1])
    assert np.abs(a - run(engine, ckpt, sampler, seed=SEED + 1)[1]).max() > 4 / 255
    assert np.abs(a - run(engine, ckpt, "euler")[1]).max() > 4 / 255


def test_a_sampler_that_does_not_apply_to_flow_models_names_the_ones_that_do(engine):
    wf = Workflow(installed_registry())
    ck = wf.add_node("load_checkpoint", {"ckpt_name": "tiny-flux"}).id
    pos = wf.add_node("text_encode", {"text": "x"}).id
    lat = wf.add_node("empty_latent", {"width": 64, "height": 64}).id
    s = wf.add_node("sampler", {"steps": 2, "cfg": 1.0, "sampler": "ddpm"}).id
    wf.connect(ck, "clip", pos, "clip")
    wf.connect(ck, "model", s, "model")
    wf.connect(pos, "conditioning", s, "positive")
    wf.connect(pos, "conditioning", s, "negative")
    wf.connect(lat, "latent", s, "latent")
    result = engine.run(wf, targets=[s])
    assert not result.ok
    text = str(result.errors)
    assert "ddpm" in text and "dpmpp_2m_sde" in text and "ipndm" in text


def recording(monkeypatch, name: str) -> list[torch.Tensor]:
    """The sigmas each run of ComfyUI's sampler ``name`` gets."""
    from nodes import ksamplers

    seen: list[torch.Tensor] = []
    real = ksamplers.SAMPLERS[name]

    def record(model, x, sigmas, noise, callback):
        seen.append(sigmas.detach().clone())
        return real(model, x, sigmas, noise, callback)

    monkeypatch.setitem(ksamplers.SAMPLERS, name, record)
    return seen


@pytest.mark.parametrize("ckpt", ["studio-tiny-flow", "tiny-flux"])
@pytest.mark.parametrize("window", [None, {"start_at_step": 0, "end_at_step": 3}])
def test_comfyuis_sampler_path_with_its_euler_draws_diffusers_euler_picture(
    engine, ckpt, window, monkeypatch
):
    """The path dpm_2 takes (ComfyUI's sampler, the model as a denoiser x - sigma v), run
    with ComfyUI's Euler, equals diffusers' Euler: also stopping early without leftover
    noise (Sampler (Advanced) ending at step 3 of 4)."""
    want_latent, want = run(fresh(engine), ckpt, "euler", cfg=2.0, window=window)
    monkeypatch.setattr(dit, "K_FLOW_SAMPLERS", ("euler",))
    seen = recording(monkeypatch, "euler")
    got_latent, got = run(fresh(engine), ckpt, "euler", cfg=2.0, window=window)
    assert len(seen) == 1  # it took ComfyUI's sampler
    assert len(seen[0]) == (STEPS + 1 if window is None else 4)  # 3 steps, then down to 0
    assert float(seen[0][-1]) == 0.0
    assert torch.allclose(got_latent, want_latent, atol=2e-5)
    assert np.abs(got - want).max() <= 1 / 255


#: The steps each of ComfyUI's ODE samplers is measured at on a flow model: the multistep
#: ones (fixed weights or VP coordinates) diverge on studio-tiny-flow below ~20-30 steps.
K_STEPS = {"dpm_2": 8, "lms": 30, "ipndm": 30, "uni_pc": 30, "uni_pc_bh2": 30}


def test_every_comfy_sampler_on_flow_models_is_measured():
    assert set(K_STEPS) | set(STOCHASTIC) | {"ddim"} == set(dit.K_FLOW_SAMPLERS)


@pytest.mark.parametrize("ckpt", ["studio-tiny-flow", "tiny-flux"])
def test_ddim_on_a_flow_model_is_comfyuis_euler(engine, ckpt):
    _, ddim = run(fresh(engine), ckpt, "ddim", cfg=2.0)
    _, euler = run(engine, ckpt, "euler", cfg=2.0)
    assert np.abs(ddim - euler).max() <= 1 / 255


@pytest.mark.parametrize("name", sorted(K_STEPS))
@pytest.mark.parametrize("ckpt", ["studio-tiny-flow", "tiny-flux"])
def test_comfyuis_ode_samplers_on_a_flow_model_take_its_sigmas_and_converge(
    engine, ckpt, name, monkeypatch
):
    """ComfyUI's sigmas (dpm_2 and uni_pc: the schedule one step longer without its
    next-to-last) and a picture nearer the 60-step Euler picture than Euler's at 8 steps."""
    steps = K_STEPS[name]
    seen = recording(monkeypatch, name)
    _, picture = run(fresh(engine), ckpt, name, cfg=2.0, steps=steps)
    longer = name in ("dpm_2", "uni_pc", "uni_pc_bh2")
    monkeypatch.setattr(dit, "K_FLOW_SAMPLERS", (*dit.K_FLOW_SAMPLERS, "euler"))
    plain = recording(monkeypatch, "euler")
    run(fresh(engine), ckpt, "euler", cfg=2.0, steps=steps + longer)
    monkeypatch.undo()
    assert len(seen) == 1 and len(plain) == 1
    want = torch.cat([plain[0][:-2], plain[0][-1:]]) if longer else plain[0]
    assert torch.allclose(seen[0], want)
    _, fine = run(engine, ckpt, "euler", cfg=2.0, steps=60)
    _, coarse = run(engine, ckpt, "euler", cfg=2.0, steps=8)
    assert np.abs(picture - fine).mean() < np.abs(coarse - fine).mean()


@pytest.mark.parametrize("ckpt", ["studio-tiny-flow", "tiny-flux"])
def test_dpmpp_2s_ancestral_steps_as_comfyui_steps_a_flow_model(engine, ckpt):
    """ComfyUI's ``sample_dpmpp_2s_ancestral_RF`` written out: per step a call at the
    step's level, a call at the midpoint of the flow's log-SNR on the way down to
    s_next^2 / s (0.9999 from the top), then fresh noise back up to s_next."""
    flux = ckpt == "tiny-flux"
    with model_calls(ckpt) as calls:
        samples, _ = run(fresh(engine), ckpt, "dpmpp_2s_ancestral", cfg=2.0)
    assert len(calls) == 2 * STEPS - 1
    generator = torch.Generator("cpu").manual_seed(SEED + 1)
    sigmas = [calls[2 * i][1] for i in range(STEPS)] + [0.0]
    x = calls[0][0]

    def snr(s):
        return math.log((1 - s) / s)

    for i in range(STEPS):
        s, s1 = sigmas[i], sigmas[i + 1]
        x_in, _, v = calls[2 * i]
        assert torch.allclose(x_in, x, atol=5e-5), f"step {i}"
        den = x - s * v
        if s1 == 0:
            x = den
            continue
        down = s1 * s1 / s
        mid = 0.9999 if s == 1.0 else 1 / (math.exp((snr(s) + snr(down)) / 2) + 1)
        u, t_mid, v_mid = calls[2 * i + 1]
        assert abs(t_mid - mid) < 1e-5
        assert torch.allclose(u, mid / s * x + (1 - mid / s) * den, atol=5e-5)
        x = down / s * x + (1 - down / s) * (u - mid * v_mid)
        renoise = (s1**2 - down**2 * (1 - s1) ** 2 / (1 - down) ** 2) ** 0.5
        noise = torch.randn(tuple(samples.shape), generator=generator)
        x = (1 - s1) / (1 - down) * x + (dit.pack(noise) if flux else noise) * renoise
    got = dit.pack(samples) if flux else samples
    assert torch.allclose(got.float(), x, atol=5e-5)


@pytest.mark.parametrize("ckpt", ["studio-tiny-flow", "tiny-flux"])
def test_dpm_2_ancestral_steps_as_comfyui_steps_a_flow_model(engine, ckpt):
    """ComfyUI's ``sample_dpm_2_ancestral_RF`` written out: DPM-Solver-2 with its midpoint
    in log sigma on the way down to s_next^2 / s, then fresh noise back up to s_next."""
    flux = ckpt == "tiny-flux"
    with model_calls(ckpt) as calls:
        samples, _ = run(fresh(engine), ckpt, "dpm_2_ancestral", cfg=2.0)
    assert len(calls) == 2 * STEPS - 1
    generator = torch.Generator("cpu").manual_seed(SEED + 1)
    sigmas = [calls[2 * i][1] for i in range(STEPS)] + [0.0]
    x = calls[0][0]
    for i in range(STEPS):
        s, s1 = sigmas[i], sigmas[i + 1]
        x_in, _, v = calls[2 * i]
        assert torch.allclose(x_in, x, atol=5e-5), f"step {i}"
        if s1 == 0:
            x = x - s * v  # Euler to 0: the clean prediction
            continue
        down = s1 * s1 / s
        mid = math.exp((math.log(s) + math.log(down)) / 2)
        x2, t_mid, v_mid = calls[2 * i + 1]
        assert abs(t_mid - mid) < 1e-5
        assert torch.allclose(x2, x + v * (mid - s), atol=5e-5)
        x = x + v_mid * (down - s)
        renoise = (s1**2 - down**2 * (1 - s1) ** 2 / (1 - down) ** 2) ** 0.5
        noise = torch.randn(tuple(samples.shape), generator=generator)
        x = (1 - s1) / (1 - down) * x + (dit.pack(noise) if flux else noise) * renoise
    got = dit.pack(samples) if flux else samples
    assert torch.allclose(got.float(), x, atol=5e-5)


@pytest.mark.parametrize("sampler", ["dpm_2", "dpmpp_2s_ancestral", "dpmpp_2m_sde"])
def test_comfyuis_samplers_on_a_flow_model_keep_the_input_outside_a_noise_mask(
    engine, tmp_path, sampler
):
    """Inpainting through a noise mask (VAE Encode -> Set Latent Noise Mask): the latent
    outside the mask is the input's, as with diffusers' Euler; inside it is repainted."""
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    left = np.zeros((64, 64), np.uint8)
    left[:, :32] = 255
    Image.fromarray(left).save(tmp_path / "m.png")

    def inpaint(name: str) -> torch.Tensor:
        wf = Workflow(installed_registry())
        add, c = wf.add_node, wf.connect
        ck = add("load_checkpoint", {"ckpt_name": "studio-tiny-flow"}).id
        pos = add("text_encode", {"text": "a red circle"}).id
        photo = add("load_image", {"image": str(tmp_path / "p.png")}).id
        mask_image = add("load_image", {"image": str(tmp_path / "m.png")}).id
        mask = add("mask_from_image", {"channel": "red"}).id
        enc = add("vae_encode").id
        noise_mask = add("set_latent_noise_mask").id
        params = {"seed": 2, "steps": 6, "cfg": 2.0, "sampler": name, "scheduler": "normal"}
        s = add("sampler", {**params, "denoise": 1.0}).id
        c(ck, "clip", pos, "clip")
        c(ck, "model", s, "model")
        c(pos, "conditioning", s, "positive")
        c(pos, "conditioning", s, "negative")
        c(photo, "image", enc, "image")
        c(ck, "vae", enc, "vae")
        c(mask_image, "image", mask, "image")
        c(enc, "latent", noise_mask, "latent")
        c(mask, "mask", noise_mask, "mask")
        c(noise_mask, "latent", s, "latent")
        result = fresh(engine).run(wf, targets=[s])
        assert result.ok, result.errors
        return result.outputs[s]["latent"]["samples"]

    got, euler = inpaint(sampler), inpaint("euler")
    kept, repainted = (..., slice(9, None)), (..., slice(0, 7))  # latent columns off the edge
    assert torch.allclose(got[kept], euler[kept], atol=1e-5)
    assert float((got[repainted] - euler[repainted]).abs().mean()) > 0.02


@pytest.mark.parametrize("ckpt", ["studio-tiny-flow", "tiny-flux"])
def test_dpmpp_2m_sde_steps_as_comfyui_steps_a_flow_model(engine, ckpt, monkeypatch):
    """ComfyUI's ``sample_dpmpp_2m_sde`` on a CONST model written out: the first level moved
    0.01 % into the schedule (the log-SNR log((1 - s) / s) is infinite at 1), the
    exponential-integrator step in that log-SNR with the signal scale 1 - s_next, and the
    Brownian tree over [smallest nonzero sigma, 1] seeded with the seed, in the unpacked
    latent's shape."""
    torchsde = pytest.importorskip("torchsde")
    from nodes import ksamplers

    flux = ckpt == "tiny-flux"
    trees: list[torch.Tensor] = []
    real = ksamplers.noise_sampler

    def noting(name, x, sigmas, seed):
        trees.append(sigmas.detach().clone())
        return real(name, x, sigmas, seed)

    monkeypatch.setattr(ksamplers, "noise_sampler", noting)
    with model_calls(ckpt) as calls:
        samples, _ = run(fresh(engine), ckpt, "dpmpp_2m_sde", cfg=2.0)
    assert len(calls) == STEPS and len(trees) == 1
    schedule = trees[0]
    assert float(schedule[0]) == 1.0
    first = calls[0][1]
    assert 0.999 < first < 1.0
    if not flux:  # SD3's shift 3 at time 0.9999
        assert first == pytest.approx(3 * 0.9999 / (1 + 2 * 0.9999), abs=1e-6)
    sigmas = [first, *(float(v) for v in schedule[1:])]
    shape = tuple(samples.shape)
    low = schedule[schedule > 0].min()
    tree = torchsde.BrownianTree(low, torch.zeros(shape), schedule.max(), entropy=SEED)

    def lam(s):
        return math.log((1 - s) / s)

    x, old, h_last = calls[0][0], None, None
    for i, (x_in, _, v) in enumerate(calls):
        assert torch.allclose(x_in, x, atol=5e-5), f"step {i}"
        s, s1 = sigmas[i], sigmas[i + 1]
        den = x - s * v
        if s1 == 0:
            x = den
            continue
        h = lam(s1) - lam(s)
        keep = 1 - math.exp(-2 * h)
        new = s1 / s * math.exp(-h) * x + (1 - s1) * keep * den
        if old is not None:
            new = new + 0.5 * (1 - s1) * keep * (h / h_last) * (den - old)
        a, b = torch.tensor(s1, dtype=torch.float32), torch.tensor(s, dtype=torch.float32)
        w = -tree(a, b) / (b - a).sqrt()  # going down in sigma: the increment reversed
        x = new + (dit.pack(w) if flux else w) * s1 * math.sqrt(keep)
        old, h_last = den, h
    got = dit.pack(samples) if flux else samples
    assert torch.allclose(got.float(), x, atol=5e-5)


@pytest.mark.parametrize("ckpt", ["studio-tiny-flow", "tiny-flux"])
def test_dpmpp_sde_and_lcm_step_as_comfyui_on_a_flow_model(engine, ckpt):
    """dpmpp_sde: two calls a step (its last one call), the first below 1 as for 2M SDE;
    lcm: each step's input is the last clean prediction noised to the step's level as the
    flow mixes them, (1 - s) x0 + s n, with ComfyUI's default noise."""
    with model_calls(ckpt) as calls:
        run(fresh(engine), ckpt, "dpmpp_sde", cfg=2.0)
    assert len(calls) == 2 * STEPS - 1
    assert 0.999 < calls[0][1] < 1.0
    flux = ckpt == "tiny-flux"
    with model_calls(ckpt) as calls:
        samples, _ = run(fresh(engine), ckpt, "lcm", cfg=2.0)
    assert len(calls) == STEPS and calls[0][1] == 1.0
    generator = torch.Generator("cpu").manual_seed(SEED + 1)
    for (x, s, v), (x_next, s1, _) in itertools.pairwise(calls):
        n = torch.randn(tuple(samples.shape), generator=generator)
        den = x - s * v
        assert torch.allclose(x_next, (1 - s1) * den + s1 * (dit.pack(n) if flux else n), atol=5e-5)
    x, s, v = calls[-1]
    got = dit.pack(samples) if flux else samples
    assert torch.allclose(got.float(), x - s * v, atol=5e-5)
