"""Upscaling: upscale models through spandrel (tiled), Scale Image, Latent Upscale.

spandrel reads the upscaler architectures artists use (ESRGAN, Real-ESRGAN and its compact
variant, SwinIR, HAT, DAT, OmniSR, ...) from a state dict; we read the file ourselves so
that pickled files only ever go through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nodes.weightfiles import read_state_dict
from studio.errors import NodeError
from studio.graph.spec import InputSpec, OutputSpec, node
from studio.graph.types import ValueType as T


@dataclass(frozen=True)
class UpscaleModel:
    """An UPSCALE_MODEL value: a handle; the weights live in the model manager."""

    key: tuple
    path: str
    scale: int
    architecture: str

    def __studio_nbytes__(self) -> int:
        return 256


@node(
    "load_upscale_model",
    title="Load Upscale Model",
    category="upscale",
    description="Loads an upscaler (ESRGAN, Real-ESRGAN, SwinIR, HAT, ... anything spandrel reads).",
    inputs=[
        InputSpec(
            "model_name",
            T.CHOICE,
            file_kind="upscale_models",
            tooltip="A file from the upscale_models folder.",
        )
    ],
    outputs=[OutputSpec("upscale_model", T.UPSCALE_MODEL)],
)
def load_upscale_model(ctx, model_name: str) -> UpscaleModel:
    path = ctx.model_files.resolve("upscale_models", model_name)
    key = ("upscale", *ctx.files.identity(path))

    def load() -> Any:
        from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

        state = read_state_dict(path)
        try:
            descriptor = ModelLoader().load_from_state_dict(state)
        except UnsupportedModelError:
            raise NodeError(
                f"{path.name}: not an upscale model architecture Studio can read "
                "(spandrel knows ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, OmniSR, and more)"
            ) from None
        except Exception as exc:
            raise NodeError(f"{path.name}: cannot build the model ({exc})") from None
        if not isinstance(descriptor, ImageModelDescriptor):
            raise NodeError(f"{path.name}: is not an image-to-image upscale model")
        descriptor.model.eval()
        return descriptor

    descriptor = ctx.models.get(key, load, nbytes=lambda d: _descriptor_nbytes(d))
    return UpscaleModel(key, str(path), int(descriptor.scale), str(descriptor.architecture.name))


def _descriptor_nbytes(descriptor: Any) -> int:
    return sum(p.element_size() * p.nelement() for p in descriptor.model.parameters())


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``length`` with at least ``overlap``."""
    if length <= tile:
        return [0]
    # Evenly spread, so every overlap is at least ``overlap`` and (with overlap <= tile / 2)
    # only neighbouring tiles overlap.
    count = -(-(length - overlap) // (tile - overlap))
    count = max(count, 2)
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def blend_weights(starts: list[int], tile: int, length: int, scale: int) -> list[Any]:
    """1-D weights per tile (output pixels) that sum to exactly one everywhere.

    Neighbouring tiles cross-fade over the middle half of their overlap: the outer quarter
    at each tile edge, where zero padding disturbs the model's output, gets no weight. The
    weights are normalised per axis, so no weight accumulator the size of the output is needed.
    """
    import torch

    out = []
    n = len(starts)
    for i, s in enumerate(starts):
        a, b = s * scale, min(s + tile, length) * scale
        w = torch.ones(b - a)
        if i > 0:
            prev_end = min(starts[i - 1] + tile, length) * scale
            if prev_end > a:
                w[: prev_end - a] = _fade(prev_end - a)
        if i < n - 1:
            next_start = starts[i + 1] * scale
            if b > next_start:
                w[next_start - a :] = 1.0 - _fade(b - next_start)
        out.append(w)
    # Normalise so the weights sum to one even where more than two tiles overlap.
    total = torch.zeros(length * scale)
    for s, w in zip(starts, out, strict=True):
        total[s * scale : s * scale + len(w)] += w
    return [w / total[s * scale : s * scale + len(w)] for s, w in zip(starts, out, strict=True)]


def _fade(length: int) -> Any:
    """0 over the first quarter, a linear rise over the middle half, 1 over the last quarter."""
    import torch

    x = (torch.arange(length, dtype=torch.float32) + 0.5) / length
    return ((x - 0.25) * 2.0).clamp(0.0, 1.0)


@node(
    "upscale_image",
    title="Upscale Image",
    category="upscale",
    description=(
        "Upscales an image with an upscale model, tile by tile with overlapping cross-fades, "
        "so memory stays bounded for large images."
    ),
    inputs=[
        InputSpec("upscale_model", T.UPSCALE_MODEL),
        InputSpec("image", T.IMAGE),
        InputSpec(
            "tile_size",
            T.INT,
            default=512,
            min=0,
            max=4096,
            step=32,
            tooltip="Tile size in input pixels; 0 upscales the whole image at once.",
        ),
        InputSpec(
            "overlap",
            T.INT,
            default=32,
            min=0,
            max=512,
            step=8,
            tooltip="Overlap between neighbouring tiles, cross-faded to hide seams.",
        ),
    ],
    outputs=[OutputSpec("image", T.IMAGE)],
)
def upscale_image(ctx, upscale_model: UpscaleModel, image, tile_size: int, overlap: int):
    import torch

    if not ctx.models.contains(upscale_model.key):
        load_upscale_model.execute(ctx, model_name=upscale_model.path)
    descriptor = ctx.models.use(upscale_model.key, ctx.device)
    return upscale_tiled(
        descriptor, image, upscale_model.scale, tile_size, overlap, ctx.device, ctx.progress, torch
    )


def upscale_tiled(
    model: Any,
    image: Any,
    scale: int,
    tile: int,
    overlap: int,
    device: str,
    progress: Any,
    torch: Any,
) -> Any:
    """Upscale [B, H, W, C] in tiles; ``model`` maps [1, C, h, w] to [1, C, h*s, w*s]."""
    b, h, w, c = image.shape
    if tile <= 0:
        tile = max(h, w)
    tile = max(tile, 8)
    overlap = min(overlap, tile // 2)
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    wy, wx = blend_weights(ys, tile, h, scale), blend_weights(xs, tile, w, scale)
    out = torch.zeros((b, h * scale, w * scale, c), dtype=torch.float32)
    total, done = b * len(ys) * len(xs), 0
    with torch.inference_mode():
        for bi in range(b):
            for iy, y in enumerate(ys):
                for ix, x in enumerate(xs):
                    patch = image[bi : bi + 1, y : y + tile, x : x + tile, :].movedim(-1, 1)
                    result = model(patch.to(device)).float().clamp(0, 1).cpu()[0].movedim(0, -1)
                    th, tw = result.shape[0], result.shape[1]
                    weight = (wy[iy][:th, None] * wx[ix][None, :tw]).unsqueeze(-1)
                    oy, ox = y * scale, x * scale
                    out[bi, oy : oy + th, ox : ox + tw, :] += result * weight
                    done += 1
                    progress(done, total)
    return out


# -- Scale Image and Latent Upscale ---------------------------------------------------------

SCALE_METHODS = ("lanczos", "bicubic", "bilinear", "nearest", "area")


def target_size(
    w: int, h: int, mode: str, factor: float, width: int, height: int, keep_aspect: bool
) -> tuple[int, int]:
    if mode == "factor":
        return max(1, round(w * factor)), max(1, round(h * factor))
    if width == 0 and height == 0:
        raise NodeError("give a width, a height, or both (or use mode 'factor')")
    if width == 0:
        return max(1, round(w * height / h)), height
    if height == 0:
        return width, max(1, round(h * width / w))
    if keep_aspect:
        s = min(width / w, height / h)
        return max(1, round(w * s)), max(1, round(h * s))
    return width, height


def resize_image(image: Any, size: tuple[int, int], method: str) -> Any:
    """Resize [B, H, W, C] to (width, height) with one of SCALE_METHODS."""
    import torch
    import torch.nn.functional as F

    tw, th = size
    if method == "lanczos":
        import numpy as np
        from PIL import Image

        frames = []
        for frame in image.cpu().numpy():
            chans = [
                np.asarray(Image.fromarray(frame[..., k], mode="F").resize((tw, th), Image.LANCZOS))
                for k in range(frame.shape[-1])
            ]
            frames.append(np.stack(chans, -1))
        return torch.from_numpy(np.stack(frames)).clamp(0, 1)
    x = image.movedim(-1, 1)
    if method == "nearest":
        y = F.interpolate(x, size=(th, tw), mode="nearest-exact")
    elif method == "area":
        y = F.interpolate(x, size=(th, tw), mode="area")
    else:
        y = F.interpolate(x, size=(th, tw), mode=method, align_corners=False, antialias=True)
    return y.movedim(1, -1).clamp(0, 1)


@node(
    "scale_image",
    title="Scale Image",
    category="upscale",
    description="Resizes an image by a factor or to a size (lanczos, bicubic, bilinear, nearest, area).",
    inputs=[
        InputSpec("image", T.IMAGE),
        InputSpec(
            "mode",
            T.CHOICE,
            default="factor",
            choices=("factor", "size"),
            tooltip="Scale by a factor, or to a width and height.",
        ),
        InputSpec("factor", T.FLOAT, default=2.0, min=0.01, max=16.0, step=0.05),
        InputSpec(
            "width",
            T.INT,
            default=0,
            min=0,
            max=16384,
            step=8,
            tooltip="Target width (0: from the height, keeping the aspect).",
        ),
        InputSpec(
            "height",
            T.INT,
            default=0,
            min=0,
            max=16384,
            step=8,
            tooltip="Target height (0: from the width, keeping the aspect).",
        ),
        InputSpec(
            "keep_aspect",
            T.BOOLEAN,
            default=True,
            tooltip="With both width and height: fit inside them without distorting.",
        ),
        InputSpec("method", T.CHOICE, default="lanczos", choices=SCALE_METHODS),
    ],
    outputs=[OutputSpec("image", T.IMAGE)],
)
def scale_image(ctx, image, mode, factor, width, height, keep_aspect, method):
    size = target_size(image.shape[2], image.shape[1], mode, factor, width, height, keep_aspect)
    return resize_image(image, size, method)


@node(
    "latent_upscale",
    title="Latent Upscale",
    category="upscale",
    description="Scales a latent (for a hires-fix second pass: upscale, then sample at denoise < 1).",
    inputs=[
        InputSpec("latent", T.LATENT),
        InputSpec("scale_by", T.FLOAT, default=1.5, min=0.1, max=8.0, step=0.05),
        InputSpec(
            "method",
            T.CHOICE,
            default="nearest-exact",
            choices=("nearest-exact", "bilinear", "bicubic", "area"),
        ),
    ],
    outputs=[OutputSpec("latent", T.LATENT)],
)
def latent_upscale(ctx, latent: dict, scale_by: float, method: str):
    import torch.nn.functional as F

    samples = latent["samples"]
    h, w = samples.shape[-2:]
    size = (max(1, round(h * scale_by)), max(1, round(w * scale_by)))
    kwargs = {"align_corners": False} if method in ("bilinear", "bicubic") else {}
    out = dict(latent)
    out["samples"] = F.interpolate(samples, size=size, mode=method, **kwargs)
    mask = latent.get("noise_mask")
    if mask is not None:
        m = mask if mask.dim() == 4 else mask.reshape(-1, 1, *mask.shape[-2:])
        out["noise_mask"] = F.interpolate(m.float(), size=size, mode="bilinear")
    return out


# -- Scale Image to Total Pixels (ComfyUI's ImageScaleToTotalPixels) ---------------------------

#: ComfyUI's image scaling methods (comfy.utils.common_upscale, bislerp aside), its order.
COMFY_IMAGE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")


def total_pixels_size(w: int, h: int, megapixels: float, steps: int) -> tuple[int, int]:
    """ComfyUI's ImageScaleToTotalPixels size: the factor that gives ``megapixels`` x 1024^2
    pixels, each side rounded (Python's round) to a multiple of ``steps``."""
    import math

    scale_by = math.sqrt(megapixels * 1024 * 1024 / (w * h))
    return round(w * scale_by / steps) * steps, round(h * scale_by / steps) * steps


def comfy_resize(image: Any, size: tuple[int, int], method: str) -> Any:
    """ComfyUI's common_upscale (crop disabled) of [B, H, W, C] to (width, height): torch's
    interpolate without antialiasing, or lanczos through 8-bit PIL images. Not clamped (its
    bicubic may overshoot 0..1, as ComfyUI's does)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    tw, th = size
    if method != "lanczos":
        return F.interpolate(image.movedim(-1, 1), size=(th, tw), mode=method).movedim(1, -1)
    from PIL import Image

    frames = []
    for frame in image.detach().cpu().float().numpy():
        pixels = np.clip(255.0 * frame, 0, 255).astype(np.uint8)
        if pixels.shape[-1] in (3, 4):
            chans = [pixels]
        else:  # one or two channels: PIL has no such mode, so each on its own
            chans = [pixels[..., k] for k in range(pixels.shape[-1])]
        out = [
            np.asarray(Image.fromarray(p).resize((tw, th), resample=Image.Resampling.LANCZOS))
            for p in chans
        ]
        arr = out[0] if len(out) == 1 else np.stack(out, -1)
        frames.append(arr.astype(np.float32) / 255.0)
    return torch.from_numpy(np.stack(frames)).to(image.device, image.dtype)


@node(
    "scale_image_total_pixels",
    title="Scale Image to Total Pixels",
    category="upscale",
    description=(
        "Resizes an image, keeping its aspect, to about a number of megapixels (x 1024 x 1024 "
        "pixels), each side a multiple of the resolution steps: ComfyUI's "
        "ImageScaleToTotalPixels, with its methods (no antialiasing; lanczos on 8-bit)."
    ),
    inputs=[
        InputSpec("image", T.IMAGE),
        InputSpec("upscale_method", T.CHOICE, default="nearest-exact", choices=COMFY_IMAGE_METHODS),
        InputSpec(
            "megapixels",
            T.FLOAT,
            default=1.0,
            min=0.01,
            max=16.0,
            step=0.01,
            tooltip="Target size in megapixels of 1024 x 1024 pixels (1.0: 1024 x 1024).",
        ),
        InputSpec(
            "resolution_steps",
            T.INT,
            default=1,
            min=1,
            max=256,
            tooltip="Each side a multiple of this (16 or 64 suit the models; 1: any size).",
        ),
    ],
    outputs=[OutputSpec("image", T.IMAGE)],
)
def scale_image_total_pixels(
    ctx, image: Any, upscale_method: str, megapixels: float, resolution_steps: int = 1
) -> Any:
    h, w = image.shape[1], image.shape[2]
    size = total_pixels_size(w, h, megapixels, resolution_steps)
    if min(size) < 1:
        raise NodeError(
            f"megapixels {megapixels} with resolution_steps {resolution_steps} gives a "
            f"{size[0]}x{size[1]} image from this {w}x{h} one: raise megapixels or lower "
            "resolution_steps"
        )
    return comfy_resize(image, size, upscale_method)
