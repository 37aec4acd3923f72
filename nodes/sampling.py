"""Sampling: the denoising loop."""

from __future__ import annotations

from typing import Any

from nodes.values import SAMPLERS, SCHEDULERS
from studio.graph.spec import InputSpec, OutputSpec, node
from studio.graph.types import ValueType as T

#: Params the Sampler and the Sampler (Advanced) share.
SEED = InputSpec(
    "seed",
    T.INT,
    default=0,
    min=0,
    max=2**64 - 1,
    seed=True,
    tooltip="The noise seed: the same seed and settings give the same image.",
)
CFG = InputSpec(
    "cfg",
    T.FLOAT,
    default=7.0,
    min=0.0,
    max=100.0,
    step=0.1,
    tooltip="Guidance scale: how strongly the prompt steers (1 = no negative prompt).",
)
SAMPLER = InputSpec(
    "sampler", T.CHOICE, choices=tuple(SAMPLERS), default="euler", tooltip="The sampling method."
)
SCHEDULER = InputSpec(
    "scheduler",
    T.CHOICE,
    choices=tuple(SCHEDULERS),
    default="normal",
    tooltip=(
        "The noise schedule; normal is the checkpoint's own (diffusers). comfy_* are "
        "ComfyUI's schedules, noise and samplers (all but pndm and deis): the same "
        "seed gives ComfyUI's picture. On SD3 / Flux a comfy_* schedule runs as the "
        "flow schedule of its name (comfy_simple as simple)."
    ),
)


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
        SEED,
        InputSpec("steps", T.INT, default=20, min=1, max=1000, tooltip="Denoising steps."),
        CFG,
        SAMPLER,
        SCHEDULER,
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


@node(
    "sampler_advanced",
    title="Sampler (Advanced)",
    category="sampling",
    description=(
        "The Sampler with control over which steps run: start and end at chosen steps, with "
        "or without adding noise, and optionally keep the noise that is left. Two of them "
        "split one generation, e.g. SDXL base for the first steps, then the refiner."
    ),
    inputs=[
        InputSpec("model", T.MODEL, tooltip="The denoising model from Load Checkpoint."),
        InputSpec("positive", T.CONDITIONING, tooltip="What the image should show."),
        InputSpec("negative", T.CONDITIONING, tooltip="What the image should not show."),
        InputSpec(
            "latent",
            T.LATENT,
            tooltip="Empty Latent for a new image, or the output of an earlier Sampler (Advanced).",
        ),
        InputSpec(
            "add_noise",
            T.BOOLEAN,
            default=True,
            tooltip=(
                "Add the seed's noise at the start step. Turn off when the latent already "
                "carries leftover noise from an earlier pass."
            ),
        ),
        SEED,
        InputSpec(
            "steps",
            T.INT,
            default=20,
            min=1,
            max=1000,
            tooltip="Steps of the whole schedule (both passes of a split generation).",
        ),
        CFG,
        SAMPLER,
        SCHEDULER,
        InputSpec(
            "start_at_step",
            T.INT,
            default=0,
            min=0,
            max=10000,
            tooltip="The first step to run (0 = the beginning of the schedule).",
        ),
        InputSpec(
            "end_at_step",
            T.INT,
            default=10000,
            min=0,
            max=10000,
            tooltip="Stop before this step (anything at or above steps: run to the end).",
        ),
        InputSpec(
            "return_with_leftover_noise",
            T.BOOLEAN,
            default=False,
            tooltip=(
                "When stopping before the end: return the latent still noisy, for a second "
                "pass that continues with add_noise off. Off: finish it into a clean latent."
            ),
        ),
    ],
    outputs=[OutputSpec("latent", T.LATENT)],
)
def sampler_advanced(
    ctx,
    model: Any,
    positive: Any,
    negative: Any,
    latent: Any,
    add_noise: bool = True,
    seed: int = 0,
    steps: int = 20,
    cfg: float = 7.0,
    sampler: str = "euler",
    scheduler: str = "normal",
    start_at_step: int = 0,
    end_at_step: int = 10000,
    return_with_leftover_noise: bool = False,
) -> dict:
    from nodes import denoise as loop
    from studio.errors import NodeError

    stops_early = min(end_at_step, steps) > start_at_step and end_at_step < steps
    # Diffusion transformers (flow matching) read the clean latent off any sampler's
    # prediction; diffusers' UNet schedulers give it for some samplers only.
    flow = getattr(model, "family", None) in ("sd3", "flux")
    no_clean = sampler in loop.NO_CLEAN_PREDICTION and not flow
    if stops_early and not return_with_leftover_noise and no_clean:
        raise NodeError(
            f"sampler {sampler!r} cannot stop early (end_at_step {end_at_step} of {steps} "
            "steps) without leftover noise: turn on return_with_leftover_noise, or choose "
            "another sampler (euler, heun, lms, ddim, ...)"
        )
    window = loop.StepWindow(
        start=start_at_step,
        end=end_at_step,
        add_noise=add_noise,
        leftover_noise=return_with_leftover_noise,
    )
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
        denoise=1.0,
        window=window,
    )
    ctx.run_info.setdefault("seeds", {})[ctx.node_id] = seed
    return {"latent": result}
