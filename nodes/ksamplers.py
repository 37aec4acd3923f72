"""ComfyUI's samplers (k-diffusion style), for the Sampler's ``comfy_*`` schedules.

Each sampler walks a latent ``x`` down a list of sigmas (the last usually 0), calling a
*denoiser* ``model(x, sigma, i) -> denoised`` (the clean-latent prediction at noise level
``sigma``, during step ``i``). Written from the published formulas ComfyUI's
comfy/k_diffusion/sampling.py and comfy/extra_samplers/uni_pc.py implement:

* Euler and Heun steps on the probability-flow ODE dx/dsigma = (x - denoised) / sigma
  (Karras et al. 2022, "Elucidating the Design Space...", Algorithm 2, churn 0);
* DPM-Solver-2 (Lu et al. 2022), with its midpoint taken in log sigma, and its ancestral
  form (each step goes down to sigma_down, then adds fresh noise of size sigma_up);
* linear multistep (LMS, order 4): Adams-Bashforth on the ODE in sigma, the coefficients
  being the integrals of the Lagrange basis polynomials over each step; iPNDM (Zhang & Chen
  2023): Adams-Bashforth with the fixed weights of evenly spaced steps;
* DPM-Solver++ (Lu et al. 2022b) in the half-log-SNR time t = -log sigma: 2S ancestral,
  2M, the stochastic single-step "SDE" variant, and the 2M / 3M SDE multistep ones;
* UniPC (Zhao et al. 2023), the B(h) = h (bh1) and B(h) = e^h - 1 (bh2) variants, in
  variance-preserving coordinates;
* DDPM's ancestral step (Ho et al. 2020) in variance-preserving coordinates;
* LCM (Luo et al. 2023): jump to the clean prediction, renoise to the next sigma.

Noise: ancestral samplers draw from ComfyUI's default noise sampler (``randn`` from a
generator on the latent's device, seeded ``seed + 1`` on the CPU and ``seed`` on a GPU);
the SDE samplers from a Brownian tree (torchsde) over [sigma_min, sigma_max] seeded with
``seed``, on the CPU, increments scaled to unit variance, as ComfyUI's
BrownianTreeNoiseSampler. Imported lazily (imports torch).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch

#: (x, sigma, step index) -> the denoised latent.
Denoiser = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
#: (sigma, sigma_next) -> unit-variance noise shaped like the latent.
NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: (step index, denoised) -> None: called once per step with its first prediction.
Callback = Callable[[int, torch.Tensor], None]

#: Samplers whose ComfyUI KSampler computes ``steps + 1`` sigmas and drops the next-to-last
#: (they would otherwise spend their last, second-order step on the smallest sigmas).
DISCARD_PENULTIMATE = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})
#: Samplers that draw fresh noise each step from ComfyUI's default (seed + 1) generator.
ANCESTRAL = frozenset({"euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "ddpm", "lcm"})
#: Samplers whose noise comes from a Brownian tree seeded with the seed itself.
BROWNIAN = frozenset({"dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"})


# -- noise ------------------------------------------------------------------------------------


def default_noise(x: torch.Tensor, seed: int) -> NoiseSampler:
    """ComfyUI's default noise sampler: one generator on the latent's device, seeded with
    ``seed + 1`` on the CPU (``seed`` on a GPU), a fresh ``randn`` per call."""
    device = x.device
    gen_seed = int(seed) + 1 if device.type == "cpu" else int(seed)
    generator = torch.Generator(device=device).manual_seed(gen_seed % 2**64)

    def draw(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device)

    return draw


def brownian_noise(x: torch.Tensor, sigmas: torch.Tensor, seed: int) -> NoiseSampler:
    """Increments of one Brownian motion W over sigma in [smallest nonzero sigma, largest],
    kept on the CPU by torchsde's BrownianTree (entropy ``seed``, W = 0 at the low end).
    A call gives (W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|), sign following
    the direction of travel: unit variance, and the same path whatever the step sizes."""
    import torchsde

    positive = sigmas[sigmas > 0]
    low = positive.min().detach().cpu()
    high = sigmas.max().detach().cpu()
    w0 = torch.zeros(x.shape, dtype=x.dtype)
    tree = torchsde.BrownianTree(low, w0, high, entropy=int(seed))

    def draw(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        a, b = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        sign = 1.0
        if b < a:  # travelling down in sigma: the increment is taken backwards
            a, b, sign = b, a, -1.0
        with warnings.catch_warnings():
            # float32 sigmas can sit a rounding above the tree's float end (ComfyUI's too)
            warnings.filterwarnings("ignore", message="Should have", category=UserWarning)
            w = tree(a.detach().cpu().float(), b.detach().cpu().float())
        w = w.to(device=x.device, dtype=a.dtype) * sign
        return w / (b - a).abs().sqrt()

    return draw


# -- helpers ----------------------------------------------------------------------------------


def _slope(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """dx/dsigma of the probability-flow ODE."""
    return (x - denoised) / sigma


def ancestral_split(
    sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """An ancestral step from ``sigma`` to ``sigma_next`` as a deterministic step down to
    ``sigma_down`` plus fresh noise of size ``sigma_up``, with down^2 + up^2 = next^2 and
    up^2 = next^2 (sigma^2 - next^2) / sigma^2 (eta 1), never more than ``sigma_next``."""
    if not eta:
        return sigma_next, torch.zeros_like(sigma_next)
    up = torch.minimum(
        sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
    )
    down = (sigma_next**2 - up**2) ** 0.5
    return down, up


def _lam(sigma: torch.Tensor) -> torch.Tensor:
    """DPM-Solver's time: the half log signal-to-noise ratio, -log sigma."""
    return -sigma.log()


def _sig(lam: torch.Tensor) -> torch.Tensor:
    return (-lam).exp()


# -- the samplers (model, x, sigmas, noise, callback) -> x ------------------------------------


def euler(model: Denoiser, x, sigmas, noise: NoiseSampler, callback: Callback):
    for i in range(len(sigmas) - 1):
        s, s1 = sigmas[i], sigmas[i + 1]
        den = model(x, s, i)
        callback(i, den)
        x = x + _slope(x, s, den) * (s1 - s)
    return x


def euler_ancestral(model: Denoiser, x, sigmas, noise: NoiseSampler, callback: Callback):
    for i in range(len(sigmas) - 1):
        s, s1 = sigmas[i], sigmas[i + 1]
        den = model(x, s, i)
        down, up = ancestral_split(s, s1)
        callback(i, den)
        if down == 0:
            x = den
        else:
            x = x + _slope(x, s, den) * (down - s) + noise(s, s1) * up
    return x


def heun(model: Denoiser, x, sigmas, noise: NoiseSampler, callback: Callback):
    """Heun's second-order method: an Euler predictor, then the mean of the slopes at both
    ends (the last step, to sigma 0, is plain Euler: the slope there is undefined)."""
    for i in range(len(sigmas) - 1):
        s, s1 = sigmas[i], sigmas[i + 1]
        den = model(x, s, i)
        d = _slope(x, s, den)
        callback(i, den)
        dt = s1 - s
        if s1 == 0:
            x = x + d * dt
        else:
            x2 = x + d * dt
            d2 = _slope(x2, s1, model(x2, s1, i))
            x = x + (d + d2) / 2 * dt
    return x


def dpm_2(model: Denoiser, x, sigmas, noise: NoiseSampler, callback: Callback):
    """DPM-Solver-2 in sigma: an Euler half step to the log-midpoint sigma, then the full
    step with the slope found there."""
    for i in range(len(sigmas) - 1):
        s, s1 = sigmas[i], sigmas[i + 1]
        den = model(x, s, i)
        d = _slope(x, s, den)
        callback(i, den)
        if s1 == 0:
            x = x + d * (s1 - s)
        else:
            mid = s.log().lerp(s1.log(), 0.5).exp()
            x2 = x + d * (mid - s)
            d2 = _slope(x2, mid, model(x2, mid, i))
            x = x + d2 * (s1 - s)
    return x


def dpm_2_ancestral(model: Denoiser, x, sigmas, noise: NoiseSampler, callback: Callback):
    for i in range(len(sigmas) - 1):
        s, s1 = sigmas[i], sigmas[i + 1]
        den = model(x, s, i)
        down, up = ancestral_split(s, s1)
        callback(i, den)
        d = _slope(x, s, den)
        if down == 0:
            x = x + d * (down - s)
        else:
            mid = s.log().lerp(down.log(), 0.5).exp()
            x2 = x + d * (mid - s)
            d2 = _slope(x2, mid, model(x2, mid, i))
            x = x + d2 * (down - s)
            x = x + noise(s, s1) * up
    return x


def lms_coefficient(ts: list[float], i: int, j: int, order: int) -> float:
    """The weight of the slope ``j`` steps back in step ``i`` of linear multistep: the
    integral over [t_i, t_i+1] of the Lagrange polynomial that is 1 at t_(i-j) and 0 at the
    other ``order - 1`` points (integrated exactly, in float64)."""
    import numpy as np

    poly = np.poly1d([1.0])
    for k in range(order):
        if k != j:
            poly = poly * np.poly1d([1.0, -ts[i - k]]) / (ts[i - j] - ts[i - k])
    antiderivative = poly.integ()
    return float(antiderivative(ts[i + 1]) - antiderivative(ts[i]))


def lms(model: Denoiser, x, sigmas, noise: NoiseSampler, callback: Callback, order: int = 4):
    """Linear multistep (Adams-Bashforth in sigma) with up to ``order`` past slopes."""
    ts = [float(v) for v in sigmas.detach().cpu().float()]
    slopes: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        s = sigmas[i]
        den = model(x, s, i)
        slopes.append(_slope(x, s, den))
        if len(slopes) > order:
            slopes.pop(0)
        callback(i, den)
        if ts[i + 1] == 0:  # the last step lands on the clean prediction (ComfyUI since 2025)
            x = den
            continue
        n = min(i + 1, order)
        coeffs = [lms_coefficient(ts, i, j, n) for j in range(n)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(slopes), strict=True))
    return x


#: iPNDM's Adams-Bashforth weights of the current slope and the past ones, per order.
IPNDM_WEIGHTS = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def ipndm(model: Denoiser, x, sigmas, noise: NoiseSampler, callback: Callback, order: int = 4):
    """iPNDM (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential
    Integrator", ComfyUI's ``ipndm``): Adams-Bashforth in sigma with the fixed weights of
    evenly spaced steps, up to ``order`` slopes (fewer at the start); the last step, to
    sigma 0, lands on the clean prediction."""
    slopes: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        s, s1 = sigmas[i], sigmas[i + 1]
        den = model(x, s, i)
        callback(i, den)
        slopes.insert(0, _slope(x, s, den))
        del slopes[order:]
        if s1 == 0:
            x = den
            continue
        weights = IPNDM_WEIGHTS[len(slopes)]
        x = x + (s1 - s) * sum(w * d for w, d in zip(weights, slopes, strict=True))
    return x


def dpmpp_2s_ancestral(model: Denoiser, x, sigmas, noise: NoiseSampler, callback: Callback):
    """DPM-Solver++(2S) single-step second order down to sigma_down (its intermediate point
    halfway in -log sigma), then the ancestral noise."""
    for i in range(len(sigmas) - 1):
        s, s1 = sigmas[i], sigmas[i + 1]
        den = model(x, s, i)
        down, up = ancestral_split(s, s1)
        callback(i, den)
        if down == 0:
            x = x + _slope(x, s, den) * (down - s)
        else:
            t, t_next = _lam(s), _lam(down)
            h = t_next - t
            t_mid = t + h / 2
            x2 = (_sig(t_mid) / _sig(t)) * x - (-h / 2).expm1() * den
            den2 = model(x2, _sig(t_mid), i)
            x = (_sig(t_next) / _sig(t)) * x - (-h).expm1() * den2
        if s1 > 0:
            x = x + noise(s, s1) * up
    return x


def _renoise(x, s, s1, down, noise: NoiseSampler):
    """ComfyUI's flow-model ancestral step after the descent to ``down``: the picture shrunk
    by ``(1 - s1) / (1 - down)`` and fresh noise added back up to noise level ``s1``."""
    renoise = (s1**2 - down**2 * (1 - s1) ** 2 / (1 - down) ** 2) ** 0.5
    return (1 - s1) / (1 - down) * x + noise(s, s1) * renoise


def euler_ancestral_rf(model: Denoiser, x, sigmas, noise: NoiseSampler, callback: Callback):
    """ComfyUI's euler_ancestral on a flow-matching model (``sample_euler_ancestral_RF``, eta
    1): an Euler step down to ``s' = s_next^2 / s`` (towards the clean prediction), then
    :func:`_renoise`; the last step lands on the clean prediction."""
    for i in range(len(sigmas) - 1):
        s, s1 = sigmas[i], sigmas[i + 1]
        den = model(x, s, i)
        callback(i, den)
        if s1 == 0:
            x = den
            continue
        down = s1 * s1 / s
        x = _renoise(down / s * x + (1 - down / s) * den, s, s1, down, noise)
    return x


def dpm_2_ancestral_rf(model: Denoiser, x, sigmas, noise: NoiseSampler, callback: Callback):
    """ComfyUI's dpm_2_ancestral on a flow-matching model (``sample_dpm_2_ancestral_RF``, eta
    1): DPM-Solver-2 (midpoint in log sigma) down to ``s' = s_next^2 / s``, then
    :func:`_renoise`; the last step is Euler to 0."""
    for i in range(len(sigmas) - 1):
        s, s1 = sigmas[i], sigmas[i + 1]
        den = model(x, s, i)
        down = s1 * s1 / s
        callback(i, den)
        d = _slope(x, s, den)
        if down == 0:
            x = x + d * (down - s)
            continue
        mid = s.log().lerp(down.log(), 0.5).exp()
        x2 = x + d * (mid - s)
        x = x + _slope(x2, mid, model(x2, mid, i)) * (down - s)
        x = _renoise(x, s, s1, down, noise)
    return x


def dpmpp_2s_ancestral_rf(model: Denoiser, x, sigmas, noise: NoiseSampler, callback: Callback):
    """ComfyUI's dpmpp_2s_ancestral on a flow-matching model (its
    ``sample_dpmpp_2s_ancestral_RF``, eta 1): a DPM-Solver++(2S) step down to
    ``s' = s_next^2 / s`` with its midpoint in the flow's log-SNR ``log((1 - s) / s)`` (0.9999
    from the top of the schedule), then :func:`_renoise`; the last step lands on the clean
    prediction."""

    def log_snr(s: torch.Tensor) -> torch.Tensor:
        return ((1 - s) / s).log()

    for i in range(len(sigmas) - 1):
        s, s1 = sigmas[i], sigmas[i + 1]
        den = model(x, s, i)
        callback(i, den)
        if s1 == 0:
            x = den
            continue
        down = s1 * s1 / s
        if float(s) == 1.0:
            mid = torch.full_like(s, 0.9999)
        else:
            mid = 1 / (((log_snr(s) + log_snr(down)) / 2).exp() + 1)
        u = mid / s * x + (1 - mid / s) * den
        x = down / s * x + (1 - down / s) * model(u, mid, i)
        x = _renoise(x, s, s1, down, noise)
    return x


def _snr(flow: bool) -> tuple[Callable[[Any], Any], Callable[[Any], Any], Callable[[Any], Any]]:
    """The half log signal-to-noise ratio lambda = log(alpha / sigma) of a noise level, its
    inverse, and the signal scale alpha: -log sigma and 1 on the UNets' x = x0 + sigma n;
    log((1 - sigma) / sigma) and 1 - sigma on a flow model's x = (1 - sigma) x0 + sigma n
    (ComfyUI's ``sigma_to_half_log_snr`` for its CONST models)."""
    if flow:
        return (lambda s: s.logit().neg()), (lambda lam: lam.neg().sigmoid()), (lambda s: 1 - s)
    return _lam, _sig, (lambda s: 1.0)


def dpmpp_sde(
    model: Denoiser, x, sigmas, noise: NoiseSampler, callback: Callback, flow: bool = False
):
    """Stochastic DPM-Solver++ (single step, r = 1/2): an ancestral first-order step to the
    midpoint in lambda, a model call there, then an ancestral step to the end using the
    midpoint-corrected prediction; the noise is the Brownian tree's over each interval.
    ``flow``: on a flow-matching model (lambda and alpha of :func:`_snr`), as ComfyUI's
    ``sample_dpmpp_sde`` takes its CONST models."""
    r = 0.5
    lam, sig, alpha = _snr(flow)
    for i in range(len(sigmas) - 1):
        s, s1 = sigmas[i], sigmas[i + 1]
        den = model(x, s, i)
        callback(i, den)
        if s1 == 0:
            x = den
            continue
        t, t_next = lam(s), lam(s1)
        t_mid = t + (t_next - t) * r
        s_mid = sig(t_mid)
        fac = 1 / (2 * r)
        a, a_mid, a_next = alpha(s), alpha(s_mid), alpha(s1)
        # first stage: to the midpoint (the ancestral split taken on e^-lambda)
        down, up = ancestral_split(_sig(t), _sig(t_mid))
        h = _lam(down) - t
        x2 = (a_mid / a) * (-h).exp() * x - a_mid * (-h).expm1() * den
        x2 = x2 + a_mid * noise(s, s_mid) * up
        den2 = model(x2, s_mid, i)
        # second stage: the whole step with the corrected prediction
        down, up = ancestral_split(_sig(t), _sig(t_next))
        h = _lam(down) - t
        corrected = (1 - fac) * den + fac * den2
        x = (a_next / a) * (-h).exp() * x - a_next * (-h).expm1() * corrected
        x = x + a_next * noise(s, s1) * up
    return x


def dpmpp_2m(model: Denoiser, x, sigmas, noise: NoiseSampler, callback: Callback):
    """DPM-Solver++(2M): the exponential-integrator step with the prediction extrapolated
    linearly (in -log sigma) from this step's and the last step's."""
    old = None
    for i in range(len(sigmas) - 1):
        s, s1 = sigmas[i], sigmas[i + 1]
        den = model(x, s, i)
        callback(i, den)
        t, t_next = _lam(s), _lam(s1)
        h = t_next - t
        if old is None or s1 == 0:
            x = (_sig(t_next) / _sig(t)) * x - (-h).expm1() * den
        else:
            r = (t - _lam(sigmas[i - 1])) / h
            d = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * old
            x = (_sig(t_next) / _sig(t)) * x - (-h).expm1() * d
        old = den
    return x


def dpmpp_2m_sde(
    model: Denoiser, x, sigmas, noise: NoiseSampler, callback: Callback, flow: bool = False
):
    """DPM-Solver++(2M) SDE, midpoint form, eta 1: the deterministic part decays with
    sigma_next / sigma e^-h, the prediction's weight alpha_next (1 - e^(-2h)), the
    second-order term half the difference of the last two predictions scaled by 1/r, and
    the noise sigma_next sqrt(1 - e^(-2h)) Brownian increments (h, alpha: :func:`_snr`;
    ``flow`` as in :func:`dpmpp_sde`)."""
    lam, _, alpha = _snr(flow)
    old, h_last = None, None
    for i in range(len(sigmas) - 1):
        s, s1 = sigmas[i], sigmas[i + 1]
        den = model(x, s, i)
        callback(i, den)
        h = None
        if s1 == 0:
            x = den
        else:
            h = lam(s1) - lam(s)
            keep = (-2 * h).expm1().neg()  # eta 1: h (eta + 1)
            a = alpha(s1)
            x = s1 / s * (-h).exp() * x + a * keep * den
            if old is not None:
                x = x + 0.5 * a * keep * (h / h_last) * (den - old)
            x = x + noise(s, s1) * s1 * keep.sqrt()
        old, h_last = den, h
    return x


def dpmpp_3m_sde(
    model: Denoiser, x, sigmas, noise: NoiseSampler, callback: Callback, flow: bool = False
):
    """DPM-Solver++(3M) SDE, eta 1: the predictions of the last three steps give first and
    second divided differences, weighted by alpha_next phi_2 and phi_3 of h (eta + 1) (h,
    alpha: :func:`_snr`; ``flow`` as in :func:`dpmpp_sde`)."""
    lam, _, alpha = _snr(flow)
    d_1 = d_2 = None
    h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        s, s1 = sigmas[i], sigmas[i + 1]
        den = model(x, s, i)
        callback(i, den)
        h = None
        if s1 == 0:
            x = den
        else:
            h = lam(s1) - lam(s)
            h_eta = h * 2  # eta 1
            a = alpha(s1)
            x = s1 / s * (-h).exp() * x + a * (-h_eta).expm1().neg() * den
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (den - d_1) / r0
                d1_1 = (d_1 - d_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + a * phi_2 * d1 - a * phi_3 * d2
            elif h_1 is not None:
                d = (den - d_1) / (h_1 / h)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + a * phi_2 * d
            x = x + noise(s, s1) * s1 * (-2 * h).expm1().neg().sqrt()
        d_1, d_2 = den, d_1
        h_1, h_2 = h, h_1
    return x


def ddpm(model: Denoiser, x, sigmas, noise: NoiseSampler, callback: Callback):
    """DDPM's ancestral step (Ho et al. 2020, eq. 11 and the posterior variance), taken in
    variance-preserving coordinates: x / sqrt(1 + sigma^2), alpha-bar = 1 / (1 + sigma^2)."""
    for i in range(len(sigmas) - 1):
        s, s1 = sigmas[i], sigmas[i + 1]
        den = model(x, s, i)
        callback(i, den)
        eps = (x - den) / s
        x_vp = x / torch.sqrt(1.0 + s**2.0)
        abar, abar_prev = 1 / (s * s + 1), 1 / (s1 * s1 + 1)
        alpha = abar / abar_prev
        mean = (1.0 / alpha).sqrt() * (x_vp - (1 - alpha) * eps / (1 - abar).sqrt())
        if s1 > 0:
            var = (1 - alpha) * (1.0 - abar_prev) / (1.0 - abar)
            mean = mean + var.sqrt() * noise(s, s1)
        x = mean
        if s1 != 0:
            x = x * torch.sqrt(1.0 + s1**2.0)
    return x


def lcm(model: Denoiser, x, sigmas, noise: NoiseSampler, callback: Callback, flow: bool = False):
    """Latent consistency sampling: each step jumps to the clean prediction and noises it
    afresh to the next sigma (``flow``: as a flow model mixes them, (1 - s) x0 + s n)."""
    for i in range(len(sigmas) - 1):
        s1 = sigmas[i + 1]
        den = model(x, sigmas[i], i)
        callback(i, den)
        x = den
        if s1 > 0:
            fresh = noise(sigmas[i], s1) * s1
            x = fresh + (1 - s1) * x if flow else fresh + x
    return x


def flow_form(name: str) -> Callable[..., torch.Tensor]:
    """Sampler ``name`` as ComfyUI runs it on a flow-matching model: its ``*_RF`` function
    where it has one, the SDE ones and lcm on the flow's lambda and alpha."""
    if name in RF_FORMS:
        return RF_FORMS[name]
    if name in FLOW_AWARE:
        return functools.partial(SAMPLERS[name], flow=True)
    return SAMPLERS[name]


# -- UniPC ------------------------------------------------------------------------------------


class _VP:
    """Variance-preserving coordinates of a sigma: x_vp = x / sqrt(1 + sigma^2), with
    alpha = 1 / sqrt(1 + sigma^2), std = sigma alpha and lambda = log(alpha / std)."""

    @staticmethod
    def log_alpha(s: torch.Tensor) -> torch.Tensor:
        return 0.5 * torch.log(1 / (s * s + 1))

    @classmethod
    def alpha(cls, s: torch.Tensor) -> torch.Tensor:
        return torch.exp(cls.log_alpha(s))

    @classmethod
    def std(cls, s: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(1.0 - torch.exp(2.0 * cls.log_alpha(s)))

    @classmethod
    def lam(cls, s: torch.Tensor) -> torch.Tensor:
        la = cls.log_alpha(s)
        return la - 0.5 * torch.log(1.0 - torch.exp(2.0 * la))


def _unipc_step(
    data: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    preds: list[torch.Tensor],
    times: list[torch.Tensor],
    t: torch.Tensor,
    order: int,
    corrector: bool,
    variant: str,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One UniPC multistep update (data prediction, B(h) variant ``variant``) from
    ``times[-1]`` to ``t`` with the ``order`` most recent predictions: the UniP predictor,
    then (``corrector``) one model call at the predicted point and the UniC corrector.
    Returns the new x and the model's prediction at the predicted point (or None)."""
    vp = _VP
    lam_0, lam_t = vp.lam(times[-1]), vp.lam(t)
    m0 = preds[-1]
    std_0, std_t = vp.std(times[-1]), vp.std(t)
    alpha_t = torch.exp(vp.log_alpha(t))
    h = lam_t - lam_0
    rks: list[Any] = []
    diffs: list[torch.Tensor] = []
    for k in range(1, order):
        rk = (vp.lam(times[-(k + 1)]) - lam_0) / h
        rks.append(rk)
        diffs.append((preds[-(k + 1)] - m0) / rk)
    rks.append(1.0)
    rk_t = torch.tensor(rks, device=x.device)
    hh = -h  # data prediction: the integral runs in -lambda
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    fact = 1
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    rows, rhs = [], []
    for k in range(1, order + 1):
        rows.append(torch.pow(rk_t, k - 1))
        rhs.append(h_phi_k * fact / b_h)
        fact *= k + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    mat = torch.stack(rows)
    vec = torch.tensor(rhs, device=x.device)
    rhos_p = None
    if diffs:
        rhos_p = (
            torch.tensor([0.5], device=x.device)
            if order == 2
            else torch.linalg.solve(mat[:-1, :-1], vec[:-1])
        )
    base = std_t / std_0 * x - alpha_t * h_phi_1 * m0
    pred_res: Any = 0
    if rhos_p is not None:
        pred_res = sum(rhos_p[k] * diffs[k] for k in range(len(diffs)))
    x_t = base - alpha_t * b_h * pred_res
    model_t = None
    if corrector:
        rhos_c = (
            torch.tensor([0.5], device=x.device) if order == 1 else torch.linalg.solve(mat, vec)
        )
        model_t = data(x_t, t)
        corr_res: Any = 0
        if diffs:
            corr_res = sum(rhos_c[k] * diffs[k] for k in range(len(diffs)))
        x_t = base - alpha_t * b_h * (corr_res + rhos_c[-1] * (model_t - m0))
    return x_t, model_t


def uni_pc(
    model: Denoiser, x, sigmas, noise: NoiseSampler, callback: Callback, variant: str = "bh1"
):
    """UniPC multistep, order min(3, steps - 1), lower orders in the first and last steps,
    no corrector on the final update. A final sigma of 0 is replaced by 0.001 (UniPC's
    time never reaches 0), so the result keeps that much noise, as ComfyUI's does."""
    times = sigmas.clone()
    if times[-1] == 0:
        times[-1] = 0.001
    steps = len(times) - 1
    order = min(3, len(times) - 2)
    step_of = {"i": 0}

    def data(x_vp: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        # the denoiser on the VP latent, through its noise prediction as ComfyUI goes
        xk = x_vp * (s**2 + 1.0) ** 0.5
        eps = (xk - model(xk, s, step_of["i"])) / s
        return (x_vp - _VP.std(s) * eps) / _VP.alpha(s)

    x = x / torch.sqrt(1.0 + times[0] ** 2.0)
    preds: list[torch.Tensor] = []
    past: list[torch.Tensor] = []
    for index in range(steps):
        step_of["i"] = index
        if index == 0:
            preds, past = [data(x, times[0])], [times[0]]
        elif index < order:
            x, m = _unipc_step(data, x, preds, past, times[index], index, True, variant)
            if m is None:
                m = data(x, times[index])
            preds.append(m)
            past.append(times[index])
        else:
            for step in range(index, index + 1 + (1 if index == steps - 1 else 0)):
                step_order = min(order, steps + 1 - step)
                x, m = _unipc_step(
                    data, x, preds, past, times[step], step_order, step != steps, variant
                )
                preds, past = [*preds[1:], preds[-1]], [*past[1:], times[step]]
                if step < steps:
                    if m is None:
                        m = data(x, times[step])
                    preds[-1] = m
        callback(index, preds[-1])
    return x / _VP.alpha(times[-1])


def uni_pc_bh2(model: Denoiser, x, sigmas, noise: NoiseSampler, callback: Callback):
    return uni_pc(model, x, sigmas, noise, callback, variant="bh2")


#: Sampler name -> implementation. ``ddim`` is ComfyUI's: Euler steps (its inpainting
#: noise is drawn apart, see nodes/ksampling.run).
SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": euler,
    "euler_ancestral": euler_ancestral,
    "heun": heun,
    "dpm_2": dpm_2,
    "dpm_2_ancestral": dpm_2_ancestral,
    "lms": lms,
    "dpmpp_2s_ancestral": dpmpp_2s_ancestral,
    "dpmpp_sde": dpmpp_sde,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "dpmpp_3m_sde": dpmpp_3m_sde,
    "ddim": euler,
    "ddpm": ddpm,
    "uni_pc": uni_pc,
    "uni_pc_bh2": uni_pc_bh2,
    "lcm": lcm,
    "ipndm": ipndm,
}


def noise_sampler(name: str, x: torch.Tensor, sigmas: torch.Tensor, seed: int) -> NoiseSampler:
    """The noise a sampler draws during its steps (none for the deterministic ones)."""
    if name in BROWNIAN:
        return brownian_noise(x, sigmas, seed)
    if name in ANCESTRAL:
        return default_noise(x, seed)

    def none(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        raise AssertionError(f"sampler {name!r} draws no noise")

    return none


#: ComfyUI's own flow-model forms (``sample_*_RF``), which it runs on flow models instead.
RF_FORMS: dict[str, Callable[..., torch.Tensor]] = {
    "euler_ancestral": euler_ancestral_rf,
    "dpm_2_ancestral": dpm_2_ancestral_rf,
    "dpmpp_2s_ancestral": dpmpp_2s_ancestral_rf,
}
#: Samplers written for both kinds of model (their ``flow`` argument).
FLOW_AWARE = frozenset({"dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde", "lcm"})
#: Samplers whose first noise level must sit below 1 on a flow model (their log-SNR is
#: infinite at 1): ComfyUI moves it to the level 0.01 % of the way into the schedule.
SNR_OFFSET = frozenset({"dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"})
