"""Loaders: checkpoints (MODEL, CLIP, VAE) and separate VAE files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from studio.graph.spec import InputSpec, OutputSpec, node
from studio.graph.types import ValueType as T


@node(
    "load_checkpoint",
    title="Load Checkpoint",
    category="loaders",
    description=(
        "Loads a Stable Diffusion checkpoint (SD 1.x, 2.x, SDXL): a single .safetensors file "
        "or a diffusers folder; also SD3.5 and Flux.1 diffusers folders and all-in-one files "
        "(such as flux1-dev-fp8). Gives the denoising model, the text encoder(s) and the VAE."
    ),
    inputs=[
        InputSpec(
            "ckpt_name",
            T.CHOICE,
            file_kind="checkpoints",
            tooltip="A checkpoint from the models folder's checkpoints subfolder.",
        )
    ],
    outputs=[
        OutputSpec("model", T.MODEL, tooltip="The denoising UNet, for the Sampler."),
        OutputSpec("clip", T.CLIP, tooltip="The text encoder(s), for Text Encode."),
        OutputSpec("vae", T.VAE, tooltip="The autoencoder, for VAE Encode and VAE Decode."),
    ],
)
def load_checkpoint(ctx, ckpt_name: str) -> tuple:
    from nodes import sdload

    path = ctx.model_files.resolve("checkpoints", ckpt_name)
    dit_handles = _dit_checkpoint(ctx, Path(path), ckpt_name)
    if dit_handles is not None:
        return dit_handles
    source = sdload.inspect_checkpoint(Path(path), ckpt_name, ctx.files.identity(path))
    model, clip, vae = sdload.handles_for(source)
    # Load now, so a damaged file fails here (naming it) and not in the Sampler.
    components = ["unet", "vae", *clip.encoders]
    for component in components:
        sdload.get_module(ctx, source, component)
    return model, clip, vae


def _dit_checkpoint(ctx, path: Path, name: str) -> tuple | None:
    """SD3 / Flux checkpoints (diffusers folders, SD3.5 all-in-one files), loaded now."""
    from nodes import dit, sdload

    found = dit.open_checkpoint(path, name, ctx.files.identity(path))
    if found is None:
        return None
    model, clip, vae = found
    for source, component in [(model.source, "transformer"), (vae.source, "vae")] + [
        (s, c) for _, s, c in clip.parts
    ]:
        sdload.get_module(ctx, source, component)
    return model, clip, vae


@node(
    "load_vae",
    title="Load VAE",
    category="loaders",
    description="Loads a separate VAE file (or diffusers VAE folder) to use instead of a checkpoint's own.",
    inputs=[
        InputSpec(
            "vae_name",
            T.CHOICE,
            file_kind="vae",
            tooltip="A VAE from the models folder's vae subfolder.",
        ),
        InputSpec(
            "latent_scale",
            T.CHOICE,
            choices=("auto", "sd", "sdxl", "flux", "sd3"),
            default="auto",
            tooltip=(
                "Which models' latents it serves: SD 1.x/2.x (0.18215) or SDXL (0.13025); "
                "for a 16-channel VAE Flux (0.3611, shift 0.1159) or SD3 (1.5305, shift "
                "0.0609). Auto picks SDXL when the file name contains 'xl', and Flux's "
                "factors for a 16-channel VAE (choose sd3 for SD3.5's)."
            ),
        ),
    ],
    outputs=[OutputSpec("vae", T.VAE)],
)
def load_vae(ctx, vae_name: str, latent_scale: str = "auto") -> Any:
    from nodes import sdload

    path = ctx.model_files.resolve("vae", vae_name)
    vae = sdload.inspect_vae(Path(path), vae_name, ctx.files.identity(path), latent_scale)
    sdload.get_module(ctx, vae.source, "vae")
    return vae
