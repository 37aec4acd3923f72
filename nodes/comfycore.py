"""Nodes for ComfyUI core types Studio lacked: Latent Upscale to a size (LatentUpscale), Load
LoRA (Model Only) (LoraLoaderModelOnly), Apply ControlNet (One Prompt) (the old
ControlNetApply) and Conditioning Set Timestep Range (ConditioningSetTimestepRange).

Each computes what ComfyUI's node computes, written from its published code (nodes.py,
comfy/utils.py common_upscale, comfy/samplers.py); the tests check them on studio-tiny.
No torch at module level.
"""

from __future__ import annotations

from typing import Any

from studio.errors import NodeError
from studio.graph.spec import InputSpec, OutputSpec, node
from studio.graph.types import ValueType as T

#: Interpolation modes both ComfyUI and torch have (ComfyUI's bislerp is not one of them).
LATENT_METHODS = ("nearest-exact", "bilinear", "area", "bicubic")


def _size_param(name: str, other: str) -> InputSpec:
    return InputSpec(
        name,
        T.INT,
        default=512,
        min=0,
        max=16384,
        step=8,
        tooltip=f"Target {name} in pixels (0: from the {other}, keeping the aspect).",
    )


@node(
    "latent_upscale_to",
    title="Latent Upscale to Size",
    category="upscale",
    description=(
        "Scales a latent to an image size in pixels (ComfyUI's Upscale Latent): 0 for one side "
        "keeps the aspect; crop center cuts the sides that do not fit instead of stretching."
    ),
    inputs=[
        InputSpec("latent", T.LATENT),
        InputSpec("method", T.CHOICE, default="nearest-exact", choices=LATENT_METHODS),
        _size_param("width", "height"),
        _size_param("height", "width"),
        InputSpec(
            "crop",
            T.CHOICE,
            default="disabled",
            choices=("disabled", "center"),
            tooltip="center: crop to the new aspect first (no distortion); disabled: stretch.",
        ),
    ],
    outputs=[OutputSpec("latent", T.LATENT)],
)
def latent_upscale_to(ctx, latent: dict, method: str, width: int, height: int, crop: str) -> dict:
    import torch.nn.functional as F

    samples = latent["samples"]
    if width == 0 and height == 0:
        return dict(latent)
    lh, lw = samples.shape[-2:]
    # ComfyUI: a side of 0 follows the aspect; each side at least 64 pixels
    if width == 0:
        height = max(64, height)
        width = max(64, round(lw * height / lh))
    elif height == 0:
        width = max(64, width)
        height = max(64, round(lh * width / lw))
    else:
        width, height = max(64, width), max(64, height)
    w, h = width // 8, height // 8
    s = center_crop(samples, w, h) if crop == "center" else samples
    out = dict(latent)
    out["samples"] = F.interpolate(s, size=(h, w), mode=method)
    out.pop("posterior_std", None)
    mask = latent.get("noise_mask")
    if mask is not None:
        m = mask if mask.dim() == 4 else mask.reshape(-1, 1, *mask.shape[-2:])
        m = center_crop(m.float(), w, h) if crop == "center" else m.float()
        out["noise_mask"] = F.interpolate(m, size=(h, w), mode="bilinear")
    return out


def center_crop(x: Any, width: int, height: int) -> Any:
    """The middle of ``x`` with the aspect of ``width`` x ``height`` (ComfyUI's crop)."""
    old_w, old_h = x.shape[-1], x.shape[-2]
    old_aspect, new_aspect = old_w / old_h, width / height
    dx = dy = 0
    if old_aspect > new_aspect:
        dx = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        dy = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return x.narrow(-2, dy, old_h - dy * 2).narrow(-1, dx, old_w - dx * 2)


@node(
    "load_lora_model_only",
    title="Load LoRA (Model Only)",
    category="loaders",
    description=(
        "Adds a LoRA to the denoising model only (no text encoder input): for LoRAs trained "
        "on the UNet alone, or to leave the prompt's encoding as it is."
    ),
    inputs=[
        InputSpec("model", T.MODEL),
        InputSpec(
            "lora_name", T.CHOICE, file_kind="loras", tooltip="A file from the loras folder."
        ),
        InputSpec(
            "strength_model",
            T.FLOAT,
            default=1.0,
            min=-10.0,
            max=10.0,
            step=0.05,
            tooltip="How strongly the LoRA changes the denoising model (0: not at all).",
        ),
    ],
    outputs=[OutputSpec("model", T.MODEL)],
)
def load_lora_model_only(ctx, model: Any, lora_name: str, strength_model: float) -> Any:
    from nodes.lora import LoraPatch, check_family, read_lora

    path = ctx.model_files.resolve("loras", lora_name)
    patch = LoraPatch(name=lora_name, path=str(path), identity=ctx.files.identity(path))
    check_family(patch, read_lora(ctx, patch, model.family), model)
    return model.with_patch(patch, strength_model) if strength_model else model


@node(
    "apply_controlnet_one",
    title="Apply ControlNet (One Prompt)",
    category="conditioning",
    description=(
        "Guides sampling with a ControlNet through one prompt (ComfyUI's old Apply "
        "ControlNet). A negative prompt without a ControlNet of its own takes the positive's, "
        "as in ComfyUI; Apply ControlNet sets both at once."
    ),
    inputs=[
        InputSpec("conditioning", T.CONDITIONING),
        InputSpec("control_net", T.CONTROL_NET),
        InputSpec("image", T.IMAGE, tooltip="The control image, e.g. from a preprocessor."),
        InputSpec(
            "strength",
            T.FLOAT,
            default=1.0,
            min=0.0,
            max=10.0,
            step=0.01,
            tooltip="How strongly the ControlNet steers (0: the prompt as it was).",
        ),
    ],
    outputs=[OutputSpec("conditioning", T.CONDITIONING)],
)
def apply_controlnet_one(ctx, conditioning, control_net, image, strength: float) -> list:
    from nodes.controlnet import ControlEntry, add_control

    if strength == 0:
        return conditioning
    return add_control(conditioning, ControlEntry(control_net, image, float(strength), 0.0, 1.0))


@node(
    "conditioning_set_timestep_range",
    title="Conditioning Set Timestep Range",
    category="conditioning",
    description=(
        "Makes a prompt act only in part of the sampling, from start to end (fractions of the "
        "denoising, 0 = the noisiest step). Combine two to change the prompt halfway."
    ),
    inputs=[
        InputSpec("conditioning", T.CONDITIONING),
        InputSpec("start", T.FLOAT, default=0.0, min=0.0, max=1.0, step=0.001),
        InputSpec("end", T.FLOAT, default=1.0, min=0.0, max=1.0, step=0.001),
    ],
    outputs=[OutputSpec("conditioning", T.CONDITIONING)],
)
def conditioning_set_timestep_range(ctx, conditioning, start: float, end: float) -> list:
    from dataclasses import replace

    if start > end:
        raise NodeError(f"start {start} is after end {end}: the prompt would never act")
    return [
        replace(c, extra={**c.extra, "timestep_range": (float(start), float(end))})
        for c in conditioning
    ]


def in_range(c: Any, t: float, train_steps: int = 1000) -> bool:
    """Whether a prompt acts at training timestep ``t`` (ComfyUI: sigma between the sigmas
    at ``start`` and ``end``, percent p being timestep (1 - p) * 999; 0 and 1 open)."""
    rng = c.extra.get("timestep_range")
    if rng is None:
        return True
    start, end = rng
    top = train_steps - 1
    if start > 0 and t > (1 - start) * top:
        return False
    return not (end < 1 and t < (1 - end) * top)
