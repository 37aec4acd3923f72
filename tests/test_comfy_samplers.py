"""ComfyUI's samplers (nodes/ksamplers.py) checked against the published formulas.

No ComfyUI here (CI has neither network nor checkout; benchmarks/bench_comfy_parity.py
compares with ComfyUI's own code when given one). Instead:

- on Gaussian data N(mu, v), whose exact denoiser D(x, s) = (v x + s^2 mu) / (v + s^2) and
  whose probability-flow ODE solution x(s) = mu + (x_T - mu) sqrt(v + s^2) / sqrt(v + s_T^2)
  are closed form, the ODE samplers converge to that solution (the second-order and
  multistep ones much faster than Euler) and the stochastic ones sample N(mu, v);
- single steps equal references written here from the papers' equations;
- the noise is ComfyUI's: a CPU generator seeded ``seed + 1`` for the ancestral samplers, a
  torchsde Brownian tree seeded ``seed`` over [sigma_min, sigma_max] for the SDE ones;
- model calls and sigmas per step count as ComfyUI's KSampler (dpm_2 and uni_pc drop the
  next-to-last sigma of a schedule one step longer).
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from nodes import ksamplers, ksampling  # noqa: E402
from nodes.values import COMFY_SAMPLERS  # noqa: E402

SD15 = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}
MS = ksampling.ModelSampling(SD15)
MU, VAR = 0.7, 0.25
ODE = ("euler", "heun", "dpm_2", "lms", "dpmpp_2m", "ddim", "uni_pc", "uni_pc_bh2", "ipndm")
STOCHASTIC = (
    "euler_ancestral",
    "dpm_2_ancestral",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_2m_sde",
    "dpmpp_3m_sde",
    "ddpm",
)


def test_every_comfy_sampler_has_an_implementation():
    assert set(COMFY_SAMPLERS) == set(ksamplers.SAMPLERS)
    # lcm (checked by its noise below) jumps to the clean prediction at each step: exact
    # only for a consistency model, so it does not sample Gaussian data from its denoiser
    assert set(ODE) | set(STOCHASTIC) | {"lcm"} == set(COMFY_SAMPLERS)


def gaussian(x: torch.Tensor, sigma: torch.Tensor, i: int = 0) -> torch.Tensor:
    s2 = torch.as_tensor(sigma, dtype=x.dtype) ** 2
    return (VAR * x + s2 * MU) / (VAR + s2)


def ode_solution(x_t: torch.Tensor, sigma_t: float, sigma: float = 0.0) -> torch.Tensor:
    return MU + (x_t - MU) * math.sqrt(VAR + sigma**2) / math.sqrt(VAR + sigma_t**2)


def walk(name, sigmas, x, seed=0, model=gaussian):
    noise = ksamplers.noise_sampler(name, x, sigmas, seed)
    return ksamplers.SAMPLERS[name](model, x, sigmas, noise, lambda i, d: None)


def start(seed: int, sigma: torch.Tensor, shape=(1, 4, 32, 32)) -> torch.Tensor:
    return ksampling.noise(shape, seed) * (1 + sigma**2) ** 0.5


@pytest.mark.parametrize("name", ODE)
def test_ode_samplers_converge_to_the_exact_flow(name):
    sigmas = ksampling.ksampler_sigmas(MS, "comfy_karras", 30, sampler=name)
    x_t = start(1, sigmas[0])
    want = ode_solution(x_t.double(), float(sigmas[0])).float()
    if name.startswith("uni_pc"):  # UniPC stops at sigma 0.001, not 0
        want = ode_solution(x_t.double(), float(sigmas[0]), 0.001).float()
    err = float((walk(name, sigmas, x_t) - want).abs().max())
    euler = float((walk("euler", sigmas, x_t) - want).abs().max())
    assert euler < 0.2  # measured 0.12 over 16,384 values
    if name not in ("euler", "ddim"):  # higher order: far closer than Euler's
        assert err < min(2e-2, euler / 5), (err, euler)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_samplers_sample_the_data_distribution(name):
    sigmas = ksampling.ksampler_sigmas(MS, "comfy_karras", 40, sampler=name)
    x = walk(name, sigmas, start(2, sigmas[0], (1, 4, 64, 64)), seed=2)
    z = (x - MU) / math.sqrt(VAR)
    assert abs(float(z.mean())) < 0.05
    # the first-order ones are still biased at 40 steps (measured 0.92 for both: with an
    # exact denoiser DDPM's posterior step and the Euler ancestral step agree)
    first_order = name in ("euler_ancestral", "ddpm")
    assert abs(float(z.std()) - 1.0) < (0.1 if first_order else 0.03)
    # the noise matters: another seed gives another sample
    other = walk(name, sigmas, start(2, sigmas[0], (1, 4, 64, 64)), seed=3)
    assert torch.equal(walk(name, sigmas, start(2, sigmas[0], (1, 4, 64, 64)), seed=2), x)
    assert float((other - x).abs().max()) > 0.1


def test_a_heun_step_is_karras_algorithm_2():
    s, s1 = torch.tensor(3.0), torch.tensor(1.2)
    x = torch.full((1, 1, 1, 1), 2.5)
    got = walk("heun", torch.stack([s, s1]), x)
    # by hand, in floats: d = (x - D(x, s)) / s; Euler predictor; slopes averaged
    xv, sv, s1v = 2.5, 3.0, 1.2

    def den(v, sig):
        return (VAR * v + sig * sig * MU) / (VAR + sig * sig)

    d = (xv - den(xv, sv)) / sv
    x2 = xv + d * (s1v - sv)
    d2 = (x2 - den(x2, s1v)) / s1v
    assert float(got) == pytest.approx(xv + (d + d2) / 2 * (s1v - sv), rel=1e-6)


def test_a_dpm_2_step_uses_the_log_midpoint():
    s, s1 = 3.0, 1.2
    got = walk("dpm_2", torch.tensor([s, s1]), torch.full((1, 1, 1, 1), 2.5))
    mid = math.sqrt(s * s1)  # the midpoint in log sigma

    def den(v, sig):
        return (VAR * v + sig * sig * MU) / (VAR + sig * sig)

    d = (2.5 - den(2.5, s)) / s
    x2 = 2.5 + d * (mid - s)
    d2 = (x2 - den(x2, mid)) / mid
    assert float(got) == pytest.approx(2.5 + d2 * (s1 - s), rel=1e-6)


def test_ipndm_steps_are_adams_bashforth_with_fixed_weights():
    """iPNDM's fourth step: the current slope and three past ones weighted 55, -59, 37, -9
    (over 24) times the step, whatever the spacing; the first steps use fewer."""
    sigmas = torch.tensor([8.0, 5.0, 3.0, 2.0, 1.0, 0.5])
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def model(x, sigma, i):
        den = gaussian(x, sigma)
        seen.append((x, (x - den) / sigma))
        return den

    x = start(4, sigmas[0], (1, 4, 8, 8))
    out = ksamplers.ipndm(model, x, sigmas, None, lambda i, d: None)
    d = [slope for _, slope in seen]
    xs = [x for x, _ in seen] + [out]
    assert torch.allclose(xs[1], xs[0] + (sigmas[1] - sigmas[0]) * d[0])
    assert torch.allclose(xs[2], xs[1] + (sigmas[2] - sigmas[1]) * (3 * d[1] - d[0]) / 2)
    four = (55 * d[3] - 59 * d[2] + 37 * d[1] - 9 * d[0]) / 24
    assert torch.allclose(xs[4], xs[3] + (sigmas[4] - sigmas[3]) * four)
    five = (55 * d[4] - 59 * d[3] + 37 * d[2] - 9 * d[1]) / 24  # the oldest slope dropped
    assert torch.allclose(xs[5], xs[4] + (sigmas[5] - sigmas[4]) * five, atol=1e-6)


def test_lms_coefficients_are_the_adams_bashforth_integrals():
    ts = [4.0, 3.0, 2.0, 1.5, 1.0]
    # one point: the step length (Euler)
    assert ksamplers.lms_coefficient(ts, 0, 0, 1) == pytest.approx(-1.0)
    # two points, equal steps h = -1: AB2's 3/2 h and -1/2 h
    assert ksamplers.lms_coefficient(ts, 1, 0, 2) == pytest.approx(-1.5)
    assert ksamplers.lms_coefficient(ts, 1, 1, 2) == pytest.approx(0.5)
    # any order: the weights integrate a constant exactly (they sum to the step)
    for order in (1, 2, 3, 4):
        total = sum(ksamplers.lms_coefficient(ts, 3, j, order) for j in range(order))
        assert total == pytest.approx(ts[4] - ts[3])


def test_dpmpp_2m_sde_step_follows_its_formula():
    """One step after the first, with the noise given: the exponential-integrator SDE
    step of Lu et al. (2022b), midpoint form, written out in floats."""
    sigmas = torch.tensor([5.0, 2.0, 0.8])
    fixed = torch.full((1, 1, 1, 1), 0.3)
    got = ksamplers.dpmpp_2m_sde(
        gaussian, torch.full((1, 1, 1, 1), 4.0), sigmas, lambda a, b: fixed, lambda i, d: None
    )

    def den(v, sig):
        return (VAR * v + sig * sig * MU) / (VAR + sig * sig)

    x, old, h_last = 4.0, None, None
    for s, s1 in ((5.0, 2.0), (2.0, 0.8)):
        d = den(x, s)
        h = math.log(s) - math.log(s1)
        new = s1 / s * math.exp(-h) * x + (1 - math.exp(-2 * h)) * d
        if old is not None:
            new += 0.5 * (1 - math.exp(-2 * h)) * (h / h_last) * (d - old)
        x = new + 0.3 * s1 * math.sqrt(1 - math.exp(-2 * h))
        old, h_last = d, h
    assert float(got) == pytest.approx(x, rel=1e-5)


def test_ancestral_noise_is_a_cpu_generator_seeded_seed_plus_one():
    seen = []

    def zero(x, sigma, i):
        seen.append(x.clone())
        return torch.zeros_like(x)

    sigmas = torch.tensor([4.0, 2.0, 0.0])
    x = torch.zeros(1, 4, 8, 8)
    ksamplers.lcm(zero, x, sigmas, ksamplers.default_noise(x, 41), lambda i, d: None)
    drawn = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(42))
    assert torch.allclose(seen[1], drawn * 2.0)


def test_sde_noise_is_comfyuis_brownian_tree():
    torchsde = pytest.importorskip("torchsde")
    sigmas = ksampling.ksampler_sigmas(MS, "comfy_karras", 6, sampler="dpmpp_2m_sde")
    x = torch.zeros(1, 4, 8, 8)
    noise = ksamplers.brownian_noise(x, sigmas, 9)
    # the same tree, built as ComfyUI's BrownianTreeNoiseSampler builds it
    low, high = sigmas[sigmas > 0].min(), sigmas.max()
    tree = torchsde.BrownianTree(low, torch.zeros_like(x), high, entropy=9)
    s, s1 = sigmas[1], sigmas[2]
    want = -tree(s1, s) / (s - s1).sqrt()  # going down in sigma: the increment reversed
    assert torch.allclose(noise(s, s1), want)
    # a Brownian path: increments over adjacent intervals add up
    a, b, c = sigmas[1], sigmas[2], sigmas[3]
    whole = noise(a, c) * (a - c).sqrt()
    parts = noise(a, b) * (a - b).sqrt() + noise(b, c) * (b - c).sqrt()
    assert torch.allclose(whole, parts, atol=1e-5)
    assert abs(float(noise(a, c).std()) - 1.0) < 0.3


CALLS = {  # model calls for n steps to sigma 0 (the last step of the two-stage ones is Euler)
    "heun": lambda n: 2 * n - 1,
    "dpm_2": lambda n: 2 * n - 1,
    "dpm_2_ancestral": lambda n: 2 * n - 1,
    "dpmpp_2s_ancestral": lambda n: 2 * n - 1,
    "dpmpp_sde": lambda n: 2 * n - 1,
}


@pytest.mark.parametrize("name", COMFY_SAMPLERS)
def test_steps_and_model_calls_count_as_comfyuis(name):
    n = 6
    sigmas = ksampling.ksampler_sigmas(MS, "comfy_normal", n, sampler=name)
    assert len(sigmas) == n + 1 and float(sigmas[-1]) == 0.0
    plain = ksampling.schedule_sigmas(MS, "comfy_normal", n + 1)
    if name in ("dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"):
        # a schedule one step longer, its next-to-last sigma dropped
        assert torch.equal(sigmas, torch.cat([plain[:-2], plain[-1:]]))
    else:
        assert torch.equal(sigmas, ksampling.schedule_sigmas(MS, "comfy_normal", n))
    calls, steps = [], []

    def model(x, sigma, i):
        calls.append(i)
        return gaussian(x, sigma)

    x = start(0, sigmas[0], (1, 4, 8, 8))
    noise = ksamplers.noise_sampler(name, x, sigmas, 0)
    ksamplers.SAMPLERS[name](model, x, sigmas, noise, lambda i, d: steps.append(i))
    assert steps == list(range(n))
    assert len(calls) == CALLS.get(name, lambda k: k)(n)
    assert calls == sorted(calls)  # every call knows its step


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m_sde", "ddim", "dpmpp_sde"])
def test_inpainting_keeps_the_input_outside_the_mask(name):
    sigmas = ksampling.ksampler_sigmas(MS, "comfy_karras", 5, sampler=name)
    ks = ksampling.KSchedule(MS, name, sigmas, 4)
    init = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    drawn = ksampling.noise((1, 4, 8, 8), 4)
    x = ksampling.noise_scaling(MS, sigmas[0], drawn, init)
    inputs = []

    def predict(x_in, i, t):
        inputs.append(x_in)
        return (x_in - gaussian(x_in, ks.sigma)) / ks.sigma

    ctx = type("Ctx", (), {"check_interrupt": lambda self: None})()
    out = ksampling.run(ctx, ks, x, predict, (mask, init, drawn), lambda *a: None)
    outside = mask == 0
    assert torch.allclose(
        out.expand_as(init)[outside.expand_as(init)], init[outside.expand_as(init)], atol=1e-5
    )
    inside = float((out - init)[..., 2:6, 2:6].abs().max())
    assert inside > 0.05  # the masked part was sampled
    # each model call saw the input noised to that call's sigma outside the mask
    kept = ksampling.inpaint_noise(ks, drawn)
    first = inputs[0]
    assert torch.allclose(first[..., 0, 0], (init + kept * sigmas[0])[..., 0, 0], atol=1e-4)


def test_ddim_is_euler_but_inpaints_with_its_own_noise():
    sigmas = ksampling.ksampler_sigmas(MS, "comfy_normal", 5, sampler="ddim")
    x = start(3, sigmas[0], (1, 4, 8, 8))
    assert torch.equal(walk("ddim", sigmas, x), walk("euler", sigmas, x))
    ks = ksampling.KSchedule(MS, "ddim", sigmas, 3)
    first = ksampling.noise((1, 4, 8, 8), 3)
    want = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(4))
    assert torch.equal(ksampling.inpaint_noise(ks, first), want)


# -- flow-matching models: x = (1 - s) x0 + s n --------------------------------------------

#: The stochastic samplers with a flow-model form (ComfyUI's ``*_RF`` ones, and the SDE ones
#: in the flow's log-SNR).
FLOW_STOCHASTIC = tuple(n for n in STOCHASTIC if n != "ddpm")


def flow_gaussian(x: torch.Tensor, sigma: torch.Tensor, i: int = 0) -> torch.Tensor:
    """The exact denoiser E[x0 | x] of N(MU, VAR) data under a flow model's noising."""
    s = torch.as_tensor(sigma, dtype=x.dtype)
    a = 1 - s
    return MU + a * VAR / (a * a * VAR + s * s) * (x - a * MU)


def flow_sigmas(n: int, shift: float = 3.0) -> torch.Tensor:
    """SD3's schedule: n steps evenly spaced in time from 1, shifted, then 0."""
    t = torch.linspace(1, 0, n + 1)
    return shift * t / (1 + (shift - 1) * t)


def flow_walk(name: str, n: int, seed: int, flow: bool = True) -> torch.Tensor:
    sigmas = flow_sigmas(n)
    x = ksampling.noise((1, 4, 64, 64), seed)  # pure noise at sigma 1
    noise = ksamplers.noise_sampler(name, x, sigmas, seed)
    if name in ksamplers.SNR_OFFSET:  # ComfyUI's first level, 0.01 % into the schedule
        sigmas = sigmas.clone()
        sigmas[0] = flow_sigmas(10_000)[1]
    run = ksamplers.flow_form(name) if flow else ksamplers.SAMPLERS[name]
    return run(flow_gaussian, x, sigmas, noise, lambda i, d: None)


@pytest.mark.parametrize("name", FLOW_STOCHASTIC)
def test_flow_forms_sample_a_flow_models_data_distribution(name):
    """On SD3's schedule (shift 3), 200 steps; at 40 steps measured: std 0.87 (Euler
    ancestral), the second-order ones 0.97-1.07."""
    x = flow_walk(name, 200, seed=2)
    z = (x - MU) / math.sqrt(VAR)
    assert abs(float(z.mean())) < 0.03
    # measured 0.963 (first order) and 0.993-1.004
    assert abs(float(z.std()) - 1.0) < (0.06 if name == "euler_ancestral" else 0.015)
    assert torch.equal(flow_walk(name, 200, seed=2), x)
    assert float((flow_walk(name, 200, seed=3) - x).abs().max()) > 0.1


@pytest.mark.parametrize("name", sorted(ksamplers.FLOW_AWARE - {"lcm"}))
def test_the_unet_forms_of_the_sde_samplers_miss_a_flow_models_data(name):
    """The flow form is what makes them right: their UNet form (lambda = -log sigma, no
    signal scale) on the same flow model draws the wrong spread."""
    z = (flow_walk(name, 200, seed=2, flow=False) - MU) / math.sqrt(VAR)
    assert abs(float(z.mean())) > 0.5  # measured 1.06-1.09 (std 1.38-1.40)


def test_lcm_on_a_flow_model_renoises_as_the_flow_mixes():
    seen = []

    def model(x, sigma, i):
        seen.append(x.clone())
        return torch.full_like(x, 0.5)

    x = torch.zeros(1, 4, 8, 8)
    sigmas = torch.tensor([1.0, 0.6, 0.0])
    out = ksamplers.flow_form("lcm")(
        model, x, sigmas, ksamplers.default_noise(x, 41), lambda i, d: None
    )
    drawn = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(42))
    assert torch.allclose(seen[1], 0.6 * drawn + 0.4 * 0.5)
    assert torch.allclose(out, torch.full_like(x, 0.5))
