"""Nodes for ComfyUI core types Studio lacked: Latent Upscale to a size (LatentUpscale), Load
LoRA (Model Only) (LoraLoaderModelOnly), Apply ControlNet (One Prompt) (the old
ControlNetApply), Conditioning Set Timestep Range (ConditioningSetTimestepRange) and
Conditioning Set Area (ConditioningSetArea, and ConditioningSetAreaPercentage).

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
    return True if rng is None else in_window(rng[0], rng[1], t, train_steps)


def in_window(start: float, end: float, t: float, train_steps: int = 1000) -> bool:
    """Whether training timestep ``t`` lies in the window from ``start`` to ``end``
    (fractions of the denoising, ComfyUI's percents; 0 and 1 open)."""
    top = train_steps - 1
    if start > 0 and t > (1 - start) * top:
        return False
    return not (end < 1 and t < (1 - end) * top)


# -- Conditioning Set Area (ComfyUI's ConditioningSetArea) -------------------------------------


def _pixels(name: str, default: int, minimum: int, tooltip: str) -> InputSpec:
    return InputSpec(name, T.INT, default=default, min=minimum, max=16384, step=8, tooltip=tooltip)


@node(
    "conditioning_set_area",
    title="Conditioning Set Area",
    category="conditioning",
    description=(
        "Makes a prompt act on a rectangle of the image only (regional prompting, ComfyUI's "
        "way): it is predicted on that part of the latent, its edges blended over up to 8 "
        "latent cells. Combine it with a prompt for the whole image."
    ),
    inputs=[
        InputSpec("conditioning", T.CONDITIONING),
        _pixels("width", 64, 8, "The rectangle's width in pixels."),
        _pixels("height", 64, 8, "The rectangle's height in pixels."),
        _pixels("x", 0, 0, "Its left edge in pixels."),
        _pixels("y", 0, 0, "Its top edge in pixels."),
        InputSpec("strength", T.FLOAT, default=1.0, min=0.0, max=10.0, step=0.01),
    ],
    outputs=[OutputSpec("conditioning", T.CONDITIONING)],
)
def conditioning_set_area(ctx, conditioning, width, height, x, y, strength: float) -> list:
    from dataclasses import replace

    area = (int(height), int(width), int(y), int(x))  # ComfyUI's order, in pixels here
    return [
        replace(
            c,
            extra={
                **{k: v for k, v in c.extra.items() if k != "area_fraction"},
                "area": area,
                "strength": float(strength),
            },
        )
        for c in conditioning
    ]


@node(
    "conditioning_set_area_strength",
    title="Conditioning Set Area Strength",
    category="conditioning",
    description=(
        "A prompt's weight against the prompts it is combined with (ComfyUI's "
        "ConditioningSetAreaStrength): over its area, its mask, or the whole picture."
    ),
    inputs=[
        InputSpec("conditioning", T.CONDITIONING),
        InputSpec("strength", T.FLOAT, default=1.0, min=0.0, max=10.0, step=0.01),
    ],
    outputs=[OutputSpec("conditioning", T.CONDITIONING)],
)
def conditioning_set_area_strength(ctx, conditioning, strength: float) -> list:
    from dataclasses import replace

    return [replace(c, extra={**c.extra, "strength": float(strength)}) for c in conditioning]


def _fraction(name: str, default: float, tooltip: str) -> InputSpec:
    return InputSpec(name, T.FLOAT, default=default, min=0.0, max=1.0, step=0.01, tooltip=tooltip)


@node(
    "conditioning_set_area_percentage",
    title="Conditioning Set Area (Percentage)",
    category="conditioning",
    description=(
        "Conditioning Set Area with the rectangle as fractions of the image (0.5: half), "
        "whatever its size: each side rounded to latent cells when sampled (at least one), "
        "as ComfyUI's ConditioningSetAreaPercentage."
    ),
    inputs=[
        InputSpec("conditioning", T.CONDITIONING),
        _fraction("width", 1.0, "The rectangle's width as a fraction of the image's."),
        _fraction("height", 1.0, "The rectangle's height as a fraction of the image's."),
        _fraction("x", 0.0, "Its left edge as a fraction of the image's width."),
        _fraction("y", 0.0, "Its top edge as a fraction of the image's height."),
        InputSpec("strength", T.FLOAT, default=1.0, min=0.0, max=10.0, step=0.01),
    ],
    outputs=[OutputSpec("conditioning", T.CONDITIONING)],
)
def conditioning_set_area_percentage(ctx, conditioning, width, height, x, y, strength) -> list:
    from dataclasses import replace

    fraction = (float(height), float(width), float(y), float(x))  # ComfyUI's order
    out = []
    for c in conditioning:
        extra = {k: v for k, v in c.extra.items() if k != "area"}
        out.append(
            replace(c, extra={**extra, "area_fraction": fraction, "strength": float(strength)})
        )
    return out


def fraction_area(c: Any, size: tuple[int, ...], factor: int) -> Any:
    """A Conditioning Set Area (Percentage) prompt as an area prompt in pixels on a latent of
    ``size``: ComfyUI's resolve_areas_and_cond_masks, each side max(1, round(fraction x
    cells)), each corner coordinate round(fraction x cells)."""
    from dataclasses import replace

    fraction = c.extra.get("area_fraction")
    if fraction is None:
        return c
    h, w, y, x = fraction
    lh, lw = size[-2], size[-1]
    cells = (max(1, round(h * lh)), max(1, round(w * lw)), round(y * lh), round(x * lw))
    extra = {k: v for k, v in c.extra.items() if k != "area_fraction"}
    return replace(c, extra={**extra, "area": tuple(v * factor for v in cells)})


def area_cells(area: tuple[int, int, int, int], size: tuple[int, ...], factor: int):
    """(top, left, height, width) in latent cells of an area in pixels (ComfyUI: // 8, the
    model's VAE factor here), clipped to the latent; a NodeError when nothing is left."""
    h, w, y, x = (v // factor for v in area)
    lh, lw = size[-2], size[-1]
    h, w = min(h, lh - y), min(w, lw - x)
    if h <= 0 or w <= 0:
        raise NodeError(
            f"a Conditioning Set Area rectangle ({area[1]}x{area[0]} at {area[3]},{area[2]}) "
            f"lies outside the {lw * factor}x{lh * factor} image"
        )
    return y, x, h, w


def area_weight(cells: tuple[int, int, int, int], size: tuple[int, ...], strength, batch: int):
    """ComfyUI's weight of an area prompt: its strength, faded at every edge that is not the
    image's over ``min(8, side // 4)`` cells of that side (get_area_and_mult: a narrow area
    fades over fewer cells, so its rows never fade twice)."""
    import torch

    y, x, h, w = cells
    lh, lw = size[-2], size[-1]
    mult = torch.full((batch, 1, h, w), float(strength))
    for axis, start, length, full in ((2, y, h, lh), (3, x, w, lw)):
        rr = min(8, length // 4)
        for t in range(rr):
            f = (1.0 / rr) * (t + 1)
            if start != 0:
                mult.narrow(axis, t, 1).mul_(f)
            if start + length < full:
                mult.narrow(axis, length - 1 - t, 1).mul_(f)
    return mult


def latent_mask(mask: Any, size: tuple[int, ...]) -> Any:
    """A prompt's mask ``[b, h, w]`` at the latent's size: bilinear, corners not aligned (as
    ComfyUI resizes a conditioning mask before sampling)."""
    import torch

    m = mask.float()
    m = m[None] if m.ndim == 2 else m
    if tuple(m.shape[-2:]) != tuple(size):
        m = torch.nn.functional.interpolate(
            m[:, None], size=tuple(size), mode="bilinear", align_corners=False
        )[:, 0]
    return m


def mask_bounds_cells(mask: Any, size: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Conditioning Set Mask's 'mask bounds' as (height, width, top, left) in latent cells.

    As ComfyUI's resolve_areas_and_cond_masks: the mask at the latent's size, its largest
    magnitude over the batch, the bounding box of the cells that are not 0, grown to at
    least 8 cells each way (down and right; the latent's edge clips it later). An empty mask
    gives 8x8 cells at the top left, where its weight 0 makes the prompt count nowhere.
    """
    import torch

    m = latent_mask(mask, size).abs().amax(dim=0)
    ys, xs = torch.nonzero(m, as_tuple=True)
    if len(ys) == 0:
        return 8, 8, 0, 0
    top, left = int(ys.min()), int(xs.min())
    h, w = int(ys.max()) - top + 1, int(xs.max()) - left + 1
    return max(8, h), max(8, w), top, left


def with_mask_bounds(conds: list, size: tuple[int, ...], factor: int) -> list:
    """Each prompt whose Conditioning Set Mask asked for 'mask bounds' becomes an area prompt
    on that box (in pixels, as Conditioning Set Area keeps it), still weighted by its mask;
    a Conditioning Set Area (Percentage) prompt one on its fractions of the latent. Done
    before the negative side is matched to the areas, as ComfyUI does."""
    from dataclasses import replace

    out = []
    for c in conds:
        c = fraction_area(c, size, factor)  # ComfyUI resolves these first
        if c.extra.get("mask_bounds") and c.extra.get("mask") is not None:
            cells = mask_bounds_cells(c.extra["mask"][0], size)
            c = replace(c, extra={**c.extra, "area": tuple(v * factor for v in cells)})
        out.append(c)
    return out


def with_same_areas(pos: list, neg: list) -> tuple[list, list]:
    """ComfyUI's create_cond_with_same_area_if_none, both ways: for each area prompt of one
    side, the other side's prompt that covers it best is also predicted on that area."""
    neg = _same_areas(pos, neg)
    return _same_areas(neg, pos), neg


def _same_areas(source: list, target: list) -> list:
    from dataclasses import replace

    out = list(target)
    for c in source:
        area = c.extra.get("area")
        if area is None:
            continue
        smallest = None
        for n in out:
            a = n.extra.get("area")
            if a is not None:
                inside = (
                    area[2] >= a[2]
                    and area[3] >= a[3]
                    and a[0] + a[2] >= area[0] + area[2]
                    and a[1] + a[3] >= area[1] + area[3]
                )
                if inside and (
                    smallest is None
                    or "area" not in smallest.extra
                    or smallest.extra["area"][0] * smallest.extra["area"][1] > a[0] * a[1]
                ):
                    smallest = n
            elif smallest is None:
                smallest = n
        if smallest is None or smallest.extra.get("area") == area:
            continue
        # ComfyUI copies the area prompt (its area, strength, mask, timestep range and
        # ControlNets) and gives it the other side's model conditioning (text, pooled text
        # and size, guidance)
        extra = {k: v for k, v in c.extra.items() if k != "guidance"}
        if "guidance" in smallest.extra:
            extra["guidance"] = smallest.extra["guidance"]
        out.append(replace(smallest, extra=extra))
    return out


# -- Latent Composite, Invert Image, Crop Image (ComfyUI's LatentComposite, ImageInvert,
# ImageCrop) -------------------------------------------------------------------------------


def _ramp(n: int, feather: int, start: bool, end: bool) -> Any:
    """Weights along one side of a pasted latent: rising 1/feather, 2/feather, ... over the
    first (and last) ``feather`` cells where that edge lies inside the target, else 1."""
    import torch

    w = torch.ones(n)
    i = torch.arange(n, dtype=torch.float32)
    fade = torch.where(i < feather, (i + 1) / feather, torch.ones(n))
    if start:
        w = w * fade
    if end:
        w = w * fade.flip(0)
    return w


@node(
    "latent_composite",
    title="Latent Composite",
    category="latent",
    description=(
        "Pastes one latent into another at x, y (pixels, in steps of 8), as ComfyUI's "
        "LatentComposite: feather fades the pasted latent's inner edges in over that many "
        "pixels; what reaches past the destination is cut off."
    ),
    inputs=[
        InputSpec("samples_to", T.LATENT, tooltip="The latent pasted into."),
        InputSpec("samples_from", T.LATENT, tooltip="The latent pasted."),
        _pixels("x", 0, 0, "Left edge of the paste in pixels (rounded down to 8)."),
        _pixels("y", 0, 0, "Top edge of the paste in pixels (rounded down to 8)."),
        _pixels("feather", 0, 0, "Pixels over which the pasted edges fade in (0: hard)."),
    ],
    outputs=[OutputSpec("latent", T.LATENT)],
)
def latent_composite(ctx, samples_to: dict, samples_from: dict, x: int, y: int, feather: int):
    to = samples_to["samples"]
    src = samples_from["samples"]
    x, y, feather = int(x) // 8, int(y) // 8, int(feather) // 8
    out = dict(samples_to)
    out.pop("posterior_std", None)
    s = to.clone()
    th, tw = to.shape[-2:]
    if y >= th or x >= tw:
        out["samples"] = s
        return out
    if src.shape[1] != to.shape[1] or src.shape[0] not in (1, to.shape[0]):
        raise NodeError(
            f"the latents differ in batch or channels: {tuple(src.shape)} into {tuple(to.shape)}"
        )
    src = src[..., : th - y, : tw - x].to(s.dtype)
    h, w = src.shape[-2:]
    region = s[..., y : y + h, x : x + w]
    if feather == 0:
        region[...] = src
    else:
        rows = _ramp(h, feather, y != 0, y + h < th).reshape(-1, 1)
        cols = _ramp(w, feather, x != 0, x + w < tw).reshape(1, -1)
        weight = (rows * cols).to(s.dtype)
        region[...] = src * weight + region * (1 - weight)
    out["samples"] = s
    return out


@node(
    "invert_image",
    title="Invert Image",
    category="image",
    description="Turns an image into its negative (1 - each value), as ComfyUI's ImageInvert.",
    inputs=[InputSpec("image", T.IMAGE)],
    outputs=[OutputSpec("image", T.IMAGE)],
)
def invert_image(ctx, image: Any) -> Any:
    return 1.0 - image


@node(
    "crop_image",
    title="Crop Image",
    category="image",
    description=(
        "Cuts a width x height rectangle out of an image from x, y, as ComfyUI's ImageCrop: "
        "a rectangle reaching past the image's edge is cut short there."
    ),
    inputs=[
        InputSpec("image", T.IMAGE),
        InputSpec("width", T.INT, default=512, min=1, max=16384, tooltip="Width in pixels."),
        InputSpec("height", T.INT, default=512, min=1, max=16384, tooltip="Height in pixels."),
        InputSpec("x", T.INT, default=0, min=0, max=16384, tooltip="Left edge in pixels."),
        InputSpec("y", T.INT, default=0, min=0, max=16384, tooltip="Top edge in pixels."),
    ],
    outputs=[OutputSpec("image", T.IMAGE)],
)
def crop_image(ctx, image: Any, width: int, height: int, x: int, y: int) -> Any:
    # ComfyUI: a start past the edge keeps the last row or column
    x = min(int(x), image.shape[2] - 1)
    y = min(int(y), image.shape[1] - 1)
    return image[:, y : y + int(height), x : x + int(width), :]


# -- latent batches ---------------------------------------------------------------------------


def _rows(value: Any, start: int, length: int, batch: int) -> Any:
    """Rows ``start .. start + length`` of a per-sample tensor of a ``batch``-sized latent
    (a mask of fewer rows repeated to the batch first, as ComfyUI does); one row for all of
    them stays as it is."""
    import math

    if value is None or value.shape[0] == 1:
        return value
    if value.shape[0] < batch:
        reps = (math.ceil(batch / value.shape[0]), *([1] * (value.ndim - 1)))
        value = value.repeat(reps)[:batch]
    return value[start : start + length].clone()


def _pick_inputs(name: str, kind: T, most: int) -> list[InputSpec]:
    """The inputs of a node that picks ``name``s out of a batch (ComfyUI's limits)."""
    return [
        InputSpec(name, kind),
        InputSpec(
            "batch_index",
            T.INT,
            default=0,
            min=0,
            max=most - 1,
            tooltip=f"The first {name} to take (0: the first of the batch).",
        ),
        InputSpec("length", T.INT, default=1, min=1, max=most, tooltip="How many to take."),
    ]


def _clamped(batch: int, batch_index: int, length: int) -> tuple[int, int]:
    """The first row and the count a pick takes, both clamped to the batch as ComfyUI's."""
    start = min(batch - 1, int(batch_index))
    return start, min(batch - start, int(length))


@node(
    "latent_from_batch",
    title="Latent From Batch",
    category="latent",
    description=(
        "Picks latents out of a batch (ComfyUI's Latent From Batch): from batch index, this "
        "many. A Sampler gives them the noise they had in the batch, so picking image 3 of a "
        "batch of 4 and sampling it again draws image 3."
    ),
    inputs=_pick_inputs("latent", T.LATENT, 64),
    outputs=[OutputSpec("latent", T.LATENT)],
)
def latent_from_batch(ctx, latent: dict, batch_index: int, length: int) -> dict:
    samples = latent["samples"]
    batch = samples.shape[0]
    start, length = _clamped(batch, batch_index, length)
    out = dict(latent)
    out["samples"] = samples[start : start + length].clone()
    for key in ("noise_mask", "posterior_std"):
        if latent.get(key) is not None:
            out[key] = _rows(latent[key], start, length, batch)
    known = latent.get("batch_index")
    if known is not None and len(known) == batch:
        out["batch_index"] = list(known[start : start + length])
    else:
        out["batch_index"] = list(range(start, start + length))
    return out


@node(
    "repeat_latent_batch",
    title="Repeat Latent Batch",
    category="latent",
    description=(
        "Repeats a latent batch this many times (ComfyUI's Repeat Latent Batch): an image "
        "encoded once and sampled in several variations, each with its own noise."
    ),
    inputs=[
        InputSpec("latent", T.LATENT),
        InputSpec("amount", T.INT, default=1, min=1, max=64, tooltip="Copies of the batch."),
    ],
    outputs=[OutputSpec("latent", T.LATENT)],
)
def repeat_latent_batch(ctx, latent: dict, amount: int) -> dict:
    samples = latent["samples"]
    amount = int(amount)
    out = dict(latent)
    out["samples"] = samples.repeat((amount, *([1] * (samples.ndim - 1))))
    for key in ("noise_mask", "posterior_std"):
        value = latent.get(key)
        if value is not None and value.shape[0] > 1:
            whole = _rows(value, 0, samples.shape[0], samples.shape[0])
            out[key] = whole.repeat((amount, *([1] * (whole.ndim - 1))))
    known = latent.get("batch_index")
    if known:
        # each copy's indices follow the last one's (ComfyUI's offset), so each draws anew
        offset = max(known) - min(known) + 1
        out["batch_index"] = list(known) + [x + i * offset for i in range(1, amount) for x in known]
    return out


@node(
    "image_from_batch",
    title="Image From Batch",
    category="image",
    description=(
        "Picks images out of a batch (ComfyUI's ImageFromBatch): from batch index, this many; "
        "for example the one image of four to upscale."
    ),
    inputs=_pick_inputs("image", T.IMAGE, 4096),
    outputs=[OutputSpec("image", T.IMAGE)],
)
def image_from_batch(ctx, image: Any, batch_index: int, length: int) -> Any:
    start, length = _clamped(image.shape[0], batch_index, length)
    return image[start : start + length].clone()


@node(
    "repeat_image_batch",
    title="Repeat Image Batch",
    category="image",
    description="Repeats an image batch this many times (ComfyUI's RepeatImageBatch).",
    inputs=[
        InputSpec("image", T.IMAGE),
        InputSpec("amount", T.INT, default=1, min=1, max=4096, tooltip="Copies of the batch."),
    ],
    outputs=[OutputSpec("image", T.IMAGE)],
)
def repeat_image_batch(ctx, image: Any, amount: int) -> Any:
    return image.repeat((int(amount), 1, 1, 1))


@node(
    "image_batch",
    title="Image Batch",
    category="image",
    description=(
        "Joins two images into one batch (ComfyUI's Image Batch): the second is scaled to "
        "the first's size, its middle cut to the first's aspect."
    ),
    inputs=[InputSpec("image1", T.IMAGE), InputSpec("image2", T.IMAGE)],
    outputs=[OutputSpec("image", T.IMAGE)],
)
def image_batch(ctx, image1: Any, image2: Any) -> Any:
    import torch
    import torch.nn.functional as F

    if image1.shape[1:] != image2.shape[1:]:
        if image1.shape[-1] != image2.shape[-1]:
            raise NodeError(
                f"image2 has {image2.shape[-1]} channels, image1 {image1.shape[-1]}: "
                "they cannot share a batch"
            )
        h, w = image1.shape[1], image1.shape[2]
        x = center_crop(image2.movedim(-1, 1), w, h)
        image2 = F.interpolate(x, size=(h, w), mode="bilinear").movedim(1, -1)
    return torch.cat((image1, image2.to(image1.dtype)), dim=0)


@node(
    "empty_image",
    title="Empty Image",
    category="image",
    description="An image of one colour (ComfyUI's EmptyImage): a canvas to composite on.",
    inputs=[
        InputSpec("width", T.INT, default=512, min=1, max=16384),
        InputSpec("height", T.INT, default=512, min=1, max=16384),
        InputSpec("batch_size", T.INT, default=1, min=1, max=64),
        InputSpec(
            "color",
            T.INT,
            default=0,
            min=0,
            max=0xFFFFFF,
            tooltip="The colour as one number, 0xRRGGBB (0: black, 16777215: white).",
        ),
    ],
    outputs=[OutputSpec("image", T.IMAGE)],
)
def empty_image(ctx, width: int, height: int, batch_size: int, color: int) -> Any:
    import torch

    rgb = [((int(color) >> shift) & 0xFF) / 0xFF for shift in (16, 8, 0)]
    return torch.tensor(rgb, dtype=torch.float32).expand(batch_size, height, width, 3).clone()


# -- model sampling -----------------------------------------------------------------------------

#: ComfyUI's ModelSamplingDiscrete choices Studio runs -> the prediction type they mean.
DISCRETE_SAMPLING = {"eps": "epsilon", "v_prediction": "v_prediction"}


@node(
    "model_sampling_discrete",
    title="Model Sampling Discrete",
    category="sampling",
    description=(
        "Sets what a Stable Diffusion model (1.x, 2.x, SDXL) predicts, for files that do not "
        "say it (ComfyUI's ModelSamplingDiscrete): eps or v_prediction, and zsnr, the zero "
        "terminal SNR schedule v-prediction models trained with it need."
    ),
    inputs=[
        InputSpec("model", T.MODEL),
        InputSpec(
            "sampling",
            T.CHOICE,
            default="eps",
            choices=tuple(DISCRETE_SAMPLING),
            tooltip="eps: the noise (most models); v_prediction: SD 2.x 768-v, v-pred SDXL.",
        ),
        InputSpec(
            "zsnr",
            T.BOOLEAN,
            default=False,
            tooltip="Zero terminal SNR: the last step starts from pure noise (v-pred models "
            "trained so).",
        ),
    ],
    outputs=[OutputSpec("model", T.MODEL)],
)
def model_sampling_discrete(ctx, model: Any, sampling: str = "eps", zsnr: bool = False) -> Any:
    import dataclasses

    from nodes.values import ModelHandle

    if not isinstance(model, ModelHandle):
        raise NodeError(f"the model input is not a model (got {type(model).__name__})")
    if model.family in ("sd3", "flux"):
        raise NodeError(
            f"Model Sampling Discrete is for Stable Diffusion 1.x, 2.x and SDXL; this is a "
            f"{model.family} model: use Model Sampling {'SD3' if model.family == 'sd3' else 'Flux'}"
        )
    if sampling not in DISCRETE_SAMPLING:
        raise NodeError(
            f"sampling {sampling!r} is not one Studio runs; choose {', '.join(DISCRETE_SAMPLING)}"
        )
    prediction = DISCRETE_SAMPLING[sampling]
    config = {
        **model.scheduler_config,
        "prediction_type": prediction,
        "rescale_betas_zero_snr": bool(zsnr),
    }
    return dataclasses.replace(model, scheduler_config=config, prediction_type=prediction)


def _patched_unet(model: Any, title: str, hint: str = "", **changes: Any) -> Any:
    """``model`` with a UNet model-patch node's ``changes``; refused (naming ``title``) on
    anything but a model, and on SD3 / Flux (``hint``: what to use there)."""
    import dataclasses

    from nodes.values import ModelHandle

    if not isinstance(model, ModelHandle):
        raise NodeError(f"the model input is not a model (got {type(model).__name__})")
    if model.family in ("sd3", "flux"):
        raise NodeError(
            f"{title} is for Stable Diffusion 1.x, 2.x and SDXL; this is a {model.family} "
            f"model{hint}"
        )
    return dataclasses.replace(model, **changes)


@node(
    "rescale_cfg",
    title="Rescale CFG",
    category="sampling",
    description=(
        "Keeps high cfg from burning colours (ComfyUI's RescaleCFG, for v-prediction models "
        "above all): the guided prediction is scaled back to the spread of the prompt's own, "
        "by this much (0.7 is the paper's)."
    ),
    inputs=[
        InputSpec("model", T.MODEL),
        InputSpec(
            "multiplier",
            T.FLOAT,
            default=0.7,
            min=0.0,
            max=1.0,
            step=0.01,
            tooltip="0: plain cfg; 1: fully rescaled.",
        ),
    ],
    outputs=[OutputSpec("model", T.MODEL)],
)
def rescale_cfg(ctx, model: Any, multiplier: float = 0.7) -> Any:
    return _patched_unet(model, "Rescale CFG", rescale_cfg=float(multiplier))


@node(
    "cfg_zero_star",
    title="CFG-Zero*",
    category="sampling",
    description=(
        "Guidance that corrects its negative side (ComfyUI's CFGZeroStar; Fan et al. 2025): "
        "the negative prediction is scaled by how much of it the positive one holds, so "
        "early steps go less astray. Any model: SD, SDXL, SD3, Flux (with cfg above 1)."
    ),
    inputs=[InputSpec("model", T.MODEL)],
    outputs=[OutputSpec("model", T.MODEL)],
)
def cfg_zero_star(ctx, model: Any) -> Any:
    import dataclasses

    from nodes.values import ModelHandle

    if not isinstance(model, ModelHandle):
        raise NodeError(f"the model input is not a model (got {type(model).__name__})")
    return dataclasses.replace(model, cfg_zero_star=True)


def _fitted(latent: Any, like: Any, mode: str) -> Any:
    """``latent`` scaled to ``like``'s size, its middle cut to that aspect (ComfyUI's
    ``common_upscale`` with crop center), when the sizes differ."""
    import torch.nn.functional as F

    if latent.shape[-2:] == like.shape[-2:]:
        return latent
    h, w = like.shape[-2:]
    return F.interpolate(center_crop(latent, w, h), size=(h, w), mode=mode)


@node(
    "latent_batch",
    title="Latent Batch",
    category="latent",
    description=(
        "Joins two latents into one batch (ComfyUI's LatentBatch): the second is scaled to "
        "the first's size. As in ComfyUI, each keeps its indices within its own batch, so "
        "the second batch's latents get the first batch's noise of the same index."
    ),
    inputs=[InputSpec("latent1", T.LATENT), InputSpec("latent2", T.LATENT)],
    outputs=[OutputSpec("latent", T.LATENT)],
)
def latent_batch(ctx, latent1: dict, latent2: dict) -> dict:
    import torch

    s1, s2 = latent1["samples"], latent2["samples"]
    if s1.shape[1:-2] != s2.shape[1:-2]:
        raise NodeError(
            f"latent2 has {s2.shape[1]} channels, latent1 {s1.shape[1]}: they come from "
            "different model families and cannot share a batch"
        )
    out = {k: v for k, v in latent1.items() if k not in ("noise_mask", "posterior_std")}
    out["samples"] = torch.cat((s1, _fitted(s2, s1, "bilinear").to(s1.dtype)), dim=0)
    out["batch_index"] = list(latent1.get("batch_index") or range(s1.shape[0])) + list(
        latent2.get("batch_index") or range(s2.shape[0])
    )
    return out


@node(
    "latent_blend",
    title="Latent Blend",
    category="latent",
    description=(
        "Mixes two latents (ComfyUI's LatentBlend): blend factor of the first, the rest of "
        "the second (scaled to the first's size)."
    ),
    inputs=[
        InputSpec("latent1", T.LATENT),
        InputSpec("latent2", T.LATENT),
        InputSpec(
            "blend_factor",
            T.FLOAT,
            default=0.5,
            min=0.0,
            max=1.0,
            step=0.01,
            tooltip="1: the first latent; 0: the second.",
        ),
    ],
    outputs=[OutputSpec("latent", T.LATENT)],
)
def latent_blend(ctx, latent1: dict, latent2: dict, blend_factor: float) -> dict:
    s1, s2 = latent1["samples"], latent2["samples"]
    if s1.shape[1] != s2.shape[1]:
        raise NodeError(
            f"latent2 has {s2.shape[1]} channels, latent1 {s1.shape[1]}: they cannot be blended"
        )
    if s1.shape[0] != s2.shape[0] and 1 not in (s1.shape[0], s2.shape[0]):
        raise NodeError(
            f"latent1 holds {s1.shape[0]} latents and latent2 {s2.shape[0]}: blend batches "
            "of the same size, or one latent into a batch"
        )
    f = float(blend_factor)
    out = dict(latent1)
    out["samples"] = s1 * f + _fitted(s2, s1, "bicubic").to(s1.dtype) * (1 - f)
    out.pop("posterior_std", None)
    return out


@node(
    "perp_neg",
    title="Perp-Neg",
    category="sampling",
    description=(
        "Negative prompts that remove only what they name (ComfyUI's PerpNeg; Armandpour et "
        "al. 2023): guidance starts from the empty prompt's prediction, and of the negative "
        "direction only the part perpendicular to the positive one is taken away. One more "
        "model call a step."
    ),
    inputs=[
        InputSpec("model", T.MODEL),
        InputSpec(
            "empty_conditioning",
            T.CONDITIONING,
            tooltip="The empty prompt (a Text Encode of nothing) with the same CLIP.",
        ),
        InputSpec(
            "neg_scale",
            T.FLOAT,
            default=1.0,
            min=0.0,
            max=100.0,
            step=0.01,
            tooltip="How much of the negative's perpendicular part to take away (0: none).",
        ),
    ],
    outputs=[OutputSpec("model", T.MODEL)],
)
def perp_neg(ctx, model: Any, empty_conditioning: Any, neg_scale: float = 1.0) -> Any:
    import dataclasses

    from nodes.values import ModelHandle

    if not isinstance(model, ModelHandle):
        raise NodeError(f"the model input is not a model (got {type(model).__name__})")
    if not isinstance(empty_conditioning, list) or len(empty_conditioning) != 1:
        raise NodeError(
            "empty_conditioning must be one prompt (a Text Encode of nothing), not a combination"
        )
    return dataclasses.replace(model, perp_neg=(empty_conditioning, float(neg_scale)))


@node(
    "perturbed_attention_guidance",
    title="Perturbed-Attention Guidance",
    category="sampling",
    description=(
        "Steers away from the prompt's prediction made with the UNet's middle self-attention "
        "turned off (PAG, Ahn et al. 2024; ComfyUI's PerturbedAttentionGuidance): sharper "
        "structure, also at cfg 1. One more model call a step. SD 1.x, 2.x and SDXL."
    ),
    inputs=[
        InputSpec("model", T.MODEL),
        InputSpec(
            "scale",
            T.FLOAT,
            default=3.0,
            min=0.0,
            max=100.0,
            step=0.01,
            tooltip="How far to steer (0: off; 3 is common).",
        ),
    ],
    outputs=[OutputSpec("model", T.MODEL)],
)
def perturbed_attention_guidance(ctx, model: Any, scale: float = 3.0) -> Any:
    hint = " (it has no UNet middle block): use Skip Layer Guidance"
    return _patched_unet(model, "Perturbed-Attention Guidance", hint, pag=float(scale))


def _freeu_input(name: str, default: float, tooltip: str) -> InputSpec:
    return InputSpec(name, T.FLOAT, default=default, min=0.0, max=10.0, step=0.01, tooltip=tooltip)


@node(
    "freeu",
    title="FreeU",
    category="sampling",
    description=(
        "Re-weights the UNet's decoder features (FreeU, Si et al. 2023; ComfyUI's FreeU and "
        "FreeU_V2): the backbone's amplified, the skip connections' low frequencies damped, "
        "at the two deepest output stages. No extra model call. SD 1.x, 2.x and SDXL."
    ),
    inputs=[
        InputSpec("model", T.MODEL),
        _freeu_input("b1", 1.3, "The deepest stage's backbone factor (v1: 1.1 is common)."),
        _freeu_input("b2", 1.4, "The next stage's backbone factor (v1: 1.2)."),
        _freeu_input("s1", 0.9, "The deepest stage's skip low-frequency factor."),
        _freeu_input("s2", 0.2, "The next stage's skip low-frequency factor."),
        InputSpec(
            "version",
            T.CHOICE,
            default="v2",
            choices=("v2", "v1"),
            tooltip="v2 scales the backbone by its own mean (ComfyUI's FreeU_V2); v1 plainly.",
        ),
    ],
    outputs=[OutputSpec("model", T.MODEL)],
)
def freeu(ctx, model: Any, b1: float, b2: float, s1: float, s2: float, version: str = "v2") -> Any:
    values = (float(b1), float(b2), float(s1), float(s2), version)
    return _patched_unet(model, "FreeU", freeu=values)
