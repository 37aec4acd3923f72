"""Inpainting: Set Latent Noise Mask (any checkpoint), VAE Encode for Inpaint (with
mask growing; also feeds 9-channel inpainting checkpoints and FLUX.1 Fill their extra
inputs) and Inpaint Model Conditioning (the same extra inputs, starting from the image
itself: ComfyUI's InpaintModelConditioning).

A LATENT may carry:
  ``noise_mask``  [B, H, W] in 0..1: the sampler keeps the latent outside it at every step.
  ``inpaint``     for 9-channel UNets and FLUX.1 Fill: the (pixel-space) mask and the masked
                  image's latent distribution (scaled mean and std); the sampler draws the
                  masked latent with its seed after the noise, as StableDiffusionInpaintPipeline
                  and FluxFillPipeline do.
"""

from __future__ import annotations

from typing import Any

from nodes.mask import _as_batch, check_same_size
from studio.errors import NodeError
from studio.graph.spec import InputSpec, OutputSpec, node
from studio.graph.types import ValueType as T


@node(
    "set_latent_noise_mask",
    title="Set Latent Noise Mask",
    category="inpaint",
    description=(
        "Limits sampling to the masked area: outside the mask the latent is kept as it is at "
        "every step. Works with any checkpoint (use a VAE Encode of the image as the latent)."
    ),
    inputs=[
        InputSpec("latent", T.LATENT),
        InputSpec("mask", T.MASK, tooltip="1 where the image may change."),
    ],
    outputs=[OutputSpec("latent", T.LATENT)],
)
def set_latent_noise_mask(ctx, latent: dict, mask: Any) -> dict:
    out = dict(latent)
    out["noise_mask"] = _as_batch(mask).float()
    return out


@node(
    "vae_encode_inpaint",
    title="VAE Encode for Inpaint",
    category="inpaint",
    description=(
        "Encodes an image for inpainting: the masked area is blanked to grey, the mask grown a "
        "little to blend the seam, and the latent keeps the mask. Inpainting models "
        "(9-channel UNets, FLUX.1 Fill) also get the masked image and the mask as extra "
        "inputs (for FLUX.1 Fill set grow_mask_by 0 to match FluxFillPipeline)."
    ),
    inputs=[
        InputSpec("pixels", T.IMAGE, tooltip="The image to inpaint."),
        InputSpec("vae", T.VAE),
        InputSpec("mask", T.MASK, tooltip="1 where the image will be repainted."),
        InputSpec(
            "grow_mask_by",
            T.INT,
            default=6,
            min=0,
            max=64,
            tooltip="Pixels to grow the mask by, so the repainted area blends in.",
        ),
    ],
    outputs=[OutputSpec("latent", T.LATENT)],
)
def vae_encode_inpaint(ctx, pixels: Any, vae: Any, mask: Any, grow_mask_by: int) -> dict:
    import torch

    from nodes import sdload
    from nodes.latent import _check_vae
    from nodes.mask import grow_mask

    _check_vae(vae)
    mask = _as_batch(mask).float()
    check_same_size(pixels, mask)
    f = vae.downscale
    if pixels.shape[1] % f or pixels.shape[2] % f:
        raise NodeError(
            f"the image is {pixels.shape[2]}x{pixels.shape[1]}; inpainting needs both sides to be "
            f"multiples of {f} (crop or scale it first)"
        )
    # Binarise as diffusers' mask processor does, then grow.
    hard = (mask >= 0.5).float()
    if grow_mask_by:
        hard = grow_mask.execute(ctx, mask=hard, pixels=grow_mask_by)
    if hard.shape[0] != pixels.shape[0]:
        hard = hard[:1].expand(pixels.shape[0], -1, -1)
    keep = (hard < 0.5).unsqueeze(-1).to(pixels.dtype)
    # The masked area becomes 0 in [-1, 1] (mid grey), as in the inpaint pipeline.
    x = (pixels[..., :3] * 2.0 - 1.0) * keep
    model = sdload.get_module(ctx, vae.source, vae.component)
    x = x.permute(0, 3, 1, 2).to(device=model.device, dtype=model.dtype)

    def encode() -> Any:
        with torch.no_grad():
            return model.encode(x).latent_dist

    dist = sdload.with_oom_advice(encode, "encoding the image")
    mean = ((dist.mean - vae.shift_factor) * vae.scaling_factor).float().cpu()
    std = (dist.std * vae.scaling_factor).float().cpu()
    return {
        "samples": mean,
        "posterior_std": std,
        "noise_mask": hard,
        "inpaint": {"mask": hard, "masked_mean": mean, "masked_std": std},
    }


@node(
    "inpaint_model_conditioning",
    title="Inpaint Model Conditioning",
    category="inpaint",
    description=(
        "Prepares inpainting the way ComfyUI's InpaintModelConditioning does: the latent is "
        "the image itself (so denoise below 1 keeps its colours under the mask), inpainting "
        "models (9-channel UNets, FLUX.1 Fill) get the image with the masked area blanked "
        "and the mask as extra inputs, and the prompts pass through unchanged. The mask is "
        "not grown."
    ),
    inputs=[
        InputSpec("positive", T.CONDITIONING),
        InputSpec("negative", T.CONDITIONING),
        InputSpec("vae", T.VAE),
        InputSpec("pixels", T.IMAGE, tooltip="The image to inpaint."),
        InputSpec("mask", T.MASK, tooltip="1 where the image will be repainted."),
        InputSpec(
            "noise_mask",
            T.BOOLEAN,
            default=True,
            tooltip=(
                "Keep the image outside the mask at every step. Off: the whole image is "
                "sampled again (an inpainting model still sees the mask)."
            ),
        ),
    ],
    outputs=[
        OutputSpec("positive", T.CONDITIONING),
        OutputSpec("negative", T.CONDITIONING),
        OutputSpec("latent", T.LATENT),
    ],
)
def inpaint_model_conditioning(
    ctx, positive: Any, negative: Any, vae: Any, pixels: Any, mask: Any, noise_mask: bool
) -> tuple[Any, Any, dict]:
    from nodes.latent import vae_encode

    blanked = vae_encode_inpaint.execute(ctx, pixels=pixels, vae=vae, mask=mask, grow_mask_by=0)
    image = vae_encode.execute(ctx, image=pixels, vae=vae)
    latent = {
        "samples": image["samples"],
        "posterior_std": image["posterior_std"],
        "inpaint": blanked["inpaint"],
    }
    if noise_mask:
        latent["noise_mask"] = blanked["noise_mask"]
    return positive, negative, latent


def unet_inpaint_inputs(
    latent: dict, unet: Any, generator: Any, batch: int, do_cfg: bool, device: Any, dtype: Any
) -> tuple[Any, Any] | None:
    """(mask, masked latents) for a 9-channel UNet, drawn as the inpaint pipeline does;
    None for an ordinary 4-channel UNet. Call it after the initial noise is drawn."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    extra = unet.config.in_channels - unet.config.out_channels
    if extra <= 0:
        return None
    info = latent.get("inpaint")
    if info is None:
        raise NodeError(
            "this is an inpainting checkpoint (its UNet takes the masked image too): give the "
            "Sampler a latent from VAE Encode for Inpaint"
        )
    mean, std = info["masked_mean"], info["masked_std"]
    if extra != 1 + mean.shape[1]:
        raise NodeError(
            f"this UNet takes {extra} extra input channels; Studio knows 1 + {mean.shape[1]}"
        )
    mean = mean.to(device=device, dtype=dtype)
    masked = mean + std.to(device=device, dtype=dtype) * randn_tensor(
        mean.shape, generator=generator, device=device, dtype=dtype
    )
    m = info["mask"].unsqueeze(1).to(dtype=dtype)
    m = torch.nn.functional.interpolate(m, size=mean.shape[-2:]).to(device=device)
    if masked.shape[0] != batch:
        masked = masked[:1].repeat(batch, 1, 1, 1)
    if m.shape[0] != batch:
        m = m[:1].repeat(batch, 1, 1, 1)
    if do_cfg:
        m, masked = torch.cat([m] * 2), torch.cat([masked] * 2)
    return m, masked


@node(
    "differential_diffusion",
    title="Differential Diffusion",
    category="inpaint",
    description=(
        "Makes a soft inpainting mask (feathered or painted in grey) repaint gradually: at each "
        "step the sampler repaints where the mask is at least the share of the schedule still "
        "to run, so strong parts change over more steps and weak parts over fewer, for smooth "
        "seams. Needs a latent with a noise mask; a hard 0/1 mask is unchanged by it. "
        "ComfyUI's DifferentialDiffusion."
    ),
    inputs=[
        InputSpec("model", T.MODEL),
        InputSpec(
            "strength",
            T.FLOAT,
            default=1.0,
            min=0.0,
            max=1.0,
            step=0.01,
            tooltip="1: the per-step 0/1 mask alone; below 1 it is mixed with the soft mask "
            "(0: as without this node).",
        ),
    ],
    outputs=[OutputSpec("model", T.MODEL)],
)
def differential_diffusion(ctx, model: Any, strength: float = 1.0) -> Any:
    import dataclasses

    from nodes.values import ModelHandle

    if not isinstance(model, ModelHandle):
        raise NodeError(f"the model input is not a model (got {type(model).__name__})")
    if not 0.0 <= strength <= 1.0:
        raise NodeError(f"strength {strength} must be between 0 and 1")
    return dataclasses.replace(model, differential_diffusion=float(strength))


def differential_mask(mask: Any, current: float, start: float, end: float, strength: float) -> Any:
    """Differential Diffusion's mask for one model call (ComfyUI's formula): 1 where the soft
    ``mask`` is at least the share of the schedule still to run, ``(current - end) / (start -
    end)`` in the model's timesteps, mixed with the soft mask by ``1 - strength``. A schedule
    of no length keeps only the mask's full part."""
    span = float(start) - float(end)
    threshold = (float(current) - float(end)) / span if span > 0 else 1.0
    binary = (mask >= threshold).to(mask.dtype)
    if strength < 1.0:
        return strength * binary + (1.0 - strength) * mask
    return binary
