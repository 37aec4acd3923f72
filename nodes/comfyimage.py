"""ComfyUI's image helpers with its arithmetic: Image Stitch (FLUX.1 Kontext's multi-image
workflows put two pictures side by side with it), Resize and Pad Image, Scale Image to Max
Dimension, Image Add Noise, Get Image Size, Preview Mask, and String Concatenate.

IMAGE is [B, H, W, C] in 0..1, MASK [B, H, W] (docs/VALUES.md). torch is imported inside
the functions.
"""

from __future__ import annotations

from typing import Any

from studio.errors import NodeError
from studio.graph.spec import InputSpec, OutputSpec, node
from studio.graph.types import ValueType as T

DIRECTIONS = ("right", "down", "left", "up")
SPACING_COLORS = ("white", "black", "red", "green", "blue")
_COLOR_VALUES: dict[str, Any] = {
    "white": 1.0,
    "black": 0.0,
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
}
#: ComfyUI's ImageScaleToMaxDimension methods (its list, without the repeated bilinear).
MAX_DIMENSION_METHODS = ("area", "lanczos", "bilinear", "nearest-exact", "bicubic")
PAD_METHODS = ("area", "bicubic", "nearest-exact", "bilinear", "lanczos")
IMAGE_OUT = OutputSpec("image", T.IMAGE)
#: The longest side a scaled picture may get (Scale Image's own limit).
MAX_SIDE = 16384


def _choice(value: str, choices: tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise NodeError(f"the {name} param {value!r} is not one of {', '.join(choices)}")


def _same_batch(a: Any, b: Any) -> tuple[Any, Any]:
    """The shorter batch filled up with its last image (ComfyUI's Image Stitch)."""
    import torch

    n = max(a.shape[0], b.shape[0])
    a = torch.cat([a, a[-1:].repeat(n - a.shape[0], 1, 1, 1)]) if a.shape[0] < n else a
    b = torch.cat([b, b[-1:].repeat(n - b.shape[0], 1, 1, 1)]) if b.shape[0] < n else b
    return a, b


def _pad_centered(image: Any, size: int, dim: int, value: float) -> Any:
    """``image`` padded on both sides of ``dim`` (1: height, 2: width) to ``size``."""
    import torch.nn.functional as F

    extra = size - image.shape[dim]
    if extra <= 0:
        return image
    before, after = extra // 2, extra - extra // 2
    pad = (0, 0, 0, 0, before, after) if dim == 1 else (0, 0, before, after)
    return F.pad(image, pad, mode="constant", value=value)


def _with_channels(image: Any, channels: int) -> Any:
    import torch

    if image.shape[-1] >= channels:
        return image
    ones = torch.ones(*image.shape[:-1], channels - image.shape[-1], dtype=image.dtype)
    return torch.cat([image, ones.to(image.device)], dim=-1)


@node(
    "image_stitch",
    title="Image Stitch",
    category="image",
    description=(
        "Puts image2 beside image1 (right, below, left or above), e.g. two reference "
        "pictures for FLUX.1 Kontext (ComfyUI's ImageStitch): image2 scaled to image1's "
        "height (or width) when matching sizes, else the smaller centred on padding; an "
        "optional gap of a colour between them. Without image2, image1 as it is."
    ),
    inputs=[
        InputSpec("image1", T.IMAGE),
        InputSpec("direction", T.CHOICE, default="right", choices=DIRECTIONS,
                  tooltip="Where image2 goes, beside image1."),
        InputSpec("match_image_size", T.BOOLEAN, default=True,
                  tooltip="Scale image2 (lanczos, keeping its aspect) to image1's height for "
                  "right / left, to its width for down / up."),
        InputSpec("spacing_width", T.INT, default=0, min=0, max=1024, step=2,
                  tooltip="Pixels of gap between the images (rounded up to even)."),
        InputSpec("spacing_color", T.CHOICE, default="white", choices=SPACING_COLORS),
        InputSpec("image2", T.IMAGE, optional=True),
    ],
    outputs=[IMAGE_OUT],
)  # fmt: skip
def image_stitch(
    ctx, image1: Any, direction: str = "right", match_image_size: bool = True,
    spacing_width: int = 0, spacing_color: str = "white", image2: Any = None,
) -> Any:  # fmt: skip
    import torch

    from nodes.upscale import comfy_resize

    _choice(direction, DIRECTIONS, "direction")
    _choice(spacing_color, SPACING_COLORS, "spacing_color")
    if image2 is None:
        return image1
    a, b = _same_batch(image1, image2)
    horizontal = direction in ("left", "right")
    color = _COLOR_VALUES[spacing_color]
    if match_image_size:
        h1, w1 = a.shape[1:3]
        aspect = b.shape[2] / b.shape[1]
        size = (int(h1 * aspect), h1) if horizontal else (w1, int(w1 / aspect))
        if min(size) < 1 or max(size) > MAX_SIDE:
            raise NodeError(
                f"image2 ({b.shape[2]}x{b.shape[1]}) scaled to image1's "
                f"{'height' if horizontal else 'width'} would be {size[0]}x{size[1]}; "
                f"sides go from 1 to {MAX_SIDE}: turn match_image_size off"
            )
        b = comfy_resize(b, size, "lanczos")
    else:
        value = 0.0 if isinstance(color, tuple) else color
        dim = 1 if horizontal else 2
        size = max(a.shape[dim], b.shape[dim])
        a, b = _pad_centered(a, size, dim, value), _pad_centered(b, size, dim, value)
    channels = max(a.shape[-1], b.shape[-1])
    a, b = _with_channels(a, channels), _with_channels(b, channels)
    parts = [b, a] if direction in ("left", "up") else [a, b]
    if spacing_width > 0:
        width = spacing_width + spacing_width % 2
        if horizontal:
            shape = (a.shape[0], max(a.shape[1], b.shape[1]), width, channels)
        else:
            shape = (a.shape[0], width, max(a.shape[2], b.shape[2]), channels)
        gap = torch.zeros(shape, dtype=a.dtype, device=a.device)
        rgb = color if isinstance(color, tuple) else (color,) * 3
        for i, c in enumerate(rgb[:channels]):
            gap[..., i] = c
        if channels == 4:
            gap[..., 3] = 1.0
        parts.insert(1, gap)
    return torch.cat(parts, dim=2 if horizontal else 1)


@node(
    "resize_and_pad_image",
    title="Resize and Pad Image",
    category="image",
    description=(
        "Fits the image inside a size, keeping its aspect, and centres it on white or black "
        "(ComfyUI's ResizeAndPadImage)."
    ),
    inputs=[
        InputSpec("image", T.IMAGE),
        InputSpec("target_width", T.INT, default=512, min=1, max=16384),
        InputSpec("target_height", T.INT, default=512, min=1, max=16384),
        InputSpec("padding_color", T.CHOICE, default="white", choices=("white", "black")),
        InputSpec("interpolation", T.CHOICE, default="area", choices=PAD_METHODS),
    ],
    outputs=[IMAGE_OUT],
)
def resize_and_pad_image(
    ctx,
    image: Any,
    target_width: int = 512,
    target_height: int = 512,
    padding_color: str = "white",
    interpolation: str = "area",
) -> Any:
    import torch

    from nodes.upscale import comfy_resize

    _choice(padding_color, ("white", "black"), "padding_color")
    _choice(interpolation, PAD_METHODS, "interpolation")
    b, h, w, c = image.shape
    scale = min(target_width / w, target_height / h)
    nw, nh = int(w * scale), int(h * scale)
    if min(nw, nh) < 1:
        raise NodeError(
            f"a {w}x{h} image fitted inside {target_width}x{target_height} would be {nw}x{nh}"
        )
    resized = comfy_resize(image, (nw, nh), interpolation)
    out = torch.full((b, target_height, target_width, c), 0.0 if padding_color == "black" else 1.0,
                     dtype=image.dtype, device=image.device)  # fmt: skip
    y, x = (target_height - nh) // 2, (target_width - nw) // 2
    out[:, y : y + nh, x : x + nw] = resized
    return out


@node(
    "scale_image_max_dimension",
    title="Scale Image to Max Dimension",
    category="upscale",
    description=(
        "Scales the image, keeping its aspect, so its longer side is the given size "
        "(ComfyUI's ImageScaleToMaxDimension; no antialiasing, lanczos on 8-bit)."
    ),
    inputs=[
        InputSpec("image", T.IMAGE),
        InputSpec("upscale_method", T.CHOICE, default="area", choices=MAX_DIMENSION_METHODS),
        InputSpec("largest_size", T.INT, default=512, min=1, max=16384,
                  tooltip="The longer side, in pixels."),
    ],
    outputs=[IMAGE_OUT],
)  # fmt: skip
def scale_image_max_dimension(
    ctx, image: Any, upscale_method: str = "area", largest_size: int = 512
) -> Any:
    from nodes.upscale import comfy_resize

    _choice(upscale_method, MAX_DIMENSION_METHODS, "upscale_method")
    h, w = image.shape[1], image.shape[2]
    if h > w:
        size = (round(w / h * largest_size), largest_size)
    elif w > h:
        size = (largest_size, round(h / w * largest_size))
    else:
        size = (largest_size, largest_size)
    if min(size) < 1:
        raise NodeError(
            f"a {w}x{h} image with its longer side at {largest_size} would be "
            f"{size[0]}x{size[1]}: raise largest_size"
        )
    return comfy_resize(image, size, upscale_method)


@node(
    "image_add_noise",
    title="Image Add Noise",
    category="image",
    description=(
        "Adds Gaussian noise to the pixels, clipped to 0..1 (ComfyUI's ImageAddNoise: the "
        "same seed gives the same grain)."
    ),
    inputs=[
        InputSpec("image", T.IMAGE),
        InputSpec("seed", T.INT, default=0, min=0, max=2**64 - 1, seed=True),
        InputSpec("strength", T.FLOAT, default=0.5, min=0.0, max=1.0, step=0.01),
    ],
    outputs=[IMAGE_OUT],
)
def image_add_noise(ctx, image: Any, seed: int = 0, strength: float = 0.5) -> Any:
    import torch

    g = torch.Generator("cpu").manual_seed(int(seed))
    noise = torch.randn(image.size(), generator=g, device="cpu").to(image)
    return torch.clip(image + strength * noise, min=0.0, max=1.0)


@node(
    "get_image_size",
    title="Get Image Size",
    category="image",
    description="The image's width, height and batch size, e.g. for Empty Latent.",
    inputs=[InputSpec("image", T.IMAGE)],
    outputs=[
        OutputSpec("width", T.INT),
        OutputSpec("height", T.INT),
        OutputSpec("batch_size", T.INT),
    ],
)
def get_image_size(ctx, image: Any) -> tuple[int, int, int]:
    return int(image.shape[2]), int(image.shape[1]), int(image.shape[0])


@node(
    "preview_mask",
    title="Preview Mask",
    category="mask",
    description="Shows a mask in the viewer as a grey picture (white: 1), without saving it.",
    inputs=[InputSpec("mask", T.MASK)],
    output_node=True,
)
def preview_mask(ctx, mask: Any) -> dict:
    from nodes.image import to_pil

    grey = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).movedim(1, -1).expand(-1, -1, -1, 3)
    ctx.show(to_pil(grey))
    return {}


@node(
    "string_concatenate",
    title="String Concatenate",
    category="utility",
    description="Two texts joined with a delimiter between them (ComfyUI's StringConcatenate).",
    inputs=[
        InputSpec("string_a", T.STRING, default="", multiline=True),
        InputSpec("string_b", T.STRING, default="", multiline=True),
        InputSpec("delimiter", T.STRING, default=""),
    ],
    outputs=[OutputSpec("string", T.STRING)],
)
def string_concatenate(ctx, string_a: str = "", string_b: str = "", delimiter: str = "") -> str:
    return delimiter.join([string_a, string_b])
