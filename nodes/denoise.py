"""The denoising loop behind the Sampler node, on diffusers schedulers.

It follows StableDiffusionPipeline / StableDiffusionImg2ImgPipeline /
StableDiffusionXLPipeline step for step (same order of random draws from one
CPU generator, same batching of negative and positive), so a graph equals the
pipeline number for number. Imported lazily (imports torch and diffusers).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from nodes import ksampling, lora
from nodes.controlnet import ControlPlan
from nodes.inpaint import differential_mask, unet_inpaint_inputs
from nodes.sdload import get_module, with_oom_advice
from nodes.values import CONTROL_IMAGE_KEY, SAMPLERS, SCHEDULERS, Cond, LatentRgb, ModelHandle
from studio.errors import NodeError

#: Latent -> RGB projections for the live preview (no model; a 4x3 matrix giving -1..1),
#: used for a model that carries no factors of its own (``ModelHandle.latent_rgb``).
SD_RGB = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
]
SDXL_RGB = [
    [0.3651, 0.4232, 0.4341],
    [-0.2533, -0.0042, 0.1068],
    [0.1076, 0.1111, -0.0362],
    [-0.3165, -0.2492, -0.2188],
]
SDXL_RGB_BIAS = [0.1084, -0.0175, -0.0011]


def make_scheduler(
    config: dict[str, Any], sampler: str, schedule: str, seed: int | None = None
) -> Any:
    """A fresh diffusers scheduler for ``sampler`` with sigma ``schedule``.

    ``seed`` also seeds a scheduler's own noise (DPM++ SDE's Brownian tree), which
    diffusers otherwise draws from torch's global generator: one seed, one image.
    """
    from nodes.fastimport import install

    install()
    import diffusers

    if sampler not in SAMPLERS:
        raise NodeError(f"unknown sampler {sampler!r}; known: {', '.join(SAMPLERS)}")
    if schedule not in SCHEDULERS:
        raise NodeError(f"unknown scheduler {schedule!r}; known: {', '.join(SCHEDULERS)}")
    class_name, sampler_kwargs = SAMPLERS[sampler]
    if not class_name:
        raise NodeError(
            f"sampler {sampler!r} is ComfyUI's and runs only with the comfy_* schedules "
            f"(comfy_normal, comfy_karras, ...), not with {schedule!r}"
        )
    cls = getattr(diffusers, class_name)
    overrides = dict(sampler_kwargs)
    accepted = set(inspect.signature(cls.__init__).parameters)
    for key, value in SCHEDULERS[schedule].items():
        if key == "comfy":
            raise NodeError(f"the {schedule!r} schedule is ComfyUI's, not a diffusers scheduler")
        if key not in accepted:
            raise NodeError(f"the {schedule!r} scheduler is not available with sampler {sampler!r}")
        overrides[key] = value
    if seed is not None and "noise_sampler_seed" in accepted:
        overrides["noise_sampler_seed"] = int(seed)
    try:
        return cls.from_config(config, **overrides)
    except ImportError as exc:
        raise NodeError(f"sampler {sampler!r} needs a missing package: {exc}") from None


#: Latents up to this many pixels (32x32: images up to 256x256) are "small" on a CPU.
SMALL_LATENT_PIXELS = 32 * 32


def small_conv_backend(latents: torch.Tensor, device: torch.device) -> Any:
    """On a CPU, run the convolutions of a small latent without oneDNN: setting up a oneDNN
    convolution costs more than computing a 16x16 one (studio-tiny's UNet: 29 ms a step
    without, 36 ms with, on 2 cores). Larger latents keep oneDNN, which wins there."""
    import contextlib

    small = latents.shape[-2] * latents.shape[-1] <= SMALL_LATENT_PIXELS
    if device.type != "cpu" or not small:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def without_onednn():
        was = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False
        try:
            yield
        finally:
            torch.backends.mkldnn.enabled = was

    return without_onednn()


def _prompts(cond: list[Cond], name: str) -> list[Cond]:
    if not cond:
        raise NodeError(f"the {name} conditioning is empty")
    return list(cond)


@dataclass(frozen=True)
class StepWindow:
    """Sampler (Advanced)'s part of the schedule: steps ``start`` up to ``end`` of ``steps``.

    ``add_noise`` off: the input latent already holds the noise of step ``start`` (the
    leftover of an earlier pass). ``leftover_noise`` on: stop at step ``end``'s noise level
    instead of finishing with the model's clean prediction there (ComfyUI's KSamplerAdvanced).
    """

    start: int = 0
    end: int = 10000
    add_noise: bool = True
    leftover_noise: bool = False


def _check_cond(c: Cond, name: str, model: ModelHandle, unet: Any) -> None:
    width = unet.config.cross_attention_dim
    if c.embeds.shape[-1] != width:
        raise NodeError(
            f"the {name} prompt was encoded by a {c.family or 'different'} text encoder "
            f"({c.embeds.shape[-1]} wide), but this {model.family} model expects {width}: "
            "connect the CLIP output of the same checkpoint to Text Encode"
        )
    if unet.config.addition_embed_type == "text_time" and c.pooled is None:
        raise NodeError(
            f"the {name} prompt has no pooled embedding, which an SDXL model needs: encode it "
            "with the CLIP of an SDXL checkpoint"
        )


def _match_lengths(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Prompts of different chunk counts: repeat each to a common length (77-token chunks).
    if a.shape[1] == b.shape[1]:
        return a, b
    import math

    n = math.lcm(a.shape[1], b.shape[1])
    return a.repeat(1, n // a.shape[1], 1), b.repeat(1, n // b.shape[1], 1)


def guidance_embedding(w: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """LCM's guidance-scale embedding (as diffusers' pipelines compute it)."""
    w = w * 1000.0
    half = dim // 2
    emb = torch.log(torch.tensor(10000.0)) / (half - 1)
    emb = torch.exp(torch.arange(half, dtype=dtype) * -emb)
    emb = w.to(dtype)[:, None] * emb[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def preview_image(latents: torch.Tensor, family: str, factors: LatentRgb | None = None) -> Any:
    """A cheap latent -> RGB picture of the first image of the batch (PIL, latent size).

    ``factors``: the model's own projection (to 0..1), used when it has a row per latent
    channel; otherwise the family's fixed Stable Diffusion factors.
    """
    from PIL import Image

    x = latents[0].detach().float().cpu()
    if factors is not None and len(factors.matrix) == x.shape[0]:
        rgb = torch.einsum("chw,cr->hwr", x, torch.tensor(factors.matrix))
        rgb = rgb + torch.tensor(factors.bias)
    elif x.shape[0] == 4:
        m = torch.tensor(SDXL_RGB if family == "sdxl" else SD_RGB)
        rgb = torch.einsum("chw,cr->hwr", x, m)
        if family == "sdxl":
            rgb = rgb + torch.tensor(SDXL_RGB_BIAS)
        rgb = (rgb + 1.0) * 0.5
    else:
        rgb = x[:3].permute(1, 2, 0)
        lo, hi = rgb.min(), rgb.max()
        rgb = (rgb - lo) / (hi - lo + 1e-6)
    arr = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return Image.fromarray(arr, "RGB")


def sample(
    ctx: Any,
    model: ModelHandle,
    positive: list[Cond],
    negative: list[Cond],
    latent: dict[str, Any],
    *,
    seed: int,
    steps: int,
    cfg: float,
    sampler: str,
    scheduler: str,
    denoise: float,
    window: StepWindow | None = None,
) -> dict[str, Any]:
    """The Sampler node's work: ``latent`` denoised by ``model``, guided by the prompts.

    Several prompts in a conditioning (Conditioning Combine) are each predicted and their
    predictions averaged, as ComfyUI does for prompts without areas. ``window``: Sampler
    (Advanced)'s steps and noise handling (``denoise`` is then ignored).

    Returns a LATENT (``samples``, and the ``noise_mask`` it was given, if it used one).
    """
    if model.family in ("sd3", "flux"):  # diffusion transformers, flow matching
        from nodes import dit

        return dit.sample(
            ctx, model, positive, negative, latent, seed=seed, steps=steps, cfg=cfg,
            sampler=sampler, scheduler=scheduler, denoise=denoise, window=window,
        )  # fmt: skip
    args = (ctx, model, positive, negative, latent)
    kw = dict(seed=seed, steps=steps, cfg=cfg, sampler=sampler, scheduler=scheduler,
              denoise=denoise, window=window)  # fmt: skip
    if model.freeu is None:
        return _sample_unet(*args, **kw)
    with freeu_patch(get_module(ctx, model.source, "unet"), model.freeu):
        return _sample_unet(*args, **kw)


def _sample_unet(
    ctx: Any, model: ModelHandle, positive: list[Cond], negative: list[Cond],
    latent: dict[str, Any], *, seed: int, steps: int, cfg: float, sampler: str,
    scheduler: str, denoise: float, window: StepWindow | None,
) -> dict[str, Any]:  # fmt: skip
    pos, neg = _prompts(positive, "positive"), _prompts(negative, "negative")
    if any(CONTROL_IMAGE_KEY in c.extra for c in (*pos, *neg)):
        raise NodeError(
            "InstructPixToPix Conditioning gives the prompts a control image, which only "
            "FLUX.1 Canny / Depth [dev] take; this model is a Stable Diffusion UNet "
            f"({model.family}): remove InstructPixToPix Conditioning"
        )
    unet = get_module(ctx, model.source, "unet")
    lora.activate(ctx, unet, "unet", model.patches, model.family)
    from nodes.ipadapter import installed

    with installed(ctx, unet, model.ip_adapters):
        return _sample_loaded_unet(
            ctx, model, unet, pos, neg, latent, seed=seed, steps=steps, cfg=cfg,
            sampler=sampler, scheduler=scheduler, denoise=denoise, window=window,
        )  # fmt: skip


def _sample_loaded_unet(
    ctx: Any, model: ModelHandle, unet: Any, pos: list[Cond], neg: list[Cond],
    latent: dict[str, Any], *, seed: int, steps: int, cfg: float, sampler: str,
    scheduler: str, denoise: float, window: StepWindow | None,
) -> dict[str, Any]:  # fmt: skip
    for name, conds in (("positive", pos), ("negative", neg)):
        for c in conds:
            _check_cond(c, name, model, unet)
    samples = _fit_empty_latent(latent, model, unet)
    _check_latent(samples, unet)
    device, dtype = torch.device(ctx.device), unet.dtype
    if ksampling.is_comfy(scheduler):
        sched: Any = _comfy_schedule(model, sampler, scheduler, seed, steps, denoise, window, dtype)
        if len(sched.sigmas) < 2:  # nothing to run: the latent as it came (ComfyUI does so)
            return dict(latent)
    else:
        sched = make_scheduler(model.scheduler_config, sampler, scheduler, seed)
    batch = samples.shape[0]
    do_cfg = cfg > 1.0 and unet.config.time_cond_proj_dim is None
    masked = any(c.extra.get("mask") is not None for c in (*pos, *neg))
    ranged = any("timestep_range" in c.extra for c in (*pos, *neg))
    if any(c.extra.get("mask_bounds") or "area_fraction" in c.extra for c in (*pos, *neg)):
        from nodes.comfycore import with_mask_bounds

        size = tuple(samples.shape[-2:])
        pos = with_mask_bounds(pos, size, model.vae_downscale)
        neg = with_mask_bounds(neg, size, model.vae_downscale)
    areas = any("area" in c.extra for c in (*pos, *neg))
    if areas:
        from nodes.comfycore import with_same_areas

        pos, neg = with_same_areas(pos, neg)
    single = len(pos) == 1 and len(neg) == 1 and not masked and not ranged and not areas

    generator = torch.Generator("cpu").manual_seed(int(seed))
    if isinstance(sched, ksampling.KSchedule):
        timesteps = sched.timesteps
        start = _comfy_start(sched, samples, window, device, latent.get("batch_index"))
    elif window is None:
        timesteps = _timesteps(sched, steps, denoise, device)
        start = _start_latents(
            sched, samples, latent, timesteps, generator, denoise >= 1.0, device, dtype
        )
    else:
        timesteps = _window_timesteps(sched, steps, window, device)
        if len(timesteps) == 0:  # nothing to run: the latent as it came (ComfyUI does so)
            return dict(latent)
        start = _window_start(sched, samples, latent, timesteps, generator, window, device, dtype)
    # A 9-channel inpainting UNet takes the mask and masked image as input (drawn after the
    # noise, as the pipeline does) and needs no latent blending.
    inpaint_inputs = unet_inpaint_inputs(
        latent, unet, generator, batch, do_cfg and single, device, dtype
    )
    mask = soft = None
    if inpaint_inputs is None and latent.get("noise_mask") is not None:
        # Differential Diffusion thresholds the mask in float32, as ComfyUI keeps it
        soft = _latent_mask(latent["noise_mask"], start.latents).to(device=device)
        mask = soft.to(dtype)

    guide = None
    changed = model.rescale_cfg is not None or model.cfg_zero_star or model.perp_neg
    if (changed and do_cfg) or model.pag:
        config = model.scheduler_config
        kind = config.get("prediction_type", model.prediction_type)
        guide = CfgGuidance(
            model.rescale_cfg, model.cfg_zero_star, kind == "v_prediction", sched,
            ksampling.ModelSampling(config, kind),
        )  # fmt: skip

    def prediction(
        p: Cond, n: Cond, guided: bool, area: Any = None, guided_by: Any = None
    ) -> _NoisePrediction:
        # SDXL's pooled text and size ids stay the whole image's on an area, as ComfyUI's
        # (its size conditioning comes from the prompt, not from the area)
        text = _text_conditioning(unet, model, p, n, samples, cfg, guided, device, dtype)
        control = ControlPlan(
            ctx,
            unet,
            p,
            n,
            do_cfg=guided,
            batch=batch,
            latent_size=tuple(samples.shape[-2:]) if area is None else area[0][2:],
            dtype=dtype,
            device=device,
            fit_aspect=area is not None,
        )
        extra_inputs = inpaint_inputs
        if area is not None and extra_inputs is not None:
            # a 9-channel UNet's mask and masked image cut to the area, as ComfyUI cuts its
            # concat conditioning (CONDNoiseShape)
            top, left, h, w = area[0]
            extra_inputs = tuple(t[..., top : top + h, left : left + w] for t in extra_inputs)
        return _NoisePrediction(
            unet, sched, text, cfg, guided, control, extra_inputs, total=len(timesteps),
            guide=guided_by, ip_adapters=model.ip_adapters,
        )  # fmt: skip

    if guide is not None and model.perp_neg is not None:
        if model.rescale_cfg is not None:
            raise NodeError("Perp-Neg and Rescale CFG each replace cfg: use one of them")
        empty, neg_scale = model.perp_neg
        guide.perp = (prediction(empty[0], empty[0], False), neg_scale)
    if guide is not None and model.pag:
        if not single:
            raise NodeError(
                "Perturbed-Attention Guidance works on one prompt for now, not on combined, "
                "area, mask or timestep-range prompts: remove one of them"
            )
        guide.pag = (_perturbed(unet, prediction(pos[0], pos[0], False)), model.pag)
    if single:
        predict: Any = prediction(pos[0], neg[0], do_cfg, guided_by=guide)
    else:
        size = tuple(samples.shape[-2:])
        pos_areas = tuple(_area(c, size, model, batch, device, dtype) for c in pos)
        neg_areas = tuple(_area(c, size, model, batch, device, dtype) for c in neg)
        predict = _AveragedPrediction(
            positive=tuple(prediction(c, c, False, a) for c, a in zip(pos, pos_areas, strict=True)),
            negative=(
                tuple(prediction(c, c, False, a) for c, a in zip(neg, neg_areas, strict=True))
                if do_cfg
                else ()
            ),
            cfg=cfg,
            positive_weights=tuple(_prompt_weight(c, size, batch, device, dtype) for c in pos),
            negative_weights=tuple(_prompt_weight(c, size, batch, device, dtype) for c in neg),
            positive_conds=tuple(pos),
            negative_conds=tuple(neg),
            positive_areas=pos_areas,
            negative_areas=neg_areas,
            guide=guide,
        )
    if isinstance(sched, ksampling.KSchedule):
        differential = model.differential_diffusion is not None
        return _comfy_run(ctx, model, sched, start, predict, soft if differential else mask, latent)
    step_kwargs = _step_kwargs(sched, generator)
    after = None
    if window is not None and window.leftover_noise and window.end < steps:
        after = sched.timesteps[window.end * sched.order]
    step_mask = _step_masks(mask, soft, timesteps, after, model.differential_diffusion)
    result, last = with_oom_advice(
        lambda: _run_steps(
            ctx, model, sched, timesteps, start, predict, step_mask, step_kwargs, dtype, after
        ),
        "sampling",
    )
    if window is not None and not window.leftover_noise and window.end < steps:
        result = _finish_early(last, start, step_mask(len(timesteps) - 1), sampler)
    out_latent: dict[str, Any] = {"samples": result.detach().float().cpu()}
    if mask is not None:
        out_latent["noise_mask"] = latent["noise_mask"]
    if latent.get("batch_index") is not None:
        out_latent["batch_index"] = latent["batch_index"]
    return out_latent


def _comfy_schedule(
    model: ModelHandle,
    sampler: str,
    scheduler: str,
    seed: int,
    steps: int,
    denoise: float,
    window: StepWindow | None,
    dtype: torch.dtype,
) -> ksampling.KSchedule:
    """A ComfyUI schedule's sigmas for the Sampler (``denoise``) or Sampler (Advanced)."""
    config = model.scheduler_config
    ms = ksampling.ModelSampling(config, config.get("prediction_type", model.prediction_type))
    if window is None:
        sigmas = ksampling.ksampler_sigmas(ms, scheduler, steps, denoise, sampler=sampler)
    else:
        sigmas = ksampling.ksampler_sigmas(
            ms,
            scheduler,
            steps,
            start=window.start,
            end=window.end,
            full_denoise=not window.leftover_noise,
            sampler=sampler,
        )
    return ksampling.KSchedule(ms, sampler, sigmas, seed, dtype)


def _comfy_start(
    ks: ksampling.KSchedule,
    samples: torch.Tensor,
    window: StepWindow | None,
    device: Any,
    batch_index: list[int] | None = None,
) -> _Start:
    """ComfyUI's start: its noise (none with add_noise off) at the first sigma, added to the
    input latent (an Empty Latent is zeros), all in float32."""
    init = samples.to(device=device, dtype=torch.float32)
    if window is not None and not window.add_noise:
        drawn = torch.zeros_like(init)
    else:
        drawn = ksampling.noise(tuple(init.shape), ks.seed, batch_index).to(device)
    return _Start(init, drawn, ksampling.noise_scaling(ks.ms, ks.sigmas[0].to(device), drawn, init))


def _comfy_run(
    ctx: Any,
    model: ModelHandle,
    ks: ksampling.KSchedule,
    start: _Start,
    predict: Any,
    mask: torch.Tensor | None,
    latent: dict[str, Any],
) -> dict[str, Any]:
    x = start.latents
    keep = None
    if mask is not None:  # blended inside each model call, as ComfyUI's inpainting wrapper
        keep = (mask.float(), start.init, start.noise)

    previews = _Previews(x.device, model)

    def on_step(i: int, total: int, den: torch.Tensor) -> None:
        ctx.progress(i + 1, total, previews.next(den))

    def steps() -> torch.Tensor:
        with small_conv_backend(x, x.device):
            return ksampling.run(ctx, ks, x, predict, keep, on_step, model.differential_diffusion)

    result = with_oom_advice(steps, "sampling")
    out: dict[str, Any] = {"samples": result.detach().float().cpu()}
    if mask is not None:
        out["noise_mask"] = latent["noise_mask"]
    if latent.get("batch_index") is not None:
        out["batch_index"] = latent["batch_index"]
    return out


def _check_latent(samples: torch.Tensor, unet: Any) -> None:
    if samples.ndim != 4 or samples.shape[1] != unet.config.out_channels:
        raise NodeError(
            f"the latent has shape {tuple(samples.shape)}, but this model works on "
            f"{unet.config.out_channels}-channel latents"
        )


@dataclass(frozen=True)
class _TextConditioning:
    """What the UNet is conditioned on besides the latent, batched for guidance."""

    embeds: torch.Tensor  # [negative batch, positive batch] with cfg, else positive only
    added: dict[str, torch.Tensor] | None  # SDXL's pooled embedding and size ids
    timestep_cond: torch.Tensor | None  # LCM-style UNets: the guidance scale embedded


def _text_conditioning(
    unet: Any,
    model: ModelHandle,
    pos: Cond,
    neg: Cond,
    samples: torch.Tensor,
    cfg: float,
    do_cfg: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> _TextConditioning:
    batch = samples.shape[0]
    pe, ne = pos.embeds, neg.embeds
    if do_cfg:
        pe, ne = _match_lengths(pe, ne)
        embeds = torch.cat([ne.repeat(batch, 1, 1), pe.repeat(batch, 1, 1)])
    else:
        embeds = pe.repeat(batch, 1, 1)
    embeds = embeds.to(device=device, dtype=dtype)
    added = None
    if unet.config.addition_embed_type == "text_time":
        added = _sdxl_added_cond(model, pos, neg, samples, do_cfg, device, dtype)
    if model.ip_adapters:
        from nodes.ipadapter import image_embeds

        embeds_ip = image_embeds(model.ip_adapters, batch, do_cfg, device, dtype)
        added = {**(added or {}), "image_embeds": embeds_ip}
    timestep_cond = None
    time_cond_dim = unet.config.time_cond_proj_dim
    if time_cond_dim is not None:
        w_vec = torch.tensor(cfg - 1).repeat(batch)
        timestep_cond = guidance_embedding(w_vec, time_cond_dim, dtype).to(
            device=device, dtype=dtype
        )
    return _TextConditioning(embeds, added, timestep_cond)


def _sdxl_added_cond(
    model: ModelHandle,
    pos: Cond,
    neg: Cond,
    samples: torch.Tensor,
    do_cfg: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """SDXL's pooled prompt embeddings and size/crop ids (the latent's pixel size, no crop,
    unless the conditioning names a size)."""
    batch = samples.shape[0]
    h, w = samples.shape[-2] * model.vae_downscale, samples.shape[-1] * model.vae_downscale

    def time_ids(c: Cond) -> torch.Tensor:
        return torch.tensor([list(c.size or (h, w, 0, 0, h, w))], dtype=dtype)

    if do_cfg:
        pooled = torch.cat([neg.pooled.repeat(batch, 1), pos.pooled.repeat(batch, 1)])
        ids = torch.cat([time_ids(neg).repeat(batch, 1), time_ids(pos).repeat(batch, 1)])
    else:
        pooled, ids = pos.pooled.repeat(batch, 1), time_ids(pos).repeat(batch, 1)
    return {
        "text_embeds": pooled.to(device=device, dtype=dtype),
        "time_ids": ids.to(device=device),
    }


def _timesteps(sched: Any, steps: int, denoise: float, device: torch.device) -> torch.Tensor:
    """The timesteps to run: all of them, or with denoise < 1 the last ones, as diffusers'
    img2img keeps the last ``int(steps * denoise)``."""
    sched.set_timesteps(steps, device=device)
    timesteps = sched.timesteps
    if denoise >= 1.0:
        return timesteps
    init_steps = min(int(steps * denoise), steps)
    t_start = max(steps - init_steps, 0)
    timesteps = timesteps[t_start * sched.order :]
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(t_start * sched.order)
    if len(timesteps) == 0:
        raise NodeError(
            f"denoise {denoise} with {steps} steps leaves no step to run; raise one of them"
        )
    return timesteps


def _window_timesteps(
    sched: Any, steps: int, window: StepWindow, device: torch.device
) -> torch.Tensor:
    """Steps ``start`` up to ``end`` of a ``steps``-step schedule (empty when none is left)."""
    sched.set_timesteps(steps, device=device)
    order = sched.order
    end = min(window.end, steps)
    if window.start >= end:
        return sched.timesteps[:0]
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(window.start * order)
    return sched.timesteps[window.start * order : end * order]


def _window_start(
    sched: Any,
    samples: torch.Tensor,
    latent: dict[str, Any],
    timesteps: torch.Tensor,
    generator: torch.Generator,
    window: StepWindow,
    device: torch.device,
    dtype: torch.dtype,
) -> _Start:
    """Sampler (Advanced)'s start: the input as it is (add_noise off: it carries an earlier
    pass's leftover noise), pure noise (step 0 from an Empty Latent: exactly the Sampler's
    start), or the input noised to the first step's level."""
    if not window.add_noise:
        init = samples.to(device=device, dtype=dtype)
        return _Start(init, torch.zeros_like(init), init)
    from_noise = window.start == 0 and not bool(samples.any())
    return _start_latents(sched, samples, latent, timesteps, generator, from_noise, device, dtype)


@dataclass(frozen=True)
class _Start:
    """Where the steps begin: the input latent, the noise drawn, the noised latent."""

    init: torch.Tensor
    noise: torch.Tensor
    latents: torch.Tensor


def _start_latents(
    sched: Any,
    samples: torch.Tensor,
    latent: dict[str, Any],
    timesteps: torch.Tensor,
    generator: torch.Generator,
    from_noise: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> _Start:
    """``from_noise``: pure noise (txt2img, the input's content ignored); otherwise the input
    latent noised to the first timestep's level (img2img)."""
    from diffusers.utils.torch_utils import randn_tensor

    init = samples.to(device=device, dtype=dtype)
    picked = latent.get("batch_index")
    if from_noise:
        noise = batch_randn(init.shape, generator, device, dtype, picked)
        return _Start(init, noise, noise * sched.init_noise_sigma)
    std = latent.get("posterior_std")
    # VAE Encode's sample, drawn first as the pipeline does. A node that resized the
    # samples but kept an old spread: use the mean alone.
    if std is not None and tuple(std.shape) == tuple(init.shape):
        init = init + std.to(device=device, dtype=dtype) * randn_tensor(
            init.shape, generator=generator, device=device, dtype=dtype
        )
    noise = batch_randn(init.shape, generator, device, dtype, picked)
    batch = samples.shape[0]
    return _Start(init, noise, sched.add_noise(init, noise, timesteps[:1].repeat(batch)))


def batch_randn(
    shape: Any,
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
    batch_index: list[int] | None = None,
) -> torch.Tensor:
    """The pipelines' noise for a latent batch. With a ``batch_index`` (latents picked from
    a batch by Latent From Batch): the batch's noise drawn up to the largest index, each
    latent taking the row of its index, so it gets the noise it had in its batch."""
    from diffusers.utils.torch_utils import randn_tensor

    shape = tuple(shape)
    if not batch_index or len(batch_index) != shape[0]:
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    whole = randn_tensor(
        (max(batch_index) + 1, *shape[1:]), generator=generator, device=device, dtype=dtype
    )
    return whole[list(batch_index)]


@dataclass(frozen=True)
class _NoisePrediction:
    """One model call: the UNet (with ControlNet residuals and a 9-channel UNet's inpainting
    inputs) on the scheduler-scaled latents, negative and positive combined by cfg."""

    unet: Any
    sched: Any
    text: _TextConditioning
    cfg: float
    do_cfg: bool
    control: ControlPlan
    inpaint_inputs: tuple[torch.Tensor, torch.Tensor] | None
    total: int
    #: How negative and positive combine (Rescale CFG, CFG-Zero*: CfgGuidance); None: plain cfg.
    guide: Any = None
    #: Apply IP-Adapter's adapters (their processors are on the UNet for the run).
    ip_adapters: tuple[Any, ...] = ()

    def __call__(self, latents: torch.Tensor, i: int, t: torch.Tensor) -> torch.Tensor:
        text = self.text
        x = torch.cat([latents] * 2) if self.do_cfg else latents
        x = self.sched.scale_model_input(x, t)
        residuals: dict[str, Any] = {}
        if self.control:
            down, mid = self.control.residuals(x, t, text.embeds, i, self.total, text.added)
            residuals = {
                "down_block_additional_residuals": down,
                "mid_block_additional_residual": mid,
            }
        if self.inpaint_inputs is not None:
            x = torch.cat([x, *self.inpaint_inputs], dim=1)
        if self.ip_adapters:  # each adapter's weight, or 0 outside its window
            from nodes.ipadapter import set_scales

            set_scales(self.unet, self.ip_adapters, float(t))
        pred = self.unet(
            x,
            t,
            encoder_hidden_states=text.embeds,
            timestep_cond=text.timestep_cond,
            added_cond_kwargs=text.added,
            return_dict=False,
            **residuals,
        )[0]
        if self.do_cfg:
            uncond, cond = pred.chunk(2)
            if self.guide is not None:
                return self.guide(uncond, cond, self.cfg, latents, t, i)
            pred = uncond + self.cfg * (cond - uncond)
        elif self.guide is not None:  # no cfg: only Perturbed-Attention Guidance applies
            return self.guide.perturbed_guidance(pred, pred, latents, t, i)
        return pred


class _ValueOnlyAttention:
    """A self-attention processor that returns its value path (the attention map an
    identity): Perturbed-Attention Guidance's perturbation, as diffusers'
    PAGIdentitySelfAttnProcessor2_0 computes it for its perturbed half and ComfyUI's patch
    (attention returning v)."""

    def __call__(self, attn: Any, hidden_states: torch.Tensor, *args: Any, **kwargs: Any):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, kwargs.get("temb"))
        ndim = hidden_states.ndim
        if ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        hidden_states = attn.to_out[1](attn.to_out[0](attn.to_v(hidden_states)))
        if ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _perturbed(unet: Any, predict: Any) -> Any:
    """``predict`` with the self-attention of the UNet's middle block perturbed (every
    ``attn1`` there: ComfyUI's ``"middle", 0`` patch, diffusers' ``pag_applied_layers``
    ``["mid"]``)."""
    layers = [
        m
        for name, m in unet.mid_block.named_modules()
        if name.endswith("attn1") and hasattr(m, "set_processor")
    ]
    if not layers:
        raise NodeError(
            "Perturbed-Attention Guidance: this UNet's middle block has no self-attention "
            "to perturb"
        )

    def perturbed(latents: torch.Tensor, i: int, t: torch.Tensor) -> torch.Tensor:
        saved = [m.processor for m in layers]
        try:
            for m in layers:
                m.processor = _ValueOnlyAttention()
            return predict(latents, i, t)
        finally:
            for m, processor in zip(layers, saved, strict=True):
                m.processor = processor

    return perturbed


def perp_neg(
    pos: torch.Tensor, neg: torch.Tensor, empty: torch.Tensor, cfg: float, neg_scale: float
) -> torch.Tensor:
    """Perp-Neg (Armandpour et al. 2023) as ComfyUI computes it: guidance from the empty
    prompt's prediction towards the positive one, minus ``neg_scale`` times the part of the
    negative direction perpendicular to the positive one (one projection over the whole
    batch). Any affine form of the predictions (noise, v, clean latent) gives the same."""
    p, n = pos - empty, neg - empty
    perp = n - (torch.mul(n, p).sum() / (torch.norm(p) ** 2)) * p
    return empty + cfg * (p - perp * neg_scale)


def zero_star_scale(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """CFG-Zero*'s optimal scale of the negative prediction (Fan et al. 2025), per image:
    <positive, negative> / |negative|^2, as ComfyUI computes it (``optimized_scale``)."""
    p, n = positive.reshape(positive.shape[0], -1), negative.reshape(negative.shape[0], -1)
    scale = (p * n).sum(dim=1, keepdim=True) / ((n * n).sum(dim=1, keepdim=True) + 1e-8)
    return scale.reshape([positive.shape[0]] + [1] * (positive.ndim - 1))


def zero_star(x: torch.Tensor, uncond: torch.Tensor, cond: torch.Tensor, guided: torch.Tensor,
              cfg: float) -> torch.Tensor:  # fmt: skip
    """ComfyUI's CFGZeroStar on clean-latent predictions at the sampler's input ``x``:
    ``guided`` (the cfg result) moved as if the negative prediction had been scaled by
    :func:`zero_star_scale` of the two predictions' noise parts."""
    alpha = zero_star_scale(x - cond, x - uncond)
    return guided + uncond * (alpha - 1.0) + cfg * uncond * (1.0 - alpha)


class CfgGuidance:
    """How a step's negative and positive predictions combine on an SD model, when a node
    changed it from plain cfg: ComfyUI's RescaleCFG (``rescale``: the guided prediction,
    taken as a v-prediction whatever the model predicts, scaled to the spread (standard
    deviation per image) of the positive one and mixed with the plain one by that much;
    Lin et al. 2023, section 3.4), then CFG-Zero* (``zero_star``: on the clean-latent
    predictions at k-diffusion's input, as ComfyUI's post-cfg step)."""

    def __init__(
        self, rescale: float | None, zero_star: bool, v_prediction: bool, sched: Any, ms: Any,
        perp: tuple[Any, float] | None = None,
    ) -> None:  # fmt: skip
        self.rescale, self.zero_star, self.v_prediction = rescale, zero_star, v_prediction
        self.sched, self.ms = sched, ms
        #: Perp-Neg: (the empty prompt's prediction, its negative scale)
        self.perp = perp
        #: Perturbed-Attention Guidance: (the positive prompt's perturbed prediction, scale)
        self.pag: tuple[Any, float] | None = None

    def perturbed_guidance(self, guided, cond, latents: torch.Tensor, t: torch.Tensor, i: int):
        """``guided`` moved by scale x (positive - perturbed prediction): ComfyUI's PAG
        post-cfg step (on clean-latent predictions; the same in the model's own output,
        which is affine in them at one step)."""
        if self.pag is None or not self.pag[1]:
            return guided
        perturbed, scale = self.pag
        return guided + scale * (cond - perturbed(latents, i, t))

    def _sigma(self, t: torch.Tensor) -> torch.Tensor:
        """The step's noise level (k-diffusion's sigma): the ComfyUI schedule's own, an
        Euler-type scheduler's current one, or the timestep's from the training schedule."""
        if isinstance(self.sched, ksampling.KSchedule):
            return self.sched.sigma.float()
        sigmas, index = getattr(self.sched, "sigmas", None), getattr(self.sched, "step_index", None)
        if sigmas is not None and index is not None and float(sigmas.max()) > 1.0:
            return sigmas[index].float()
        return self.ms.sigma(torch.as_tensor(t).reshape(1).float().cpu())[0]

    def __call__(self, uncond, cond, cfg: float, latents: torch.Tensor, t: torch.Tensor, i: int):
        sigma = self._sigma(t).to(latents.device)
        alpha = (1 + sigma * sigma) ** -0.5
        s_vp = sigma * alpha
        x = self.sched.scale_model_input(latents, t).to(cond.dtype)  # the UNet's input

        def as_v(out):  # the model's output as a v-prediction at this step
            return out if self.v_prediction else (out - s_vp * x) / alpha

        def from_v(v):
            return v if self.v_prediction else alpha * v + s_vp * x

        guided = uncond + cfg * (cond - uncond)
        if self.perp is not None:
            empty, neg_scale = self.perp
            guided = perp_neg(cond, uncond, empty(latents, i, t), cfg, neg_scale)
        elif self.rescale is not None:
            v_u, v_c = as_v(uncond), as_v(cond)
            v_cfg = v_u + cfg * (v_c - v_u)
            dims = tuple(range(1, v_cfg.ndim))
            ratio = v_c.std(dim=dims, keepdim=True) / v_cfg.std(dim=dims, keepdim=True)
            guided = from_v(self.rescale * v_cfg * ratio + (1 - self.rescale) * v_cfg)
        if self.zero_star:
            x_in = x / alpha  # k-diffusion's input: x0 + sigma * noise

            def den(out):  # the clean-latent prediction
                return alpha * x - s_vp * as_v(out)

            moved = zero_star(x_in, den(uncond), den(cond), den(guided), cfg)
            guided = from_v((alpha * x - moved) / s_vp)
        return self.perturbed_guidance(guided, cond, latents, t, i)


@dataclass(frozen=True)
class _AveragedPrediction:
    """Several prompts (Conditioning Combine): each prompt's prediction, averaged with equal
    weights per side, then guided (ComfyUI's way for prompts without areas or masks)."""

    positive: tuple[_NoisePrediction, ...]
    negative: tuple[_NoisePrediction, ...]  # empty without guidance
    cfg: float
    #: Per prompt: None (weight 1 everywhere) or Conditioning Set Mask's mask * strength.
    positive_weights: tuple[torch.Tensor | None, ...] = ()
    negative_weights: tuple[torch.Tensor | None, ...] = ()
    #: The prompts themselves: one with a timestep range (Conditioning Set Timestep
    #: Range) is left out of the steps outside it.
    positive_conds: tuple[Cond, ...] = ()
    negative_conds: tuple[Cond, ...] = ()
    #: Per prompt: None, or Conditioning Set Area's (top, left, height, width) in latent
    #: cells and its feathered weight [batch, 1, height, width].
    positive_areas: tuple[Any, ...] = ()
    negative_areas: tuple[Any, ...] = ()
    #: How negative and positive combine (Rescale CFG, CFG-Zero*: CfgGuidance); None: plain cfg.
    guide: Any = None
    #: Apply IP-Adapter's adapters (their processors are on the UNet for the run).
    ip_adapters: tuple[Any, ...] = ()

    def __call__(self, latents: torch.Tensor, i: int, t: torch.Tensor) -> torch.Tensor:
        cond = self._side(
            self.positive,
            self.positive_weights,
            self.positive_conds,
            self.positive_areas,
            latents,
            i,
            t,
        )
        if not self.negative:
            return cond
        uncond = self._side(
            self.negative,
            self.negative_weights,
            self.negative_conds,
            self.negative_areas,
            latents,
            i,
            t,
        )
        if self.guide is not None:
            return self.guide(uncond, cond, self.cfg, latents, t, i)
        return uncond + self.cfg * (cond - uncond)

    @staticmethod
    def _side(preds, weights, conds, areas, latents, i, t) -> torch.Tensor:
        from nodes.comfycore import in_range

        active = [k for k in range(len(preds)) if not conds or in_range(conds[k], float(t))]
        if not active:  # no prompt acts at this step: ComfyUI's prediction is then zero
            return torch.zeros_like(latents)
        outs, ws = [], []
        for k in active:
            area = areas[k] if areas else None
            if area is None:
                outs.append(preds[k](latents, i, t))
                ws.append(weights[k] if weights else None)
                continue
            # an area prompt is predicted on its part of the latent only (ComfyUI's way)
            (top, left, h, w), mult = area
            part = (..., slice(top, top + h), slice(left, left + w))
            full = torch.zeros_like(latents)
            full[part] = preds[k](latents[part], i, t)
            weight = torch.zeros_like(latents[:, :1])
            weight[part] = mult.to(weight.dtype)
            outs.append(full)
            ws.append(weight)
        return _mean(outs, tuple(ws))


def _mean(preds: list[torch.Tensor], weights: tuple[torch.Tensor | None, ...] = ()) -> torch.Tensor:
    """The predictions averaged; with masks, weighted per latent cell as ComfyUI does:
    ``sum(pred * w) / (1e-37 + sum(w))`` (a cell no prompt covers predicts 0)."""
    if not any(w is not None for w in weights):
        total = preds[0]
        for p in preds[1:]:
            total = total + p
        return total / len(preds)
    num = torch.zeros_like(preds[0])
    den = torch.full_like(preds[0], 1e-37)
    for p, w in zip(preds, weights, strict=True):
        if w is None:
            num, den = num + p, den + 1.0
        else:
            num, den = num + p * w, den + w
    return num / den


def _area(
    c: Cond, size: tuple[int, ...], model: ModelHandle, batch: int, device: Any, dtype: Any
) -> Any:
    """An area prompt's part of the latent and its weight there, or None.

    As ComfyUI's get_area_and_mult: without a mask, the area's strength faded at its inner
    edges; with a mask (Conditioning Set Mask, 'mask bounds' or after a Set Area), the mask
    cut to the area times the mask's strength times the area's, with no fade."""
    if "area" not in c.extra:
        return None
    from nodes.comfycore import area_cells, area_weight

    cells = area_cells(c.extra["area"], size, model.vae_downscale)
    strength = c.extra.get("strength", 1.0)
    weight = _prompt_weight(c, size, batch, device, dtype)
    if weight is None:
        return cells, area_weight(cells, size, strength, batch).to(device)
    top, left, h, w = cells
    return cells, weight[..., top : top + h, left : left + w] * float(strength)


def _prompt_weight(
    c: Cond, size: tuple[int, ...], batch: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor | None:
    """A masked prompt's weight per latent cell, ``[batch, 1, h, w]``: its mask resized to the
    latent (bilinear, as ComfyUI) times its strength; None for an unmasked prompt. A prompt
    given a strength (Conditioning Set Area Strength) without an area has it everywhere, times
    its mask's (an area's strength is the area's: ``_area``)."""
    entry = c.extra.get("mask")
    extra = 1.0 if "area" in c.extra else float(c.extra.get("strength", 1.0))
    if entry is None:
        if extra == 1.0:
            return None
        return torch.full((batch, 1, *size), extra, device=device, dtype=dtype)
    from nodes.comfycore import latent_mask

    mask, strength = entry
    m = mask[None] if mask.ndim == 2 else mask
    if m.shape[0] not in (1, batch):
        raise NodeError(
            f"a prompt's mask holds {m.shape[0]} masks for a batch of {batch}: give one mask, "
            "or one per image"
        )
    m = latent_mask(m, size)
    m = m.expand(batch, -1, -1) if m.shape[0] == 1 else m
    return (m[:, None] * float(strength) * extra).to(device=device, dtype=dtype)


#: Samplers whose diffusers step gives no clean-latent prediction, so they cannot end early
#: without leftover noise (ComfyUI's last step down to noise level 0).
NO_CLEAN_PREDICTION = ("dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "pndm", "deis", "uni_pc")


def _finish_early(
    last: Any, start: _Start, mask: torch.Tensor | None, sampler: str
) -> torch.Tensor:
    """Ending before the schedule's last step without leftover noise: the model's clean
    prediction at the last step run, which is what ComfyUI's final step to noise level 0
    gives (exactly so for euler)."""
    x0 = _shown(last, None) if last is not None else None
    if x0 is None:
        raise NodeError(
            f"sampler {sampler!r} cannot stop early without leftover noise: turn on "
            "return_with_leftover_noise, or choose another sampler (euler, heun, lms, ddim, ...)"
        )
    if mask is not None:
        x0 = (1 - mask) * start.init + mask * x0
    return x0


def _step_kwargs(sched: Any, generator: torch.Generator) -> dict[str, Any]:
    """``eta`` (DDIM's: 0, as the pipelines) and the seeded generator, where ``step`` takes them."""
    step_params = set(inspect.signature(sched.step).parameters)
    extra: dict[str, Any] = {}
    if "eta" in step_params:
        extra["eta"] = 0.0
    if "generator" in step_params:
        extra["generator"] = generator
    return extra


def _run_steps(
    ctx: Any,
    model: ModelHandle,
    sched: Any,
    timesteps: torch.Tensor,
    start: _Start,
    predict: _NoisePrediction,
    step_mask: Callable[[int], torch.Tensor | None],
    step_kwargs: dict[str, Any],
    dtype: torch.dtype,
    after: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Any]:
    """The denoising steps, each checking for interrupt and reporting progress with a preview.
    Returns the latents and the last step's scheduler output. ``after``: the timestep that
    follows the last one run, when the run stops there with its leftover noise."""
    latents = start.latents
    out = None
    total = len(timesteps)
    previews = _Previews(latents.device, model)
    with torch.no_grad(), small_conv_backend(latents, latents.device):
        for i, t in enumerate(timesteps):
            ctx.check_interrupt()
            pred = predict(latents, i, t)
            out = sched.step(pred, t, latents, **step_kwargs, return_dict=True)
            latents = out.prev_sample.to(dtype)
            mask = step_mask(i)
            if mask is not None:
                latents = _keep_unmasked(sched, start, timesteps, i, mask, latents, after)
            ctx.progress(i + 1, total, previews.next(_shown(out, latents)))
    return latents, out


def _step_masks(
    mask: torch.Tensor | None,
    soft: torch.Tensor | None,
    timesteps: torch.Tensor,
    after: torch.Tensor | None,
    differential: float | None,
) -> Callable[[int], torch.Tensor | None]:
    """The noise mask each step blends with: the latent's (``mask``), or with Differential
    Diffusion (``differential``: its strength) the float32 ``soft`` mask thresholded at the
    step's timestep, the schedule's span running from its first timestep to the one it stops
    at (0 at the end)."""
    if mask is None or soft is None or differential is None or len(timesteps) == 0:
        return lambda i: mask
    start = float(timesteps[0])
    end = float(after) if after is not None else 0.0

    def at(i: int) -> torch.Tensor:
        m = differential_mask(soft, float(timesteps[i]), start, end, differential)
        return m.to(mask.dtype)

    return at


class _Previews:
    """The live preview of each step, without making a GPU wait for it.

    On the CPU each step's preview is made at once. On a GPU, reading the latents back at
    every step would stall the queue of kernels the next step launches (measured on an H200:
    the graph 6 % behind diffusers' pipeline, which shows no preview); so the latent is
    copied out without blocking and shown once the copy has landed, a step or so late. All
    three sampling paths use it: the diffusers schedulers', ComfyUI's (k-diffusion) and the
    transformers' (nodes/dit.py).
    """

    def __init__(self, device: torch.device, model: Any):
        self.family, self.factors = model.family, model.latent_rgb
        self.asynchronous = device.type == "cuda"
        self.pending: tuple[torch.Tensor, Any] | None = None

    def next(self, latents: torch.Tensor | None) -> Any:
        if latents is None:
            return None
        if not self.asynchronous:
            return preview_image(latents, self.family, self.factors)
        shown = None
        if self.pending is not None and self.pending[1].query():
            shown = preview_image(self.pending[0], self.family, self.factors)
            self.pending = None
        if self.pending is None:
            copy = torch.empty(latents[:1].shape, dtype=latents.dtype, pin_memory=True)
            copy.copy_(latents[:1], non_blocking=True)
            landed = torch.cuda.Event()
            landed.record()
            self.pending = (copy, landed)
        return shown


def _keep_unmasked(
    sched: Any,
    start: _Start,
    timesteps: torch.Tensor,
    i: int,
    mask: torch.Tensor,
    latents: torch.Tensor,
    after: torch.Tensor | None = None,
) -> torch.Tensor:
    """Outside the noise mask, the input latent noised to the next step's level (diffusers'
    inpainting blend), or the input latent itself after the schedule's last step."""
    keep = start.init
    if i < len(timesteps) - 1:
        keep = sched.add_noise(start.init, start.noise, timesteps[i + 1 : i + 2])
    elif after is not None:
        keep = sched.add_noise(start.init, start.noise, after.reshape(1))
    return (1 - mask) * keep + mask * latents


def _shown(out: Any, latents: torch.Tensor | None) -> torch.Tensor | None:
    """What the preview shows: the scheduler's predicted clean latent where it gives one."""
    x0 = getattr(out, "pred_original_sample", None)
    if x0 is None:
        x0 = getattr(out, "denoised", None)
    return x0 if x0 is not None else latents


def _fit_empty_latent(latent: dict[str, Any], model: ModelHandle, unet: Any) -> torch.Tensor:
    """An Empty Latent remade for a model whose VAE is not 8x or not 4 channels."""
    samples = latent["samples"]
    size = latent.get("pixel_size")
    if size is None or samples.ndim != 4 or bool(samples.any()):
        return samples
    height, width = size
    if tuple(samples.shape[-2:]) != (height // 8, width // 8):
        return samples  # resized since: not the Empty Latent it was
    f = model.vae_downscale
    shape = (samples.shape[0], unet.config.out_channels, height // f, width // f)
    if tuple(samples.shape) == shape:
        return samples
    return torch.zeros(shape, dtype=samples.dtype)


def _latent_mask(mask: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    m = mask.float()
    if m.ndim == 2:
        m = m[None, None]
    elif m.ndim == 3:
        m = m[:, None]
    m = torch.nn.functional.interpolate(m, size=latents.shape[-2:])
    if m.shape[0] != latents.shape[0]:
        m = m[:1].expand(latents.shape[0], -1, -1, -1)
    return m


def fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """FreeU's filter (ComfyUI's ``Fourier_filter``): the centred low frequencies of ``x``
    (a box of ``threshold`` either side) scaled by ``scale``."""
    device = x.device
    work = x.float() if device.type != "mps" else x.float().cpu()  # no MPS FFT
    freq = torch.fft.fftshift(torch.fft.fftn(work, dim=(-2, -1)), dim=(-2, -1))
    b, c, h, w = freq.shape
    mask = torch.ones((b, c, h, w), device=work.device)
    crow, ccol = h // 2, w // 2
    mask[..., crow - threshold : crow + threshold, ccol - threshold : ccol + threshold] = scale
    freq = torch.fft.ifftshift(freq * mask, dim=(-2, -1))
    return torch.fft.ifftn(freq, dim=(-2, -1)).real.to(device=device, dtype=x.dtype)


def freeu_step(h: torch.Tensor, hsp: torch.Tensor, table: dict, v2: bool) -> tuple:
    """ComfyUI's FreeU / FreeU_V2 output-block patch on the backbone features ``h`` and the
    skip features ``hsp`` an output block joins: ``table`` maps h's channel count to (b, s)
    (model channels x 4: b1, s1; x 2: b2, s2); other blocks are left alone. ``h`` is
    changed in place, as by the patch."""
    scale = table.get(int(h.shape[1]))
    if scale is None:
        return h, hsp
    half = h.shape[1] // 2
    if v2:  # the backbone scaled by its own (min-max normalised) channel mean
        mean = h.mean(1).unsqueeze(1)
        b = mean.shape[0]
        hi = torch.max(mean.view(b, -1), dim=-1, keepdim=True)[0].unsqueeze(2).unsqueeze(3)
        lo = torch.min(mean.view(b, -1), dim=-1, keepdim=True)[0].unsqueeze(2).unsqueeze(3)
        mean = (mean - lo) / (hi - lo)
        h[:, :half] = h[:, :half] * ((scale[0] - 1) * mean + 1)
    else:
        h[:, :half] = h[:, :half] * scale[0]
    return h, fourier_filter(hsp, threshold=1, scale=scale[1])


@contextlib.contextmanager
def freeu_patch(unet: Any, freeu: tuple[float, float, float, float, str]) -> Any:
    """Inside: ``unet`` runs with FreeU as ComfyUI's FreeU / FreeU_V2 nodes patch it
    (``freeu``: b1, b2, s1, s2, version). diffusers' up blocks call their FreeU function
    between each resnet's inputs; ComfyUI chooses (b, s) by the backbone's channel count,
    diffusers by the block, so its function is swapped for ComfyUI's choice while inside
    (the blocks' own values are set to 1 only to switch the path on)."""
    from diffusers.models.unets import unet_2d_blocks

    b1, b2, s1, s2, version = freeu
    channels = int(unet.config.block_out_channels[0])
    table = {channels * 4: (b1, s1), channels * 2: (b2, s2)}
    v2 = version == "v2"

    def apply(resolution_idx: int, hidden_states, res_hidden_states, **_: Any):
        return freeu_step(hidden_states, res_hidden_states, table, v2)

    original = unet_2d_blocks.apply_freeu
    unet.enable_freeu(s1=1.0, s2=1.0, b1=1.0, b2=1.0)
    unet_2d_blocks.apply_freeu = apply
    try:
        yield
    finally:
        unet_2d_blocks.apply_freeu = original
        unet.disable_freeu()
