"""Small image, mask and latent operations ComfyUI workflows use, with ComfyUI's arithmetic:
Mask To Image, Image Color To Mask, Crop Mask, Mask Composite, Image Blend, Image Flip,
Image Rotate, Latent Flip, Latent Rotate, Latent Add / Subtract / Multiply / Interpolate.

IMAGE is [B, H, W, C] in 0..1, MASK [B, H, W] in 0..1, LATENT a dict with ``samples``
[B, C, h, w] (docs/VALUES.md). torch is imported inside the functions.
"""

from __future__ import annotations

from typing import Any

from studio.errors import NodeError
from studio.graph.spec import InputSpec, OutputSpec, node
from studio.graph.types import ValueType as T

IMAGE_OUT = OutputSpec("image", T.IMAGE)
MASK_OUT = OutputSpec("mask", T.MASK)
LATENT_OUT = OutputSpec("latent", T.LATENT)

FLIPS = ("x-axis: vertically", "y-axis: horizontally")
ROTATIONS = ("none", "90 degrees", "180 degrees", "270 degrees")


def _mask3(mask: Any) -> Any:
    """A mask as [B, H, W] (a single [H, W] one as a batch of one)."""
    return mask.reshape(-1, mask.shape[-2], mask.shape[-1])


# -- masks --------------------------------------------------------------------------------------


@node(
    "mask_to_image",
    title="Mask To Image",
    category="mask",
    description="The mask as a grey image: white where it is 1 (ComfyUI's MaskToImage).",
    inputs=[InputSpec("mask", T.MASK)],
    outputs=[IMAGE_OUT],
)
def mask_to_image(ctx, mask: Any) -> Any:
    m = _mask3(mask)
    return m.unsqueeze(-1).expand(-1, -1, -1, 3).clone()


@node(
    "image_color_to_mask",
    title="Image Color To Mask",
    category="mask",
    description=(
        "A mask of the pixels of one exact colour (ComfyUI's ImageColorToMask): 1 where the "
        "8-bit RGB colour is ``color`` (0xRRGGBB as a number), else 0."
    ),
    inputs=[
        InputSpec("image", T.IMAGE),
        InputSpec("color", T.INT, default=0, min=0, max=0xFFFFFF,
                  tooltip="The colour as 0xRRGGBB: 16777215 is white, 16711680 red."),
    ],
    outputs=[MASK_OUT],
)  # fmt: skip
def image_color_to_mask(ctx, image: Any, color: int) -> Any:
    import torch

    rgb = (image[..., :3].clamp(0.0, 1.0) * 255.0).round().to(torch.int64)
    packed = (rgb[..., 0] << 16) + (rgb[..., 1] << 8) + rgb[..., 2]
    return (packed == int(color)).float()


@node(
    "crop_mask",
    title="Crop Mask",
    category="mask",
    description="A rectangle of the mask (ComfyUI's CropMask); past the edge it is cut short.",
    inputs=[
        InputSpec("mask", T.MASK),
        InputSpec("x", T.INT, default=0, min=0, max=16384, tooltip="The left edge, in pixels."),
        InputSpec("y", T.INT, default=0, min=0, max=16384, tooltip="The top edge, in pixels."),
        InputSpec("width", T.INT, default=512, min=1, max=16384),
        InputSpec("height", T.INT, default=512, min=1, max=16384),
    ],
    outputs=[MASK_OUT],
)
def crop_mask(ctx, mask: Any, x: int, y: int, width: int, height: int) -> Any:
    m = _mask3(mask)
    out = m[:, y : y + height, x : x + width]
    if out.shape[-1] == 0 or out.shape[-2] == 0:
        raise NodeError(
            f"the crop at {x},{y} lies outside the {m.shape[-1]}x{m.shape[-2]} mask: "
            "choose x and y inside it"
        )
    return out.clone()


MASK_OPERATIONS = ("multiply", "add", "subtract", "and", "or", "xor")


@node(
    "mask_composite",
    title="Mask Composite",
    category="mask",
    description=(
        "Combines a source mask into a destination mask at x, y (ComfyUI's MaskComposite): "
        "multiply, add, subtract, or the logical and / or / xor of the rounded masks; the "
        "result is clamped to 0..1."
    ),
    inputs=[
        InputSpec("destination", T.MASK),
        InputSpec("source", T.MASK),
        InputSpec("x", T.INT, default=0, min=0, max=16384),
        InputSpec("y", T.INT, default=0, min=0, max=16384),
        InputSpec("operation", T.CHOICE, default="multiply", choices=MASK_OPERATIONS),
    ],
    outputs=[MASK_OUT],
)
def mask_composite(ctx, destination: Any, source: Any, x: int, y: int, operation: str) -> Any:
    import torch

    out = _mask3(destination).clone()
    src = _mask3(source).to(out.device)
    if src.shape[0] not in (1, out.shape[0]):
        raise NodeError(
            f"the source holds {src.shape[0]} masks and the destination {out.shape[0]}: use "
            "one source mask or as many as the destination's"
        )
    right, bottom = min(x + src.shape[-1], out.shape[-1]), min(y + src.shape[-2], out.shape[-2])
    if right <= x or bottom <= y:
        return out  # the source lies outside the destination
    part = src[:, : bottom - y, : right - x]
    dest = out[:, y:bottom, x:right]
    if operation == "multiply":
        new = dest * part
    elif operation == "add":
        new = dest + part
    elif operation == "subtract":
        new = dest - part
    elif operation in ("and", "or", "xor"):
        op = {"and": torch.bitwise_and, "or": torch.bitwise_or, "xor": torch.bitwise_xor}
        new = op[operation](dest.round().bool(), part.round().bool()).float()
    else:
        raise NodeError(f"operation {operation!r} is not one of {', '.join(MASK_OPERATIONS)}")
    out[:, y:bottom, x:right] = new
    return out.clamp(0.0, 1.0)


# -- images -------------------------------------------------------------------------------------

BLEND_MODES = ("normal", "multiply", "screen", "overlay", "soft_light", "difference")


def _blend(a: Any, b: Any, mode: str) -> Any:
    """ComfyUI's ImageBlend modes (a: the first image, b: the second)."""
    import torch

    if mode == "normal":
        return b
    if mode == "multiply":
        return a * b
    if mode == "screen":
        return 1 - (1 - a) * (1 - b)
    if mode == "overlay":
        return torch.where(a <= 0.5, 2 * a * b, 1 - 2 * (1 - a) * (1 - b))
    if mode == "soft_light":
        g = torch.where(a <= 0.25, ((16 * a - 12) * a + 4) * a, torch.sqrt(a))
        return torch.where(b <= 0.5, a - (1 - 2 * b) * a * (1 - a), a + (2 * b - 1) * (g - a))
    if mode == "difference":
        return a - b
    raise NodeError(f"blend_mode {mode!r} is not one of {', '.join(BLEND_MODES)}")


@node(
    "image_blend",
    title="Image Blend",
    category="image",
    description=(
        "Blends a second image over the first (ComfyUI's ImageBlend): normal, multiply, "
        "screen, overlay, soft light or difference, by the blend factor; a second image of "
        "another size is scaled (bicubic) and cut at its middle to the first's."
    ),
    inputs=[
        InputSpec("image1", T.IMAGE),
        InputSpec("image2", T.IMAGE),
        InputSpec("blend_factor", T.FLOAT, default=0.5, min=0.0, max=1.0, step=0.01,
                  tooltip="0: the first image; 1: the blend in full."),
        InputSpec("blend_mode", T.CHOICE, default="normal", choices=BLEND_MODES),
    ],
    outputs=[IMAGE_OUT],
)  # fmt: skip
def image_blend(ctx, image1: Any, image2: Any, blend_factor: float, blend_mode: str) -> Any:
    from nodes.comfycore import _fitted

    b = image2.to(image1.device)
    if b.shape != image1.shape:
        b = _fitted(b.movedim(-1, 1), image1.movedim(-1, 1), "bicubic").movedim(1, -1)
        if b.shape[-1] != image1.shape[-1] or b.shape[0] not in (1, image1.shape[0]):
            raise NodeError(
                f"image2 ({b.shape[0]} images, {b.shape[-1]} channels) cannot blend with "
                f"image1 ({image1.shape[0]} images, {image1.shape[-1]} channels)"
            )
    blended = _blend(image1, b, blend_mode)
    f = float(blend_factor)
    return (image1 * (1 - f) + blended * f).clamp(0.0, 1.0)


@node(
    "image_flip",
    title="Image Flip",
    category="image",
    description="Mirrors the image top to bottom or left to right (ComfyUI's ImageFlip).",
    inputs=[
        InputSpec("image", T.IMAGE),
        InputSpec("flip_method", T.CHOICE, default=FLIPS[0], choices=FLIPS),
    ],
    outputs=[IMAGE_OUT],
)
def image_flip(ctx, image: Any, flip_method: str) -> Any:
    import torch

    return torch.flip(image, dims=[1] if flip_method.startswith("x") else [2])


@node(
    "image_rotate",
    title="Image Rotate",
    category="image",
    description="Turns the image clockwise by 90, 180 or 270 degrees (ComfyUI's ImageRotate).",
    inputs=[
        InputSpec("image", T.IMAGE),
        InputSpec("rotation", T.CHOICE, default=ROTATIONS[0], choices=ROTATIONS),
    ],
    outputs=[IMAGE_OUT],
)
def image_rotate(ctx, image: Any, rotation: str) -> Any:
    import torch

    k = ROTATIONS.index(rotation)
    return torch.rot90(image, k=k, dims=[2, 1]) if k else image


# -- latents ------------------------------------------------------------------------------------


def _latent_like(latent: dict, samples: Any) -> dict:
    """``latent`` with new samples: the posterior's spread no longer applies."""
    out = {k: v for k, v in latent.items() if k != "posterior_std"}
    out["samples"] = samples
    return out


@node(
    "latent_flip",
    title="Latent Flip",
    category="latent",
    description="Mirrors the latent top to bottom or left to right (ComfyUI's LatentFlip).",
    inputs=[
        InputSpec("latent", T.LATENT),
        InputSpec("flip_method", T.CHOICE, default=FLIPS[0], choices=FLIPS),
    ],
    outputs=[LATENT_OUT],
)
def latent_flip(ctx, latent: dict, flip_method: str) -> dict:
    import torch

    dims = [2] if flip_method.startswith("x") else [3]
    out = _latent_like(latent, torch.flip(latent["samples"], dims=dims))
    if out.get("noise_mask") is not None:
        m = out["noise_mask"]
        out["noise_mask"] = torch.flip(m, dims=[m.dim() - 2 if dims == [2] else m.dim() - 1])
    return out


@node(
    "latent_rotate",
    title="Latent Rotate",
    category="latent",
    description="Turns the latent clockwise by 90, 180 or 270 degrees (ComfyUI's LatentRotate).",
    inputs=[
        InputSpec("latent", T.LATENT),
        InputSpec("rotation", T.CHOICE, default=ROTATIONS[0], choices=ROTATIONS),
    ],
    outputs=[LATENT_OUT],
)
def latent_rotate(ctx, latent: dict, rotation: str) -> dict:
    import torch

    k = ROTATIONS.index(rotation)
    out = _latent_like(latent, torch.rot90(latent["samples"], k=k, dims=[3, 2]))
    if out.get("noise_mask") is not None and k:
        m = out["noise_mask"]
        out["noise_mask"] = torch.rot90(m, k=k, dims=[m.dim() - 1, m.dim() - 2])
    return out


def _two(latent1: dict, latent2: dict) -> tuple[Any, Any]:
    """The two latents' samples, the second scaled to the first's size (bilinear, cut at its
    middle) and repeated to its batch, as ComfyUI's ``reshape_latent_to``."""
    from nodes.comfycore import _fitted
    from nodes.mask import _repeat_to_batch

    s1, s2 = latent1["samples"], latent2["samples"]
    if s1.shape[1] != s2.shape[1]:
        raise NodeError(
            f"samples2 has {s2.shape[1]} channels, samples1 {s1.shape[1]}: latents of different "
            "model families cannot be combined"
        )
    s2 = _fitted(s2.to(s1.device, s1.dtype), s1, "bilinear")
    return s1, _repeat_to_batch(s2, s1.shape[0])


@node(
    "latent_add",
    title="Latent Add",
    category="latent",
    description="The sum of two latents (ComfyUI's LatentAdd).",
    inputs=[InputSpec("samples1", T.LATENT), InputSpec("samples2", T.LATENT)],
    outputs=[LATENT_OUT],
)
def latent_add(ctx, samples1: dict, samples2: dict) -> dict:
    s1, s2 = _two(samples1, samples2)
    return _latent_like(samples1, s1 + s2)


@node(
    "latent_subtract",
    title="Latent Subtract",
    category="latent",
    description="The first latent minus the second (ComfyUI's LatentSubtract).",
    inputs=[InputSpec("samples1", T.LATENT), InputSpec("samples2", T.LATENT)],
    outputs=[LATENT_OUT],
)
def latent_subtract(ctx, samples1: dict, samples2: dict) -> dict:
    s1, s2 = _two(samples1, samples2)
    return _latent_like(samples1, s1 - s2)


@node(
    "latent_multiply",
    title="Latent Multiply",
    category="latent",
    description="The latent times a number (ComfyUI's LatentMultiply).",
    inputs=[
        InputSpec("samples", T.LATENT),
        InputSpec("multiplier", T.FLOAT, default=1.0, min=-10.0, max=10.0, step=0.01),
    ],
    outputs=[LATENT_OUT],
)
def latent_multiply(ctx, samples: dict, multiplier: float) -> dict:
    return _latent_like(samples, samples["samples"] * float(multiplier))


@node(
    "latent_interpolate",
    title="Latent Interpolate",
    category="latent",
    description=(
        "Between two latents (ComfyUI's LatentInterpolate): their directions mixed by the "
        "ratio at each pixel, and their lengths (over the channels) mixed alike."
    ),
    inputs=[
        InputSpec("samples1", T.LATENT),
        InputSpec("samples2", T.LATENT),
        InputSpec("ratio", T.FLOAT, default=1.0, min=0.0, max=1.0, step=0.01,
                  tooltip="1: the first latent; 0: the second."),
    ],
    outputs=[LATENT_OUT],
)  # fmt: skip
def latent_interpolate(ctx, samples1: dict, samples2: dict, ratio: float) -> dict:
    import torch

    s1, s2 = _two(samples1, samples2)
    r = float(ratio)
    # ComfyUI divides by the per-pixel length over the channels (its division broadcasts
    # so only for a batch of one; here for any batch)
    m1 = torch.linalg.vector_norm(s1, dim=1, keepdim=True)
    m2 = torch.linalg.vector_norm(s2, dim=1, keepdim=True)
    t = torch.nan_to_num(s1 / m1) * r + torch.nan_to_num(s2 / m2) * (1.0 - r)
    mt = torch.linalg.vector_norm(t, dim=1, keepdim=True)
    return _latent_like(samples1, torch.nan_to_num(t / mt) * (m1 * r + m2 * (1.0 - r)))


@node(
    "latent_composite_masked",
    title="Latent Composite Masked",
    category="latent",
    description=(
        "Pastes the source latent onto the destination at x, y (pixels, in steps of 8) "
        "through an optional mask (ComfyUI's LatentCompositeMasked); what falls outside is "
        "cut off."
    ),
    inputs=[
        InputSpec("destination", T.LATENT),
        InputSpec("source", T.LATENT),
        InputSpec("x", T.INT, default=0, min=0, max=16384, step=8),
        InputSpec("y", T.INT, default=0, min=0, max=16384, step=8),
        InputSpec("resize_source", T.BOOLEAN, default=False,
                  tooltip="Stretch the source to the destination's size first."),
        InputSpec("mask", T.MASK, optional=True,
                  tooltip="Where the source shows (stretched to the source's size)."),
    ],
    outputs=[LATENT_OUT],
)  # fmt: skip
def latent_composite_masked(
    ctx, destination: dict, source: dict, x: int, y: int, resize_source: bool, mask: Any = None
) -> dict:
    from nodes.mask import composite_bchw

    dest, src = destination["samples"], source["samples"]
    if dest.shape[1] != src.shape[1]:
        raise NodeError(
            f"the source latent has {src.shape[1]} channels, the destination {dest.shape[1]}: "
            "latents of different model families cannot be composited"
        )
    out = composite_bchw(dest.clone(), src.to(dest.dtype), x, y, mask, 8, resize_source)
    return _latent_like(destination, out)


@node(
    "split_image_with_alpha",
    title="Split Image With Alpha",
    category="image",
    description=(
        "An RGBA image as its RGB image and a mask of where it is transparent (ComfyUI's "
        "SplitImageWithAlpha: the mask is 1 - alpha; an RGB image gives an empty mask)."
    ),
    inputs=[InputSpec("image", T.IMAGE)],
    outputs=[IMAGE_OUT, MASK_OUT],
)
def split_image_with_alpha(ctx, image: Any) -> dict:
    import torch

    alpha = image[..., 3] if image.shape[-1] > 3 else torch.ones_like(image[..., 0])
    return {"image": image[..., :3].clone(), "mask": 1.0 - alpha}


@node(
    "join_image_with_alpha",
    title="Join Image With Alpha",
    category="image",
    description=(
        "An RGB image with a mask as its transparency (ComfyUI's JoinImageWithAlpha: alpha "
        "is 1 - the mask, stretched to the image's size)."
    ),
    inputs=[InputSpec("image", T.IMAGE), InputSpec("alpha", T.MASK)],
    outputs=[IMAGE_OUT],
)
def join_image_with_alpha(ctx, image: Any, alpha: Any) -> Any:
    import torch
    import torch.nn.functional as F

    m = _mask3(alpha).to(image.device)
    m = F.interpolate(m.unsqueeze(1), size=image.shape[1:3], mode="bilinear").squeeze(1)
    n = min(image.shape[0], m.shape[0])
    return torch.cat([image[:n, ..., :3], (1.0 - m[:n]).unsqueeze(-1)], dim=-1)


@node(
    "latent_crop",
    title="Latent Crop",
    category="latent",
    description=(
        "A rectangle of the latent, in pixels (ComfyUI's LatentCrop: multiples of 8, the "
        "corner kept at least 64 pixels inside)."
    ),
    inputs=[
        InputSpec("latent", T.LATENT),
        InputSpec("width", T.INT, default=512, min=64, max=16384, step=8),
        InputSpec("height", T.INT, default=512, min=64, max=16384, step=8),
        InputSpec("x", T.INT, default=0, min=0, max=16384, step=8),
        InputSpec("y", T.INT, default=0, min=0, max=16384, step=8),
    ],
    outputs=[LATENT_OUT],
)
def latent_crop(ctx, latent: dict, width: int, height: int, x: int, y: int) -> dict:
    s = latent["samples"]
    x, y = min(int(x) // 8, s.shape[3] - 8), min(int(y) // 8, s.shape[2] - 8)
    x, y = max(x, 0), max(y, 0)
    out = _latent_like(latent, s[:, :, y : y + int(height) // 8, x : x + int(width) // 8])
    out.pop("noise_mask", None)
    return out


SEED_BEHAVIORS = ("random", "fixed")


@node(
    "latent_batch_seed_behavior",
    title="Latent Batch Seed Behavior",
    category="latent",
    description=(
        "How a batch's latents get their noise (ComfyUI's LatentBatchSeedBehavior): random, "
        "each its own; fixed, all the first's (the same picture for the same prompt)."
    ),
    inputs=[
        InputSpec("latent", T.LATENT),
        InputSpec("seed_behavior", T.CHOICE, default="fixed", choices=SEED_BEHAVIORS),
    ],
    outputs=[LATENT_OUT],
)
def latent_batch_seed_behavior(ctx, latent: dict, seed_behavior: str) -> dict:
    out = dict(latent)
    if seed_behavior == "random":
        out.pop("batch_index", None)
    else:
        first = next(iter(out.get("batch_index") or [0]))
        out["batch_index"] = [first] * latent["samples"].shape[0]
    return out
