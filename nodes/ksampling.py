"""ComfyUI's sigma schedules and samplers, for the Sampler's ``comfy_*`` schedules.

Studio's other schedules are diffusers' (so a graph equals a diffusers pipeline). An
imported ComfyUI workflow should instead give ComfyUI's picture for the same seed, which
needs ComfyUI's way of sampling: k-diffusion style, in sigma space, with the model's
1,000 discrete sigmas built from the checkpoint's betas, schedules computed from them,
the UNet fed the timestep whose sigma is nearest (in log sigma), the first noise drawn
on the CPU in float32 from ``torch.manual_seed(seed)`` and scaled by ``sqrt(1 + sigma^2)``
at full denoise (by ``sigma`` otherwise), and the samplers' own noise as ComfyUI draws
it (nodes/ksamplers.py).

Written from ComfyUI's published formulas (comfy/samplers.py: calculate_sigmas,
normal_scheduler, simple_scheduler, ddim_scheduler, KSampler.set_steps and sample;
comfy/model_sampling.py: ModelSamplingDiscrete, EPS, V_PREDICTION; comfy/k_diffusion/
sampling.py: get_sigmas_karras, get_sigmas_exponential; comfy/sample.py: prepare_noise).
The samplers themselves are in nodes/ksamplers.py. Imported lazily (imports torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nodes.values import COMFY_SAMPLERS, COMFY_SCHEDULES
from studio.errors import NodeError

#: ComfyUI's alpha_cumprod for the last step of a zero-terminal-SNR model (its
#: rescale_zero_terminal_snr_sigmas keeps sigma finite).
ZSNR_LAST_ALPHA_CUMPROD = 4.8973451890853435e-08


def is_comfy(schedule: str) -> bool:
    """Whether ``schedule`` is one of the Sampler's ComfyUI schedules."""
    return schedule in COMFY_SCHEDULES


def betas(config: dict[str, Any]) -> torch.Tensor:
    """The training betas of a diffusers scheduler config, in float64 as ComfyUI builds them
    (diffusers' ``scaled_linear`` is ComfyUI's ``linear``, diffusers' ``linear`` its
    ``sqrt_linear``)."""
    n = int(config.get("num_train_timesteps") or 1000)
    trained = config.get("trained_betas")
    if trained:
        return torch.tensor(trained, dtype=torch.float64)
    start = float(config.get("beta_start", 0.00085))
    end = float(config.get("beta_end", 0.012))
    kind = config.get("beta_schedule", "scaled_linear")
    if kind == "scaled_linear":
        return torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
    if kind == "linear":
        return torch.linspace(start, end, n, dtype=torch.float64)
    if kind == "squaredcos_cap_v2":
        s = 8e-3
        t = torch.arange(n + 1, dtype=torch.float64) / n + s
        alphas = torch.cos(t / (1 + s) * math.pi / 2) ** 2
        alphas = alphas / alphas[0]
        return (1 - alphas[1:] / alphas[:-1]).clamp(0, 0.999)
    raise NodeError(f"the comfy schedules do not know the beta schedule {kind!r}")


class ModelSampling:
    """A discrete-time model's sigmas (ComfyUI's ModelSamplingDiscrete, EPS or V_PREDICTION)."""

    def __init__(self, config: dict[str, Any], prediction_type: str = "epsilon"):
        ac = torch.cumprod(1.0 - betas(config), dim=0)
        sigmas = ((1 - ac) / ac) ** 0.5
        if config.get("rescale_betas_zero_snr"):
            sigmas = _rescale_zero_terminal_snr(sigmas)
        self.sigmas = sigmas.float()
        self.log_sigmas = sigmas.log().float()
        self.v_prediction = prediction_type == "v_prediction"

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The training timestep whose sigma is nearest in log sigma (what the UNet is given)."""
        dists = sigma.log().reshape(1, -1) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).reshape(sigma.shape)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """The sigma at a (fractional) timestep: log sigma interpolated linearly."""
        t = timestep.float().clamp(0, len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def model_input(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x / (sigma**2 + 1.0) ** 0.5

    def denoised(self, out: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The clean-latent prediction from the model's output at ``sigma`` (sigma_data 1)."""
        if self.v_prediction:
            return x / (sigma**2 + 1.0) - out * sigma / (sigma**2 + 1.0) ** 0.5
        return x - out * sigma


def _rescale_zero_terminal_snr(sigmas: torch.Tensor) -> torch.Tensor:
    ac = 1 / (sigmas * sigmas + 1)
    root = ac.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    ac = root**2
    ac[-1] = ZSNR_LAST_ALPHA_CUMPROD
    return ((1 - ac) / ac) ** 0.5


# -- Schedules (each returns steps + 1 sigmas, the last 0, as a float32 tensor) ---------------


def normal(ms: ModelSampling, steps: int, sgm: bool = False) -> torch.Tensor:
    """Timesteps evenly from the last training step to the first, their sigmas interpolated
    (``sgm``: ``steps + 1`` points with the last dropped)."""
    start, end = ms.timestep(ms.sigma_max), ms.timestep(ms.sigma_min)
    append_zero = True
    if sgm:
        ts = torch.linspace(float(start), float(end), steps + 1)[:-1]
    else:
        if math.isclose(float(ms.sigma(end)), 0, abs_tol=1e-5):
            steps, append_zero = steps + 1, False
        ts = torch.linspace(float(start), float(end), steps)
    sigs = [float(ms.sigma(t)) for t in ts]
    return torch.tensor([*sigs, 0.0] if append_zero else sigs, dtype=torch.float32)


def simple(ms: ModelSampling, steps: int) -> torch.Tensor:
    """Every ``1000 / steps``-th training sigma from the top."""
    ss = len(ms.sigmas) / steps
    sigs = [float(ms.sigmas[-(1 + int(x * ss))]) for x in range(steps)]
    return torch.tensor([*sigs, 0.0], dtype=torch.float32)


def ddim_uniform(ms: ModelSampling, steps: int) -> torch.Tensor:
    """Every ``1000 // steps``-th training sigma from the second, highest first."""
    x = 1
    if math.isclose(float(ms.sigmas[x]), 0, abs_tol=1e-5):
        steps, sigs = steps + 1, []
    else:
        sigs = [0.0]
    ss = max(len(ms.sigmas) // steps, 1)
    while x < len(ms.sigmas):
        sigs.append(float(ms.sigmas[x]))
        x += ss
    return torch.tensor(sigs[::-1], dtype=torch.float32)


def karras(ms: ModelSampling, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022): sigma^(1/rho) evenly from sigma_max to sigma_min."""
    smin, smax = float(ms.sigma_min), float(ms.sigma_max)
    ramp = torch.linspace(0, 1, steps)
    lo, hi = smin ** (1 / rho), smax ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def exponential(ms: ModelSampling, steps: int) -> torch.Tensor:
    """log sigma evenly from sigma_max to sigma_min."""
    smin, smax = float(ms.sigma_min), float(ms.sigma_max)
    sigmas = torch.linspace(math.log(smax), math.log(smin), steps).exp()
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def kl_optimal(ms: ModelSampling, steps: int) -> torch.Tensor:
    """atan(sigma) evenly from sigma_max to sigma_min."""
    smin, smax = float(ms.sigma_min), float(ms.sigma_max)
    idx = torch.arange(steps, dtype=torch.float32).div_(max(steps - 1, 1))
    sigmas = torch.zeros(steps + 1)
    sigmas[:-1] = (idx * math.atan(smin) + (1 - idx) * math.atan(smax)).tan_()
    return sigmas


def beta(ms: ModelSampling, steps: int, alpha: float = 0.6, b: float = 0.6) -> torch.Tensor:
    """Timesteps at the quantiles of a Beta(0.6, 0.6) distribution ("Beta Sampling is All You
    Need", Lee et al. 2024), rounded to training steps, repeats dropped."""
    from scipy.stats import beta as beta_dist  # only here: scipy.stats is slow to import

    last = len(ms.sigmas) - 1
    quantiles = 1.0 - np.linspace(0.0, 1.0, steps, endpoint=False)
    ts = np.rint(beta_dist.ppf(quantiles, alpha, b) * last).astype(int)
    kept = [t for i, t in enumerate(ts) if i == 0 or t != ts[i - 1]]
    return torch.tensor([*(float(ms.sigmas[t]) for t in kept), 0.0], dtype=torch.float32)


def linear_quadratic(ms: ModelSampling, steps: int, threshold: float = 0.025) -> torch.Tensor:
    """Mochi's schedule: the noise level falls linearly to ``threshold`` over the first half
    of the steps, then along a parabola to 1 (sigmas = sigma_max * (1 - level))."""
    if steps == 1:
        levels = [0.0, 1.0]
    else:
        lin = steps // 2
        quad = steps - lin
        # the parabola a i^2 + c i + d meets the line at i = lin and reaches 1 at i = steps
        diff = lin - threshold * steps
        a = diff / (lin * quad**2)
        c = threshold / lin - 2 * diff / quad**2
        d = a * lin**2
        levels = [i * threshold / lin for i in range(lin)]
        levels += [a * i * i + c * i + d for i in range(lin, steps)]
        levels.append(1.0)
    return torch.tensor([1.0 - x for x in levels], dtype=torch.float32) * float(ms.sigma_max)


def sd_turbo(ms: ModelSampling, steps: int) -> torch.Tensor:
    """ComfyUI's SDTurboScheduler at denoise 1: the sigmas of timesteps 999, 899, ..., 99
    (at most 10 steps), then 0."""
    timesteps = torch.arange(10, 0, -1, dtype=torch.float32)[:steps] * 100 - 1
    return torch.cat([ms.sigma(timesteps), torch.zeros(1)]).to(torch.float32)


_SCHEDULES = {
    "normal": normal,
    "karras": karras,
    "exponential": exponential,
    "simple": simple,
    "sgm_uniform": lambda ms, steps: normal(ms, steps, sgm=True),
    "ddim_uniform": ddim_uniform,
    "kl_optimal": kl_optimal,
    "beta": beta,
    "linear_quadratic": linear_quadratic,
    "sd_turbo": sd_turbo,
}


def schedule_sigmas(ms: ModelSampling, schedule: str, steps: int) -> torch.Tensor:
    """ComfyUI's ``calculate_sigmas`` for a ``comfy_*`` schedule name."""
    return _SCHEDULES[COMFY_SCHEDULES[schedule]](ms, steps)


def sampler_sigmas(ms: ModelSampling, schedule: str, steps: int, sampler: str) -> torch.Tensor:
    """ComfyUI's KSampler.calculate_sigmas: for dpm_2, dpm_2_ancestral and uni_pc, a schedule
    one step longer with its next-to-last sigma dropped."""
    from nodes.ksamplers import DISCARD_PENULTIMATE

    if sampler not in DISCARD_PENULTIMATE:
        return schedule_sigmas(ms, schedule, steps)
    sigmas = schedule_sigmas(ms, schedule, steps + 1)
    return torch.cat([sigmas[:-2], sigmas[-1:]])


def ksampler_sigmas(
    ms: ModelSampling,
    schedule: str,
    steps: int,
    denoise: float = 1.0,
    start: int | None = None,
    end: int | None = None,
    full_denoise: bool = False,
    sampler: str = "euler",
) -> torch.Tensor:
    """The sigmas a ComfyUI KSampler (``denoise``) or KSamplerAdvanced (``start``, ``end``,
    ``full_denoise`` = not return_with_leftover_noise) runs with ``sampler``: with denoise
    below 1, the last ``steps`` of a ``int(steps / denoise)``-step schedule. Fewer than two:
    nothing to run."""
    if denoise > 0.9999:
        sigmas = sampler_sigmas(ms, schedule, steps, sampler)
    elif denoise <= 0.0:
        return torch.zeros(0)
    else:
        sigmas = sampler_sigmas(ms, schedule, int(steps / denoise), sampler)[-(steps + 1) :]
    if end is not None and end < len(sigmas) - 1:
        sigmas = sigmas[: end + 1].clone()
        if full_denoise:
            sigmas[-1] = 0
    if start is not None:
        if start >= len(sigmas) - 1:
            return torch.zeros(0)
        sigmas = sigmas[start:]
    return sigmas


def noise(shape: tuple[int, ...], seed: int, batch_index: list[int] | None = None) -> torch.Tensor:
    """ComfyUI's first noise (prepare_noise): float32 on the CPU from ``manual_seed(seed)``.
    With a ``batch_index`` (latents picked from a batch by Latent From Batch): one sample's
    noise drawn after another up to the largest index, each latent taking the one drawn at
    its index, so it gets the noise it had in its batch."""
    generator = torch.Generator("cpu").manual_seed(int(seed))
    if not batch_index or len(batch_index) != shape[0]:
        return torch.randn(shape, generator=generator, dtype=torch.float32, device="cpu")
    one = (1, *shape[1:])
    drawn = [
        torch.randn(one, generator=generator, dtype=torch.float32, device="cpu")
        for _ in range(max(batch_index) + 1)
    ]
    return torch.cat([drawn[i] for i in batch_index])


def is_max_denoise(ms: ModelSampling, sigma: torch.Tensor) -> bool:
    top, s = float(ms.sigma_max), float(sigma)
    return math.isclose(top, s, rel_tol=1e-5) or s > top


def noise_scaling(
    ms: ModelSampling, sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor
) -> torch.Tensor:
    """The starting latent: noise at ``sigma`` added to the input latent; at full denoise the
    noise is scaled by sqrt(1 + sigma^2), as ComfyUI does."""
    scale = (1.0 + sigma**2) ** 0.5 if is_max_denoise(ms, sigma) else sigma
    return noise * scale + latent


@dataclass
class KSchedule:
    """What the Sampler's loop needs of a scheduler, for a ComfyUI schedule and sampler.

    ``timesteps`` are the UNet's at the schedule's sigmas (nearest training step of each);
    a model call sets ``sigma`` first so :meth:`scale_model_input` scales by it (the
    second-order samplers call the model between the schedule's sigmas too).
    """

    ms: ModelSampling
    sampler: str
    sigmas: torch.Tensor
    seed: int
    model_dtype: torch.dtype = torch.float32
    order: int = 1

    def __post_init__(self) -> None:
        if self.sampler not in COMFY_SAMPLERS:
            raise NodeError(
                f"the ComfyUI schedules run with the samplers {', '.join(COMFY_SAMPLERS)}, "
                f"not {self.sampler!r}: choose one of them, or a Studio schedule (normal, "
                "karras, ...)"
            )
        self.timesteps = (
            self.ms.timestep(self.sigmas[:-1]).float() if len(self.sigmas) > 1 else torch.zeros(0)
        )
        self.sigma = self.sigmas[0] if len(self.sigmas) else torch.tensor(0.0)

    def scale_model_input(self, x: torch.Tensor, t: Any = None) -> torch.Tensor:
        return self.ms.model_input(x, self.sigma.to(x.device)).to(self.model_dtype)


def inpaint_noise(ks: KSchedule, noise: torch.Tensor) -> torch.Tensor:
    """The noise that re-noises the kept (unmasked) part of an inpainted latent: the first
    noise, except for ComfyUI's ddim, which draws its own from a CPU generator seeded with
    ``seed + 1``."""
    if ks.sampler != "ddim":
        return noise
    generator = torch.Generator("cpu").manual_seed((int(ks.seed) + 1) % 2**64)
    drawn = torch.randn(tuple(noise.shape), generator=generator, device="cpu")
    return drawn.to(dtype=noise.dtype, device=noise.device)


def run(
    ctx: Any,
    ks: KSchedule,
    x: torch.Tensor,
    predict: Any,
    keep: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    on_step: Any,
    differential: float | None = None,
) -> torch.Tensor:
    """The steps of ``ks`` from the starting latent ``x``, by its sampler (nodes/ksamplers).

    Each model call is ComfyUI's: the latent scaled for the UNet at that sigma, the UNet fed
    the nearest training timestep, its output turned into the denoised latent. ``keep``:
    (mask, input latent, noise): as ComfyUI's inpainting wrapper, outside the mask each model
    call sees the input latent noised to that call's sigma, and its prediction there is the
    input latent itself. ``differential``: Differential Diffusion's strength, which makes each
    call's mask the soft mask thresholded at that call's place in the schedule."""
    from nodes import ksamplers

    total = len(ks.sigmas) - 1
    sigmas = ks.sigmas.to(x.device)
    if keep is not None:
        mask, init, drawn = keep
        keep = (mask, init, inpaint_noise(ks, drawn))

    def denoise(x_in: torch.Tensor, sigma: torch.Tensor, i: int) -> torch.Tensor:
        ctx.check_interrupt()
        sigma = torch.as_tensor(sigma, device=x_in.device, dtype=torch.float32)
        if keep is not None:
            mask, init, drawn = keep
            if differential is not None:
                mask = differential_mask(mask, sigma, differential)
            x_in = x_in * mask + (init + drawn * sigma) * (1 - mask)
        ks.sigma = sigma
        t = ks.ms.timestep(sigma.cpu().reshape(1))[0].float()
        out = predict(x_in, i, t)
        den = ks.ms.denoised(out.float(), x_in, sigma)
        if keep is not None:
            den = den * mask + init * (1 - mask)
        return den

    def differential_mask(mask: torch.Tensor, sigma: torch.Tensor, strength: float) -> torch.Tensor:
        # ComfyUI's DifferentialDiffusion: the schedule's span in the model's timesteps, from
        # its first sigma to its last (the model's smallest where that is below)
        from nodes.inpaint import differential_mask as thresholded

        end = torch.maximum(ks.sigmas[-1].cpu(), ks.ms.sigma_min)
        ts = ks.ms.timestep(torch.stack([sigma.cpu().reshape(()), ks.sigmas[0].cpu(), end]))
        return thresholded(mask, float(ts[0]), float(ts[1]), float(ts[2]), strength)

    def callback(i: int, den: torch.Tensor) -> None:
        on_step(i, total, den)

    noise = ksamplers.noise_sampler(ks.sampler, x, sigmas, ks.seed)
    with torch.no_grad():
        return ksamplers.SAMPLERS[ks.sampler](denoise, x, sigmas, noise, callback)
