"""Latents: empty ones, and the VAE between pixels and latents."""

from __future__ import annotations

from typing import Any

from studio.errors import NodeError
from studio.graph.spec import InputSpec, OutputSpec, node
from studio.graph.types import ValueType as T

LATENT_CHANNELS = 4
DOWNSCALE = 8


@node(
    "empty_latent",
    title="Empty Latent",
    category="latent",
    description="A blank latent of a given size: the start of a new image (text to image).",
    inputs=[
        InputSpec(
            "width",
            T.INT,
            default=512,
            min=8,
            max=16384,
            step=8,
            tooltip="Pixels, a multiple of 8.",
        ),
        InputSpec(
            "height",
            T.INT,
            default=512,
            min=8,
            max=16384,
            step=8,
            tooltip="Pixels, a multiple of 8.",
        ),
        InputSpec("batch_size", T.INT, default=1, min=1, max=64, tooltip="Images made at once."),
    ],
    outputs=[OutputSpec("latent", T.LATENT)],
)
def empty_latent(ctx, width: int = 512, height: int = 512, batch_size: int = 1) -> dict:
    import torch

    bad = [f"{n} {v}" for n, v in (("width", width), ("height", height)) if v % DOWNSCALE]
    if bad:
        raise NodeError(f"{' and '.join(bad)} must be a multiple of {DOWNSCALE}")
    shape = (batch_size, LATENT_CHANNELS, height // DOWNSCALE, width // DOWNSCALE)
    # pixel_size lets the Sampler start a model whose VAE is not 8x (the embedded tiny
    # model's is 4x) at the size asked for; see docs/VALUES.md.
    return {"samples": torch.zeros(shape, dtype=torch.float32), "pixel_size": (height, width)}


def _check_vae(vae: Any) -> None:
    from nodes.values import VaeHandle

    if not isinstance(vae, VaeHandle):
        raise NodeError(f"the vae input is not a VAE (got {type(vae).__name__})")


@node(
    "vae_encode",
    title="VAE Encode",
    category="latent",
    description=(
        "Turns an image into a latent, to change it with a Sampler (img2img). Tiled mode "
        "encodes big images in pieces to save memory."
    ),
    inputs=[
        InputSpec("image", T.IMAGE),
        InputSpec("vae", T.VAE),
        InputSpec(
            "tiled",
            T.BOOLEAN,
            default=False,
            tooltip="Encode in overlapping tiles (large images, little memory).",
        ),
        InputSpec(
            "tile_size",
            T.INT,
            default=512,
            min=128,
            max=4096,
            step=64,
            tooltip="Tile size in pixels (tiled mode).",
        ),
    ],
    outputs=[OutputSpec("latent", T.LATENT)],
)
def vae_encode(ctx, image: Any, vae: Any, tiled: bool = False, tile_size: int = 512) -> dict:
    import torch

    from nodes import sdload

    _check_vae(vae)
    f = vae.downscale
    h, w = image.shape[1] // f * f, image.shape[2] // f * f
    if h == 0 or w == 0:
        raise NodeError(f"the image is smaller than {f} pixels")
    top, left = (image.shape[1] - h) // 2, (image.shape[2] - w) // 2
    pixels = image[:, top : top + h, left : left + w, :3]
    model = sdload.get_module(ctx, vae.source, vae.component)
    x = pixels.permute(0, 3, 1, 2).to(device=model.device, dtype=model.dtype) * 2.0 - 1.0

    def encode() -> Any:
        with torch.no_grad():
            if not tiled or max(x.shape[-2:]) <= tile_size:
                return model.encode(x).latent_dist
            # diffusers' own tiling (AutoencoderKL.enable_tiling), at this tile size
            if not hasattr(model, "use_tiling"):
                raise NodeError(f"this VAE ({type(model).__name__}) has no tiled mode")
            saved = (model.use_tiling, model.tile_sample_min_size, model.tile_latent_min_size)
            model.use_tiling = True
            model.tile_sample_min_size = tile_size
            model.tile_latent_min_size = max(tile_size // vae.downscale, 1)
            try:
                return model.encode(x).latent_dist
            finally:
                (model.use_tiling, model.tile_sample_min_size, model.tile_latent_min_size) = saved

    dist = sdload.with_oom_advice(encode, "encoding the image")
    # The mean is the latent; its spread lets the Sampler draw the same sample as
    # diffusers' img2img pipeline (with the Sampler's seed).
    return {
        "samples": ((dist.mean - vae.shift_factor) * vae.scaling_factor).float().cpu(),
        "posterior_std": (dist.std * vae.scaling_factor).float().cpu(),
    }


@node(
    "vae_decode",
    title="VAE Decode",
    category="latent",
    description="Turns a latent into an image. Tiled mode decodes big images in pieces to save memory.",
    inputs=[
        InputSpec("latent", T.LATENT),
        InputSpec("vae", T.VAE),
        InputSpec(
            "tiled",
            T.BOOLEAN,
            default=False,
            tooltip="Decode in overlapping tiles (large images, little memory).",
        ),
        InputSpec(
            "tile_size",
            T.INT,
            default=512,
            min=128,
            max=4096,
            step=64,
            tooltip="Tile size in pixels (tiled mode).",
        ),
    ],
    outputs=[OutputSpec("image", T.IMAGE)],
)
def vae_decode(ctx, latent: Any, vae: Any, tiled: bool = False, tile_size: int = 512) -> Any:
    import torch

    from nodes import sdload

    _check_vae(vae)
    model = sdload.get_module(ctx, vae.source, vae.component)
    z = latent["samples"].to(device=model.device, dtype=model.dtype)
    z = z / vae.scaling_factor + vae.shift_factor

    def decode() -> Any:
        with torch.no_grad():
            fits = max(z.shape[-2:]) * vae.downscale <= tile_size
            if not tiled or fits:
                return model.decode(z, return_dict=False)[0]
            saved = (model.tile_sample_min_size, model.tile_latent_min_size)
            model.tile_sample_min_size = tile_size
            model.tile_latent_min_size = max(tile_size // vae.downscale, 1)
            try:
                return model.tiled_decode(z, return_dict=False)[0]
            finally:
                model.tile_sample_min_size, model.tile_latent_min_size = saved

    x = sdload.with_oom_advice(decode, "decoding the image")
    return (x * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu()
