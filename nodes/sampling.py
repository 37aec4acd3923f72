"""Sampling: the denoising loop."""

from __future__ import annotations

from typing import Any

from nodes.values import SAMPLERS, SCHEDULERS
from studio.graph.spec import InputSpec, OutputSpec, node
from studio.graph.types import ValueType as T


@node(
    "sampler",
    title="Sampler",
    category="sampling",
    description=(
        "Denoises a latent guided by a positive and a negative prompt. With denoise below 1 "
        "it changes an existing image (img2img) instead of starting from noise."
    ),
    inputs=[
        InputSpec("model", T.MODEL, tooltip="The denoising model from Load Checkpoint."),
        InputSpec("positive", T.CONDITIONING, tooltip="What the image should show."),
        InputSpec("negative", T.CONDITIONING, tooltip="What the image should not show."),
        InputSpec("latent", T.LATENT, tooltip="Empty Latent for a new image, or VAE Encode."),
        InputSpec(
            "seed",
            T.INT,
            default=0,
            min=0,
            max=2**64 - 1,
            seed=True,
            tooltip="The noise seed: the same seed and settings give the same image.",
        ),
        InputSpec("steps", T.INT, default=20, min=1, max=1000, tooltip="Denoising steps."),
        InputSpec(
            "cfg",
            T.FLOAT,
            default=7.0,
            min=0.0,
            max=100.0,
            step=0.1,
            tooltip="Guidance scale: how strongly the prompt steers (1 = no negative prompt).",
        ),
        InputSpec(
            "sampler",
            T.CHOICE,
            choices=tuple(SAMPLERS),
            default="euler",
            tooltip="The sampling method.",
        ),
        InputSpec(
            "scheduler",
            T.CHOICE,
            choices=tuple(SCHEDULERS),
            default="normal",
            tooltip="The noise schedule; normal is the checkpoint's own.",
        ),
        InputSpec(
            "denoise",
            T.FLOAT,
            default=1.0,
            min=0.0,
            max=1.0,
            step=0.01,
            tooltip="1 starts from pure noise; lower keeps more of the input latent (img2img strength).",
        ),
    ],
    outputs=[OutputSpec("latent", T.LATENT)],
)
def sampler(
    ctx,
    model: Any,
    positive: Any,
    negative: Any,
    latent: Any,
    seed: int = 0,
    steps: int = 20,
    cfg: float = 7.0,
    sampler: str = "euler",
    scheduler: str = "normal",
    denoise: float = 1.0,
) -> dict:
    from nodes import denoise as loop

    result = loop.sample(
        ctx,
        model,
        positive,
        negative,
        latent,
        seed=seed,
        steps=steps,
        cfg=cfg,
        sampler=sampler,
        scheduler=scheduler,
        denoise=denoise,
    )
    ctx.run_info.setdefault("seeds", {})[ctx.node_id] = seed
    return {"latent": result}
