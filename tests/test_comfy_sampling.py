"""The Sampler's ComfyUI schedules (``comfy_*``): ComfyUI's sigmas, timesteps and noise.

The expected sigmas are computed here from ComfyUI's published formulas, in float64 numpy,
for SD1.5's scheduler config (scaled_linear betas 0.00085..0.012, 1,000 steps); the images
are compared with a k-diffusion loop written here from the same formulas on the tiny SD1
model's own UNet (CPU).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import diffusion_fixtures as fx  # noqa: E402

from nodes import ksampling  # noqa: E402
from studio.engine import Engine  # noqa: E402
from studio.library import installed_registry  # noqa: E402
from studio.settings import Settings  # noqa: E402

SD15 = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
}


def sd15_sigmas() -> np.ndarray:
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    ac = np.cumprod(1.0 - betas)
    return np.sqrt((1 - ac) / ac)


SIG = sd15_sigmas()
LOG = np.log(SIG.astype(np.float32)).astype(np.float64)


def at(t: float) -> float:
    """ComfyUI's sigma at a fractional timestep: log sigma interpolated."""
    lo, hi, w = math.floor(t), math.ceil(t), t - math.floor(t)
    return math.exp((1 - w) * LOG[lo] + w * LOG[hi])


def expected(schedule: str, n: int) -> list[float]:
    smin, smax = float(SIG[0]), float(SIG[-1])
    if schedule == "normal":  # timesteps evenly from 999 to 0, both included
        sig = [at(999 - i * 999 / (n - 1)) for i in range(n)]
    elif schedule == "sgm_uniform":  # n + 1 points from 999 to 0, the last dropped
        sig = [at(999 - i * 999 / n) for i in range(n)]
    elif schedule == "simple":  # every 1000/n-th training sigma from the top
        sig = [float(SIG[-(1 + int(i * 1000 / n))]) for i in range(n)]
    elif schedule == "karras":  # Karras et al. 2022, rho 7
        lo, hi = smin ** (1 / 7), smax ** (1 / 7)
        sig = [(hi + i / (n - 1) * (lo - hi)) ** 7 for i in range(n)]
    else:  # exponential
        sig = [
            math.exp(math.log(smax) + i / (n - 1) * (math.log(smin) - math.log(smax)))
            for i in range(n)
        ]
    return [*sig, 0.0]


MS = ksampling.ModelSampling(SD15)


def test_sd15_sigma_range_is_comfyuis():
    assert float(MS.sigma_max) == pytest.approx(14.6146, abs=1e-4)
    assert float(MS.sigma_min) == pytest.approx(0.0292, abs=1e-4)


@pytest.mark.parametrize("schedule", ["normal", "karras", "simple", "sgm_uniform", "exponential"])
@pytest.mark.parametrize("steps", [4, 7, 20])
def test_sigmas_follow_comfyuis_formulas(schedule, steps):
    got = ksampling.schedule_sigmas(MS, f"comfy_{schedule}", steps)
    assert got.dtype == torch.float32
    assert got.tolist() == pytest.approx(expected(schedule, steps), rel=2e-5, abs=1e-6)


def test_normal_starts_at_the_last_training_step_unlike_diffusers():
    """ComfyUI's normal at 4 steps feeds the UNet t = 999, 666, 333, 0; diffusers' spacing
    for SD1.5 (leading, offset 1) starts at 751: the two 'normal's differ."""
    from nodes.denoise import make_scheduler

    ks = ksampling.KSchedule(MS, "euler", ksampling.ksampler_sigmas(MS, "comfy_normal", 4), 0)
    assert ks.timesteps.tolist() == [999, 666, 333, 0]
    sgm = ksampling.KSchedule(MS, "euler", ksampling.ksampler_sigmas(MS, "comfy_sgm_uniform", 4), 0)
    assert sgm.timesteps.tolist() == [999, 749, 500, 250]  # nearest in log sigma
    diffusers = make_scheduler(fx.SCHEDULER_CONFIG, "euler", "normal")
    diffusers.set_timesteps(4)
    assert diffusers.timesteps.tolist()[0] == 751


def test_denoise_and_step_windows_take_comfyuis_slices():
    full = expected("normal", 10)
    # denoise 0.5 with 5 steps: the last 5 steps of a 10-step schedule
    got = ksampling.ksampler_sigmas(MS, "comfy_normal", 5, denoise=0.5)
    assert got.tolist() == pytest.approx(full[-6:], rel=2e-5)
    # KSamplerAdvanced 3..6 of 10 without leftover noise: ends at 0
    got = ksampling.ksampler_sigmas(MS, "comfy_normal", 10, start=3, end=6, full_denoise=True)
    assert got.tolist() == pytest.approx([*full[3:6], 0.0], rel=2e-5)
    got = ksampling.ksampler_sigmas(MS, "comfy_normal", 10, start=3, end=6)
    assert got.tolist() == pytest.approx(full[3:7], rel=2e-5)
    assert len(ksampling.ksampler_sigmas(MS, "comfy_normal", 10, start=10)) == 0


def test_other_samplers_are_refused_with_the_ones_that_work():
    from studio.errors import NodeError

    with pytest.raises(NodeError, match=r"euler, euler_ancestral, heun, .*, lcm"):
        ksampling.KSchedule(MS, "deis", ksampling.ksampler_sigmas(MS, "comfy_normal", 4), 0)


# -- on the tiny SD1 model -------------------------------------------------------------------

STEPS = 4
SEED = 5


@pytest.fixture(scope="module")
def parts():
    return fx.tiny_sd1()


@pytest.fixture(scope="module")
def engine(parts, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    fx.save_folder(fx.sd1_pipeline(parts), root / "checkpoints" / "tiny-sd1")
    settings = Settings(models_root=str(root), output_dir=str(root / "out"))
    return Engine(installed_registry(), settings=settings)


def sample(engine, sampler, scheduler, **kw):
    wf, ids = fx.txt2img(
        "tiny-sd1", steps=STEPS, seed=SEED, sampler=sampler, scheduler=scheduler, cfg=6.0
    )
    for k, v in kw.items():
        wf.set_param(ids["sampler"], k, v)
    result = engine.run(wf, targets=[ids["sampler"], ids["pos"], ids["neg"]])
    assert result.ok, result.errors
    conds = [result.outputs[ids[k]]["conditioning"][0].embeds for k in ("neg", "pos")]
    return result.outputs[ids["sampler"]]["latent"]["samples"], torch.cat(conds)


def reference(unet, embeds, sampler, schedule, cfg=6.0):
    """ComfyUI's KSampler on an Empty Latent, written from its formulas."""
    if sampler == "dpm_2":  # one step more, the next-to-last sigma dropped
        longer = expected(schedule, STEPS + 1)
        sig = torch.tensor([*longer[:-2], longer[-1]], dtype=torch.float32)
    else:
        sig = torch.tensor(expected(schedule, STEPS), dtype=torch.float32)
    g = torch.Generator("cpu").manual_seed(SEED)
    x = torch.randn((1, 4, 8, 8), generator=g) * (1 + sig[0] ** 2) ** 0.5
    ancestral = torch.Generator("cpu").manual_seed(SEED + 1)
    log_sigmas = torch.tensor(LOG, dtype=torch.float32)
    old = None

    def denoised(x, s):
        t = (s.log() - log_sigmas).abs().argmin().float()
        xin = torch.cat([x, x]) / (s**2 + 1) ** 0.5
        uncond, cond = unet(xin, t, encoder_hidden_states=embeds).sample.chunk(2)
        return x - (uncond + cfg * (cond - uncond)) * s

    with torch.no_grad():
        for i in range(STEPS):
            s, s1 = sig[i], sig[i + 1]
            den = denoised(x, s)
            d = (x - den) / s
            if sampler == "heun" and s1 > 0:  # Euler predictor, slopes of both ends averaged
                x2 = x + d * (s1 - s)
                x = x + (d + (x2 - denoised(x2, s1)) / s1) / 2 * (s1 - s)
            elif sampler == "dpm_2" and s1 > 0:  # the slope at the log-midpoint
                mid = (s * s1) ** 0.5
                x2 = x + d * (mid - s)
                x = x + (x2 - denoised(x2, mid)) / mid * (s1 - s)
            elif sampler in ("euler", "heun", "dpm_2"):
                x = x + (x - den) / s * (s1 - s)
            elif sampler == "euler_ancestral":
                up = min(s1, (s1**2 * (s**2 - s1**2) / s**2) ** 0.5)
                down = (s1**2 - up**2) ** 0.5
                if down == 0:
                    x = den
                else:
                    x = (
                        x
                        + (x - den) / s * (down - s)
                        + torch.randn(x.shape, generator=ancestral) * up
                    )
            else:
                h = (-s1.log()) - (-s.log())
                if old is None or s1 == 0:
                    x = (s1 / s) * x - (-h).expm1() * den
                else:
                    r = ((-s.log()) - (-sig[i - 1].log())) / h
                    x = (s1 / s) * x - (-h).expm1() * ((1 + 1 / (2 * r)) * den - 1 / (2 * r) * old)
                old = den
    return x


@pytest.mark.parametrize(
    "sampler,schedule",
    [
        ("euler", "normal"),
        ("euler", "sgm_uniform"),
        ("euler_ancestral", "karras"),
        ("dpmpp_2m", "simple"),
        ("heun", "normal"),
        ("dpm_2", "karras"),
    ],
)
def test_the_sampler_gives_comfyuis_latent(engine, parts, sampler, schedule):
    got, embeds = sample(engine, sampler, f"comfy_{schedule}")
    want = reference(parts["unet"], embeds, sampler, schedule)
    # float32 sigmas computed two ways differ in the last bits, nothing more
    assert (got - want).abs().max() <= 1e-3 * want.abs().max()


def test_studio_normal_is_not_comfyuis(engine, parts):
    got, embeds = sample(engine, "euler", "normal")
    want = reference(parts["unet"], embeds, "euler", "normal")
    assert (got - want).abs().max() > 0.1 * want.abs().max()


def test_first_noise_is_comfyuis(engine, monkeypatch):
    """The starting latent: torch.manual_seed(seed)'s randn in float32 on the CPU, times
    sqrt(1 + sigma_max^2) for an Empty Latent at full denoise, times sigma with denoise < 1."""
    monkeypatch.setattr(ksampling, "run", lambda ctx, ks, x, *a: x)  # stop before any step
    start, _ = sample(engine, "euler", "comfy_normal", seed=77)  # not cached
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(77))
    assert torch.allclose(start, noise * math.sqrt(1 + SIG[-1] ** 2), rtol=1e-5)
    start, _ = sample(engine, "euler", "comfy_normal", seed=77, denoise=0.5)
    first = expected("normal", 8)[-(STEPS + 1)]
    assert torch.allclose(start, noise * first, rtol=1e-5)


def test_imported_schedules_are_comfyuis_where_studio_reproduces_the_sampler():
    from nodes.values import COMFY_SAMPLERS, COMFY_SCHEDULES
    from studio.graph.importers import comfyui_map
    from studio.graph.importers.comfyui import import_comfyui

    assert comfyui_map.COMFY_EXACT_SAMPLERS == COMFY_SAMPLERS
    assert set(comfyui_map.COMFY_SCHEDULES.values()) == set(COMFY_SCHEDULES)

    def imported(sampler, scheduler):
        api = {
            "3": {
                "class_type": "KSampler",
                "inputs": {
                    "seed": 1,
                    "steps": 4,
                    "cfg": 7.0,
                    "sampler_name": sampler,
                    "scheduler": scheduler,
                    "denoise": 1.0,
                },
            }
        }
        result = import_comfyui(api, installed_registry(), source="api.json")
        return result.workflow.get_node("3").params["scheduler"], result.report

    assert imported("euler", "simple") == ("comfy_simple", [])
    assert imported("dpmpp_2m", "karras") == ("comfy_karras", [])
    assert imported("heun", "karras") == ("comfy_karras", [])
    assert imported("dpmpp_2m_sde", "exponential") == ("comfy_exponential", [])
    assert imported("uni_pc", "sgm_uniform") == ("comfy_sgm_uniform", [])
    scheduler, report = imported("deis", "karras")
    assert scheduler == "karras"  # Studio's diffusers karras, and the report says so
    assert any("differs from ComfyUI's" in r for r in report)


@pytest.mark.parametrize("steps", [1, 4, 9, 20])
def test_comfy_beta_takes_the_training_sigmas_at_beta_quantiles(steps):
    """ComfyUI's beta schedule: timesteps at the Beta(0.6, 0.6) quantiles 1, 1 - 1/n, ...,
    rounded to training steps, a repeat dropped (written here through the inverse regularised
    incomplete beta function, not scipy.stats)."""
    from scipy.special import betaincinv

    ts = [round(float(betaincinv(0.6, 0.6, 1 - i / steps)) * 999) for i in range(steps)]
    ts = [t for i, t in enumerate(ts) if i == 0 or t != ts[i - 1]]
    want = [float(SIG[t]) for t in ts] + [0.0]
    got = ksampling.schedule_sigmas(MS, "comfy_beta", steps)
    assert got.tolist() == pytest.approx(want, rel=1e-6)
    assert got[0] == pytest.approx(SIG[-1], rel=1e-6)  # starts at the top, like normal


@pytest.mark.parametrize("steps", [1, 2, 8, 25])
def test_comfy_linear_quadratic_is_a_line_then_a_parabola(steps):
    got = ksampling.schedule_sigmas(MS, "comfy_linear_quadratic", steps).double()
    smax = float(MS.sigma_max)
    assert len(got) == steps + 1
    assert float(got[0]) == pytest.approx(smax, rel=1e-6)
    assert float(got[-1]) == pytest.approx(0.0, abs=1e-6)
    assert bool((got[1:] < got[:-1]).all())  # always falling
    if steps < 2:
        return
    level = 1 - got / smax  # 0 .. 1
    lin = steps // 2
    # the first half falls linearly to 2.5 % noise removed at step lin ...
    assert level[:lin].tolist() == pytest.approx([i * 0.025 / lin for i in range(lin)], abs=1e-6)
    # ... and the rest lies on one parabola through (lin, 0.025) and (steps, 1)
    i = torch.arange(lin, steps + 1, dtype=torch.float64)
    coef = np.polyfit(i.numpy(), level[lin:].numpy(), 2) if steps - lin >= 2 else None
    if coef is not None:
        assert np.polyval(coef, lin) == pytest.approx(0.025, abs=1e-5)
        assert np.polyval(coef, steps) == pytest.approx(1.0, abs=1e-5)
        assert np.abs(np.polyval(coef, i.numpy()) - level[lin:].numpy()).max() < 1e-5


@pytest.mark.parametrize("steps", [1, 4, 10, 12])
def test_comfy_sd_turbo_takes_sd_turbos_ten_timesteps(steps):
    """ComfyUI's SDTurboScheduler at denoise 1: the sigmas of timesteps 999, 899, ..., 99
    (no more than those ten), then 0."""
    got = ksampling.schedule_sigmas(MS, "comfy_sd_turbo", steps).double().numpy()
    want = [*[SIG[t] for t in range(999, 0, -100)][:steps], 0.0]
    np.testing.assert_allclose(got, want, rtol=1e-5)
