"""Mask nodes: make, refine, crop to and composite with masks.

IMAGE is a float tensor [B, H, W, C] in 0..1; MASK is a float tensor [B, H, W] in 0..1
where 1 marks the area to change (see docs/VALUES.md). torch is imported inside the
functions, so the GUI reads these specs without loading it.
"""

from __future__ import annotations

from typing import Any

from studio.errors import NodeError
from studio.graph.spec import InputSpec, OutputSpec, node
from studio.graph.types import ValueType as T

MASK_IN = InputSpec("mask", T.MASK, tooltip="The mask: 1 where the image will change.")
MASK_OUT = OutputSpec("mask", T.MASK)


def _as_batch(mask: Any) -> Any:
    return mask.unsqueeze(0) if mask.dim() == 2 else mask


def check_same_size(image: Any, mask: Any, what: str = "image") -> None:
    """A clear error when a mask does not cover the image it is applied to."""
    ih, iw = image.shape[1], image.shape[2]
    mh, mw = mask.shape[-2], mask.shape[-1]
    if (ih, iw) != (mh, mw):
        raise NodeError(
            f"the mask is {mw}x{mh} but the {what} is {iw}x{ih}; "
            "scale the mask to the image size first (Scale Image / a mask of the same size)"
        )


def _match_batch(t: Any, batch: int) -> Any:
    if t.shape[0] == batch:
        return t
    if t.shape[0] == 1:
        return t.expand(batch, *t.shape[1:])
    raise NodeError(f"batch sizes differ: {t.shape[0]} and {batch}")


@node(
    "invert_mask",
    title="Invert Mask",
    category="mask",
    description="Swaps the masked and unmasked areas.",
    inputs=[MASK_IN],
    outputs=[MASK_OUT],
)
def invert_mask(ctx, mask):
    return 1.0 - mask


@node(
    "threshold_mask",
    title="Threshold Mask",
    category="mask",
    description=(
        "Makes a soft mask hard: 1 where it is at least the threshold (or, with compare "
        "'above', strictly above it, as ComfyUI's ThresholdMask), else 0."
    ),
    inputs=[
        MASK_IN,
        InputSpec(
            "threshold",
            T.FLOAT,
            default=0.5,
            min=0.0,
            max=1.0,
            step=0.01,
            tooltip="Values at or above this (or above it, see compare) become 1, the rest 0.",
        ),
        InputSpec(
            "compare",
            T.CHOICE,
            default="at or above",
            choices=("at or above", "above"),
            tooltip=(
                "at or above: a value equal to the threshold becomes 1; above: it becomes 0 "
                "(ComfyUI's ThresholdMask)."
            ),
        ),
    ],
    outputs=[MASK_OUT],
)
def threshold_mask(ctx, mask, threshold: float, compare: str = "at or above"):
    kept = mask > threshold if compare == "above" else mask >= threshold
    return kept.to(mask.dtype)


@node(
    "grow_mask",
    title="Grow Mask",
    category="mask",
    description=(
        "Grows (positive) or shrinks (negative) the masked area by a number of pixels. "
        "Tapered corners grow it one pixel at a time through a cross, as ComfyUI's GrowMask, "
        "so corners become diagonal."
    ),
    inputs=[
        MASK_IN,
        InputSpec(
            "pixels",
            T.INT,
            default=8,
            min=-512,
            max=512,
            tooltip="Pixels to grow by; negative values shrink the mask.",
        ),
        InputSpec(
            "tapered_corners",
            T.BOOLEAN,
            default=False,
            tooltip=(
                "Off: grow by a square (corners stay square). On: by a cross per pixel "
                "(corners cut diagonally, ComfyUI's default)."
            ),
        ),
    ],
    outputs=[MASK_OUT],
)
def grow_mask(ctx, mask, pixels: int, tapered_corners: bool = False):
    import torch.nn.functional as F

    if pixels == 0:
        return mask
    m = _as_batch(mask).unsqueeze(1)
    if tapered_corners:
        return _grow_by_crosses(m, pixels).squeeze(1)
    r = abs(pixels)
    k = 2 * r + 1
    if pixels > 0:
        out = F.max_pool2d(m, k, stride=1, padding=r)
    else:
        out = -F.max_pool2d(-m, k, stride=1, padding=r)
    return out.squeeze(1)


def _grow_by_crosses(m: Any, pixels: int) -> Any:
    """``|pixels|`` steps of a 3x3 cross-shaped max (grow) or min (shrink) of [B, 1, H, W],
    edges replicated: scipy's grey dilation / erosion with a cross footprint, as ComfyUI."""
    import torch
    import torch.nn.functional as F

    pick = torch.maximum if pixels > 0 else torch.minimum
    h, w = m.shape[-2:]
    for _ in range(abs(pixels)):
        p = F.pad(m, (1, 1, 1, 1), mode="replicate")
        m = pick(
            pick(pick(m, p[..., :h, 1 : w + 1]), p[..., 2:, 1 : w + 1]),
            pick(p[..., 1 : h + 1, :w], p[..., 1 : h + 1, 2:]),
        )
    return m


@node(
    "feather_mask",
    title="Feather Mask",
    category="mask",
    description="Softens the mask's edge with a Gaussian blur, for seamless inpainting.",
    inputs=[
        MASK_IN,
        InputSpec("radius", T.INT, default=8, min=0, max=256, tooltip="Blur radius in pixels."),
    ],
    outputs=[MASK_OUT],
)
def feather_mask(ctx, mask, radius: int):
    if radius == 0:
        return mask
    return gaussian_blur(_as_batch(mask).unsqueeze(1), radius).squeeze(1).clamp(0.0, 1.0)


@node(
    "feather_mask_edges",
    title="Feather Mask (Edges)",
    category="mask",
    description=(
        "Fades the mask towards each side of the image over its own number of pixels (a "
        "linear ramp per side), as ComfyUI's FeatherMask."
    ),
    inputs=[
        MASK_IN,
        *(
            InputSpec(
                side,
                T.INT,
                default=0,
                min=0,
                max=16384,
                tooltip=f"Pixels over which the mask fades to its {side} edge (0: none).",
            )
            for side in ("left", "top", "right", "bottom")
        ),
    ],
    outputs=[MASK_OUT],
)
def feather_mask_edges(ctx, mask, left: int = 0, top: int = 0, right: int = 0, bottom: int = 0):
    import torch

    out = _as_batch(mask).clone()
    h, w = out.shape[-2:]
    left, right, top, bottom = min(left, w), min(right, w), min(top, h), min(bottom, h)

    def ramp(size: int, n: int, far: bool) -> Any:
        rates = torch.ones(size, dtype=out.dtype)
        for i in range(n):
            # ComfyUI's far side indexes -i: its first step (i = 0) lands on the near
            # edge (index 0), and the far edge's last pixel gets 2 / n, not 1 / n.
            rates[-i if far else i] = (i + 1.0) / n
        return rates

    # One side after the other, as ComfyUI multiplies them (the same float rounding).
    out *= ramp(w, left, False)
    out *= ramp(w, right, True)
    out *= ramp(h, top, False).unsqueeze(-1)
    out *= ramp(h, bottom, True).unsqueeze(-1)
    return out


def gaussian_blur(x: Any, radius: int) -> Any:
    """Separable Gaussian blur of [B, C, H, W] with sigma = radius / 2, edges replicated."""
    import torch
    import torch.nn.functional as F

    sigma = max(radius / 2.0, 1e-3)
    coords = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(coords**2) / (2 * sigma * sigma))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    kx = kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    ky = kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    x = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(x, kx, groups=c)
    x = F.pad(x, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(x, ky, groups=c)


@node(
    "mask_from_image",
    title="Mask from Image",
    category="mask",
    description="Takes a mask from a channel of an image (a black-and-white mask image).",
    inputs=[
        InputSpec("image", T.IMAGE, tooltip="A mask painted or saved as an image."),
        InputSpec(
            "channel",
            T.CHOICE,
            default="luminance",
            choices=("luminance", "red", "green", "blue"),
            tooltip="Which channel becomes the mask.",
        ),
    ],
    outputs=[MASK_OUT],
)
def mask_from_image(ctx, image, channel: str):
    if channel == "luminance":
        weights = image.new_tensor([0.299, 0.587, 0.114])
        return (image[..., :3] * weights).sum(-1)
    return image[..., ("red", "green", "blue").index(channel)].clone()


@node(
    "solid_mask",
    title="Solid Mask",
    category="mask",
    description="A mask of one value over a whole size (start for painting or compositing).",
    inputs=[
        InputSpec("value", T.FLOAT, default=1.0, min=0.0, max=1.0, step=0.01),
        InputSpec("width", T.INT, default=512, min=1, max=16384, step=8),
        InputSpec("height", T.INT, default=512, min=1, max=16384, step=8),
    ],
    outputs=[MASK_OUT],
)
def solid_mask(ctx, value: float, width: int, height: int):
    import torch

    return torch.full((1, height, width), float(value))


@node(
    "crop_to_mask",
    title="Crop to Mask",
    category="mask",
    description=(
        "Crops the image and mask to the mask's bounding box plus padding, so a small area can be "
        "inpainted at full resolution; Paste Crop puts the result back."
    ),
    inputs=[
        InputSpec("image", T.IMAGE),
        MASK_IN,
        InputSpec(
            "padding",
            T.INT,
            default=32,
            min=0,
            max=4096,
            tooltip="Pixels of context kept around the masked area.",
        ),
        InputSpec(
            "multiple_of",
            T.INT,
            default=8,
            min=1,
            max=256,
            tooltip="Round the crop size to a multiple of this (8 for latents).",
        ),
    ],
    outputs=[
        OutputSpec("image", T.IMAGE),
        OutputSpec("mask", T.MASK),
        OutputSpec("x", T.INT, tooltip="Left edge of the crop in the original image."),
        OutputSpec("y", T.INT, tooltip="Top edge of the crop in the original image."),
    ],
)
def crop_to_mask(ctx, image, mask, padding: int, multiple_of: int):
    mask = _as_batch(mask)
    check_same_size(image, mask)
    x0, y0, x1, y1 = mask_bbox(mask, padding, multiple_of, image.shape[2], image.shape[1])
    return {
        "image": image[:, y0:y1, x0:x1, :].clone(),
        "mask": mask[:, y0:y1, x0:x1].clone(),
        "x": x0,
        "y": y0,
    }


def mask_bbox(
    mask: Any, padding: int, multiple: int, width: int, height: int
) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1) of mask > 0 over the batch, padded, clamped, rounded."""
    import torch

    nz = torch.nonzero(mask.amax(0) > 0)
    if nz.numel() == 0:
        raise NodeError("the mask is empty: nothing to crop to")
    y0, x0 = (int(v) for v in nz.min(0).values)
    y1, x1 = (int(v) + 1 for v in nz.max(0).values)
    x0, y0 = max(0, x0 - padding), max(0, y0 - padding)
    x1, y1 = min(width, x1 + padding), min(height, y1 + padding)

    def grow(lo: int, hi: int, limit: int) -> tuple[int, int]:
        size = -(-(hi - lo) // multiple) * multiple
        size = min(size, limit - limit % multiple or limit)
        lo = max(0, min(lo, limit - size))
        return lo, lo + size

    x0, x1 = grow(x0, x1, width)
    y0, y1 = grow(y0, y1, height)
    return x0, y0, x1, y1


@node(
    "paste_crop",
    title="Paste Crop",
    category="mask",
    description=(
        "Pastes an image (a processed crop) back into the original at x, y; where a mask is "
        "given, only the masked pixels change. A crop of another size is resized to fit."
    ),
    inputs=[
        InputSpec("destination", T.IMAGE, tooltip="The original, full image."),
        InputSpec("source", T.IMAGE, tooltip="The processed crop."),
        InputSpec("x", T.INT, default=0, min=0, max=65536),
        InputSpec("y", T.INT, default=0, min=0, max=65536),
        InputSpec(
            "width",
            T.INT,
            default=0,
            min=0,
            max=65536,
            tooltip="Size of the crop in the original (0: the source's size).",
        ),
        InputSpec(
            "height",
            T.INT,
            default=0,
            min=0,
            max=65536,
            tooltip="Size of the crop in the original (0: the source's size).",
        ),
        InputSpec("mask", T.MASK, optional=True, tooltip="Crop-sized mask of what to paste."),
    ],
    outputs=[OutputSpec("image", T.IMAGE)],
)
def paste_crop(ctx, destination, source, x: int, y: int, width: int, height: int, mask=None):
    import torch.nn.functional as F

    w = width or source.shape[2]
    h = height or source.shape[1]
    if x + w > destination.shape[2] or y + h > destination.shape[1]:
        raise NodeError(
            f"a {w}x{h} crop at ({x}, {y}) does not fit in the "
            f"{destination.shape[2]}x{destination.shape[1]} destination"
        )
    if (source.shape[1], source.shape[2]) != (h, w):
        source = (
            F.interpolate(
                source.movedim(-1, 1),
                size=(h, w),
                mode="bicubic",
                antialias=True,
                align_corners=False,
            )
            .movedim(1, -1)
            .clamp(0, 1)
        )
    out = destination.clone()
    src = _match_batch(source, out.shape[0])
    region = out[:, y : y + h, x : x + w, :]
    if mask is None:
        out[:, y : y + h, x : x + w, :] = src
    else:
        m = _as_batch(mask)
        if (m.shape[1], m.shape[2]) != (h, w):
            m = F.interpolate(m.unsqueeze(1), size=(h, w), mode="bilinear").squeeze(1)
        m = _match_batch(m, out.shape[0]).unsqueeze(-1)
        out[:, y : y + h, x : x + w, :] = region * (1.0 - m) + src * m
    return out


@node(
    "composite_masked",
    title="Composite",
    category="mask",
    description=(
        "Puts the changed image back over the original through the mask: where the mask is 0 the "
        "pixels are exactly the original's."
    ),
    inputs=[
        InputSpec("original", T.IMAGE, tooltip="Pixels kept where the mask is 0."),
        InputSpec("changed", T.IMAGE, tooltip="Pixels taken where the mask is 1."),
        MASK_IN,
    ],
    outputs=[OutputSpec("image", T.IMAGE)],
)
def composite_masked(ctx, original, changed, mask):
    import torch

    mask = _as_batch(mask)
    check_same_size(original, mask, "original image")
    if changed.shape[1:3] != original.shape[1:3]:
        raise NodeError(
            f"the changed image is {changed.shape[2]}x{changed.shape[1]} but the original is "
            f"{original.shape[2]}x{original.shape[1]}"
        )
    batch = max(original.shape[0], changed.shape[0], mask.shape[0])
    o = _match_batch(original, batch)
    c = _match_batch(changed, batch)
    m = _match_batch(mask, batch).unsqueeze(-1).to(o.dtype)
    # torch.where keeps unmasked pixels bit-exact (no 0 * x + 1 * y rounding).
    blended = o * (1.0 - m) + c * m
    return torch.where(m > 0, blended, o)


@node(
    "image_composite_masked",
    title="Image Composite Masked",
    category="mask",
    description=(
        "Pastes the source image onto the destination with its top-left corner at x, y, "
        "through an optional mask (stretched to the source's size); what falls outside the "
        "destination is cut off. As ComfyUI's ImageCompositeMasked."
    ),
    inputs=[
        InputSpec("destination", T.IMAGE, tooltip="The image pasted onto."),
        InputSpec("source", T.IMAGE, tooltip="The image pasted."),
        InputSpec("x", T.INT, default=0, min=0, max=16384, tooltip="Left edge of the paste."),
        InputSpec("y", T.INT, default=0, min=0, max=16384, tooltip="Top edge of the paste."),
        InputSpec(
            "resize_source",
            T.BOOLEAN,
            default=False,
            tooltip="Stretch the source (bilinear) to the destination's size first.",
        ),
        InputSpec(
            "mask",
            T.MASK,
            optional=True,
            tooltip="Where the source shows (1) over the destination; none: everywhere.",
        ),
    ],
    outputs=[OutputSpec("image", T.IMAGE)],
)
def image_composite_masked(
    ctx, destination, source, x: int = 0, y: int = 0, resize_source: bool = False, mask=None
):
    import torch.nn.functional as F

    if destination.shape[-1] < source.shape[-1]:
        source = source[..., : destination.shape[-1]]
    elif destination.shape[-1] > source.shape[-1]:
        # an RGBA destination under an RGB source: the source becomes opaque
        source = F.pad(source, (0, 1), value=1.0)
    dest = destination.movedim(-1, 1).clone()
    dest = composite_bchw(dest, source.movedim(-1, 1), x, y, mask, 1, resize_source)
    return dest.movedim(1, -1)


def composite_bchw(
    dest: Any, src: Any, x: int, y: int, mask: Any, multiplier: int, resize_source: bool
) -> Any:
    """ComfyUI's ``composite`` on [B, C, H, W] tensors, in place on ``dest`` (returned):
    ``src`` pasted with its top-left corner at x, y (pixels; ``multiplier`` pixels a cell,
    8 for latents) through ``mask`` stretched to the source's size; what falls outside
    ``dest`` is cut off."""
    import torch
    import torch.nn.functional as F

    src = src.to(dest.device)
    if resize_source:
        src = F.interpolate(src, size=dest.shape[-2:], mode="bilinear")
    src = _repeat_to_batch(src, dest.shape[0])
    sh, sw = src.shape[-2:]
    x = max(-sw * multiplier, min(int(x), dest.shape[-1] * multiplier))
    y = max(-sh * multiplier, min(int(y), dest.shape[-2] * multiplier))
    left, top = x // multiplier, y // multiplier
    if mask is None:
        m = torch.ones_like(src)
    else:
        m = mask.to(dest.device).reshape(-1, 1, mask.shape[-2], mask.shape[-1])
        m = _repeat_to_batch(F.interpolate(m, size=(sh, sw), mode="bilinear"), src.shape[0])
    vw, vh = dest.shape[-1] - left + min(0, x), dest.shape[-2] - top + min(0, y)
    m = m[:, :, :vh, :vw]
    region = dest[:, :, top : top + sh, left : left + sw]
    dest[:, :, top : top + sh, left : left + sw] = m * src[:, :, :vh, :vw] + (1.0 - m) * region
    return dest


def _repeat_to_batch(t: Any, batch: int) -> Any:
    """``t`` cut to, or repeated (whole) up to, ``batch`` items along its first axis."""
    if t.shape[0] > batch:
        return t[:batch]
    if t.shape[0] < batch:
        reps = -(-batch // t.shape[0])
        return t.repeat(reps, *([1] * (t.dim() - 1)))[:batch]
    return t
