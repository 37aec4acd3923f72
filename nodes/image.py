"""Images in and out: Load Image, Save Image, Preview Image."""

from __future__ import annotations

import json
import math
import re
import warnings
from collections import deque
from pathlib import Path
from typing import Any

from studio.errors import NodeError, StudioError
from studio.fsutil import regular_file
from studio.graph.spec import InputSpec, OutputSpec, node
from studio.graph.types import ValueType as T
from studio.modelfiles import RESOURCES

#: Example images shipped with Studio (the default workflows load them by name).
EMBEDDED_IMAGES = RESOURCES / "images"

#: The most pixels an image may have to be decoded (as many as 8192 x 8192: a 45 Mpx
#: camera's photos fit), checked from the file's header first. A PNG of one colour that
#: size is a few kB on disk, and Load Image needs ~24 bytes a pixel (RGB) to ~44 (RGBA)
#: while it converts one: 1.6 to 3 GiB at this limit.
MAX_IMAGE_PIXELS = 8192 * 8192
#: The largest image file Load Image reads or hashes (an uncompressed 8192 x 8192 RGBA
#: TIFF is 256 MiB).
MAX_IMAGE_FILE_BYTES = 512 * 2**20

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")

#: A1111's names for the samplers, for the PNG's ``parameters`` text.
A1111_SAMPLER_NAMES = {
    "euler": "Euler",
    "euler_ancestral": "Euler a",
    "heun": "Heun",
    "dpm_2": "DPM2",
    "dpm_2_ancestral": "DPM2 a",
    "lms": "LMS",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2s_ancestral": "DPM++ 2S a",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_3m_sde": "DPM++ 3M SDE",
    "dpmpp_sde": "DPM++ SDE",
    "ddim": "DDIM",
    "ddpm": "DDPM",
    "pndm": "PLMS",
    "deis": "DEIS",
    "uni_pc": "UniPC",
    "lcm": "LCM",
    "ipndm": "iPNDM",
}


def inside_folder(folder: Path | str, name: str | Path) -> Path:
    """``folder / name``, for a relative ``name`` that must stay inside ``folder``.

    Raises NodeError when ``..`` or a symbolic link leads out of the folder.
    """
    base = Path(folder).expanduser()
    joined = base / name
    root = base.resolve()
    if not joined.resolve().is_relative_to(root):
        raise NodeError(
            f"image {str(name)!r} leads out of the folder it is relative to ({base}); "
            "name a file inside that folder, or give an absolute path"
        )
    return joined


#: ComfyUI's folder annotations after an image name (``ComfyUI_00001_.png [output]``).
_ANNOTATION = re.compile(r"(.+?) \[(input|output|temp)\]")


def split_annotation(name: str) -> tuple[str, str | None]:
    """``name`` without ComfyUI's folder annotation, and the folder it names (``input``,
    ``output``, ``temp``) or None."""
    m = _ANNOTATION.fullmatch(name)
    return (m.group(1), m.group(2)) if m else (name, None)


def resolve_image_path(
    name: str, input_folder: Path | str, output_folder: Path | str | None = None
) -> Path:
    """Where Load Image finds ``name``: a path as it is; a relative name in the input
    folder (``settings.input_path``), else among the example images shipped in
    ``resources/images`` (as the embedded models are found beside the user's). A name
    found nowhere gives its place in the input folder. ComfyUI's ``name [output]`` is a
    name in ``output_folder`` (``settings.output_path``; Load Image From Outputs),
    ``name [input]`` one in the input folder. A relative name that leads out of its
    folder raises NodeError."""
    name, folder = split_annotation(name)
    if folder == "temp":
        raise NodeError(
            f"image {name!r} is in ComfyUI's temp folder (previews it does not keep): save "
            "it and load it from the output or input folder"
        )
    p = Path(name).expanduser()
    if p.is_absolute():
        return p
    if folder == "output":
        if output_folder is None:
            raise NodeError(f"image {name!r} names the output folder, which is not known here")
        return inside_folder(output_folder, p)
    user = inside_folder(input_folder, p)
    if user.is_file():
        return user
    example = inside_folder(EMBEDDED_IMAGES, p)
    return example if example.is_file() else user


def checked_image_file(
    name: str, input_folder: Path | str, output_folder: Path | str | None = None
) -> Path:
    """The image file Load Image reads for ``name``, once it is known to be a regular file
    of a sane size: what both its fingerprint and its run read, so neither ever opens a
    device, a pipe or a file outside the folder a relative name is relative to."""
    if not name:
        raise NodeError("no image chosen")
    p = resolve_image_path(name, input_folder, output_folder)
    if not p.exists():
        plain, folder = split_annotation(name)
        absolute = Path(plain).expanduser().is_absolute()
        where = "" if absolute or folder == "output" else f" (nor in {EMBEDDED_IMAGES})"
        raise NodeError(f"image file not found: {p}{where}")
    try:
        regular_file(p, what="image file", max_bytes=MAX_IMAGE_FILE_BYTES)
    except StudioError as exc:
        raise NodeError(f"image {name!r}: {exc}") from None
    return p


def image_path(ctx_settings: Any, name: str) -> Path:
    output = getattr(ctx_settings, "output_path", None)
    return checked_image_file(name, ctx_settings.input_path, output)


def _image_fingerprint(params: dict[str, Any], ctx: Any) -> str:
    # The same file the node will read, so a user image that appears with an example's
    # name re-runs the node.
    path = image_path(ctx.settings, params.get("image", ""))
    return ctx.files.of(path, ctx.check_interrupt)


def _too_large(what: str, pixels: str) -> NodeError:
    side = math.isqrt(MAX_IMAGE_PIXELS)
    return NodeError(
        f"{what} is {pixels}; Studio reads images of at most {MAX_IMAGE_PIXELS:,} pixels "
        f"(as many as {side}x{side}). Scale it down first"
    )


def open_image(source: Any, what: str) -> Any:
    """``PIL.Image.open(source)``, refused with a NodeError naming ``what`` when the header
    gives more than :data:`MAX_IMAGE_PIXELS`, before any pixel is decoded. Use it as a
    context manager, as ``Image.open``; its decoding errors pass through."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            # Studio's own limit decides below; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(source)
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_large(
            what, f"{int(found[1]):,} pixels" if found else "too large to decode"
        ) from None
    width, height = im.size
    if width * height > MAX_IMAGE_PIXELS:
        im.close()
        raise _too_large(what, f"{width}x{height} ({width * height:,} pixels)")
    return im


@node(
    "load_image",
    title="Load Image",
    category="image",
    description=(
        "Loads a PNG, JPEG or WebP image. Its transparency becomes the mask (transparent = 1), "
        "unless a mask is painted on it in the app."
    ),
    inputs=[
        InputSpec(
            "image",
            T.STRING,
            default="",
            file_kind="image",
            tooltip=(
                "The image file: a path, or a name in the input folder or among the "
                "example images shipped with Studio."
            ),
        ),
        InputSpec(
            "mask",
            T.STRING,
            default="",
            file_kind="mask",
            tooltip=(
                "A mask painted in the app (a PNG, base64), kept inside the workflow; "
                "when set it is the mask output instead of the transparency."
            ),
        ),
    ],
    outputs=[
        OutputSpec("image", T.IMAGE),
        OutputSpec(
            "mask",
            T.MASK,
            tooltip="The painted mask if there is one, else 1 where the image is transparent.",
        ),
    ],
    fingerprint=_image_fingerprint,
)
def load_image(ctx, image: str, mask: str = "") -> tuple:
    import numpy as np
    import torch
    from PIL import ImageOps, UnidentifiedImageError

    path = image_path(ctx.settings, image)
    try:
        with open_image(path, f"image {image!r}: {path.name}") as im:
            im.seek(0)
            im = ImageOps.exif_transpose(im)
            has_alpha = im.mode in ("RGBA", "LA", "PA") or (
                im.mode == "P" and "transparency" in im.info
            )
            rgba = im.convert("RGBA") if has_alpha else im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise NodeError(f"cannot read image {path.name}: {exc}") from None
    # In place and without a copy where there is no alpha: a large image's peak memory.
    arr = np.asarray(rgba, dtype=np.float32)
    arr /= 255.0
    pixels = torch.from_numpy(np.ascontiguousarray(arr[..., :3]))[None]
    if mask:
        return pixels, decode_mask(mask, (arr.shape[1], arr.shape[0]))
    if has_alpha:
        alpha_mask = 1.0 - torch.from_numpy(arr[..., 3].copy())[None]
    else:
        alpha_mask = torch.zeros(pixels.shape[:3], dtype=torch.float32)
    return pixels, alpha_mask


def decode_mask(data: str, size: tuple[int, int]) -> Any:
    """A painted mask (base64 PNG, white = 1) as a MASK [1, H, W]; it must match ``size``."""
    import base64
    import binascii
    import io

    import numpy as np
    import torch
    from PIL import UnidentifiedImageError

    try:
        raw = base64.b64decode(data, validate=True)
        with open_image(io.BytesIO(raw), "the painted mask") as im:
            # Compared before decoding: a mask's size can only be its image's.
            if im.size != size:
                raise NodeError(
                    f"the painted mask is {im.size[0]}x{im.size[1]} but the image is "
                    f"{size[0]}x{size[1]}; paint the mask again for this image"
                )
            im.load()
            gray = im.getchannel("A") if im.mode in ("RGBA", "LA") else im.convert("L")
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError) as exc:
        raise NodeError(f"the painted mask cannot be read ({exc}); paint it again") from None
    arr = np.asarray(gray, dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy())[None]


def to_pil(images: Any) -> list[Any]:
    """IMAGE [B, H, W, C] in 0..1 -> a list of PIL images."""
    from PIL import Image

    arr = (images.detach().float().clamp(0, 1) * 255).round().to(dtype=__import__("torch").uint8)
    arr = arr.cpu().numpy()
    out = []
    for a in arr:
        if a.shape[-1] == 1:
            out.append(Image.fromarray(a[..., 0], "L"))
        else:
            out.append(Image.fromarray(a[..., :3], "RGB"))
    return out


@node(
    "preview_image",
    title="Preview Image",
    category="image",
    description="Shows images in the viewer without saving them.",
    inputs=[InputSpec("images", T.IMAGE)],
    output_node=True,
)
def preview_image(ctx, images: Any) -> dict:
    ctx.show(to_pil(images))
    return {}


@node(
    "save_image",
    title="Save Image",
    category="image",
    description=(
        "Saves images as PNG, JPEG or WebP files in the output folder. By default each "
        "carries the workflow and the generation parameters (dropping a PNG back in "
        "restores the workflow), a signed C2PA manifest saying it was generated and with "
        "which models, and an invisible watermark; the settings choose what goes in."
    ),
    inputs=[
        InputSpec("images", T.IMAGE),
        InputSpec(
            "filename_prefix",
            T.STRING,
            default="Studio",
            tooltip="File names start with this; a/b puts files in subfolder a of the output folder.",
        ),
        InputSpec(
            "format",
            T.CHOICE,
            default="png",
            choices=("png", "jpeg", "webp"),
            tooltip=(
                "PNG keeps every pixel and the whole workflow; JPEG and WebP are smaller "
                "and carry the generation parameters (as A1111 writes them) but not the "
                "workflow."
            ),
        ),
        InputSpec(
            "quality",
            T.INT,
            default=95,
            min=1,
            max=100,
            tooltip="JPEG and WebP quality (higher: larger files, fewer artefacts).",
        ),
    ],
    output_node=True,
)
def save_image(
    ctx, images: Any, filename_prefix: str = "Studio", format: str = "png", quality: int = 95
) -> dict:
    from studio.fsutil import write_numbered
    from studio.provenance import SUFFIX, encode_image, recipe_of

    if format not in SUFFIX:
        raise NodeError(f"format {format!r} is not one of {', '.join(SUFFIX)}")
    folder, stem = _output_target(Path(ctx.settings.output_path), filename_prefix)
    pils = to_pil(images)
    workflow_json = _workflow_json(ctx)
    recipe = recipe_of(
        ctx.workflow, ctx.node_id, getattr(ctx, "model_files", None), getattr(ctx, "files", None)
    )
    saved = []
    for index, im in enumerate(pils):
        texts = {"studio_workflow": workflow_json}
        texts["parameters"] = generation_parameters(ctx, im.size, index)
        data = encode_image(
            im,
            format,
            settings=ctx.settings,
            recipe=recipe,
            texts=texts,
            quality=quality,
            title=f"{stem}{SUFFIX[format]}",
        )
        # Never an empty, partial or replaced file, even when the process is killed.
        target = write_numbered(folder, stem, SUFFIX[format], data)
        saved.append(str(target))
        im.info["studio_path"] = str(target)  # where it went (the CLI lists saved files)
    ctx.run_info.setdefault("saved", []).extend(saved)
    ctx.show(pils)
    return {}


def _output_target(root: Path, prefix: str) -> tuple[Path, str]:
    prefix = (prefix or "Studio").replace("\\", "/").strip("/")
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") for p in parts) or not parts:
        raise NodeError(f"filename_prefix {prefix!r} must stay inside the output folder")
    folder = root.joinpath(*parts[:-1])
    folder.mkdir(parents=True, exist_ok=True)
    return folder, parts[-1]


def _workflow_json(ctx: Any) -> str:
    if ctx.workflow is None:
        return ""
    from studio.graph.fileformat import dumps_workflow

    try:
        return dumps_workflow(ctx.workflow)
    except Exception as exc:  # never lose an image over its metadata, but say so
        import logging

        logging.getLogger("studio").warning("the image is saved without its workflow: %s", exc)
        return ""


# -- the A1111-style parameters text --------------------------------------------------------


def _upstream(wf: Any, start: str, type_id: str | tuple[str, ...]) -> Any:
    """The nearest node of ``type_id`` (or of one of them) feeding ``start`` (breadth
    first), or None."""
    wanted = (type_id,) if isinstance(type_id, str) else type_id
    seen, queue = {start}, deque([start])
    while queue:
        cur = queue.popleft()
        for lk in wf.links_into(cur):
            if lk.source in seen:
                continue
            seen.add(lk.source)
            src = wf.get_node(lk.source)
            if src.type in wanted:
                return src
            queue.append(lk.source)
    return None


def _param(wf: Any, n: Any, name: str, default: Any = None) -> Any:
    lk = wf.link_into(n.id, name)
    if lk is not None:
        src = wf.get_node(lk.source)
        return src.params.get("value", default) if src.type.startswith("primitive") else default
    if name in n.params:
        return n.params[name]
    spec = wf.spec_of(n)
    inp = spec.input(name) if spec else None
    return inp.default if inp is not None and inp.default is not None else default


def _quote(v: Any) -> str:
    s = str(v)
    return json.dumps(s) if any(c in s for c in ",:\n") else s


def generation_parameters(ctx: Any, size: tuple[int, int], index: int = 0) -> str:
    """A1111's ``parameters`` text for an image, from the Sampler feeding this node."""
    wf = ctx.workflow
    if wf is None:
        return ""
    try:
        sampler = _upstream(wf, ctx.node_id, ("sampler", "sampler_advanced"))
    except Exception:
        return ""
    if sampler is None:
        return ""
    texts = {}
    clip_skip = 1
    for which in ("positive", "negative"):
        lk = wf.link_into(sampler.id, which)
        enc = None
        if lk is not None:
            src = wf.get_node(lk.source)
            enc = src if src.type == "text_encode" else _upstream(wf, src.id, "text_encode")
        texts[which] = _param(wf, enc, "text", "") if enc is not None else ""
        if which == "positive" and enc is not None:
            clip_skip = int(_param(wf, enc, "clip_skip", 1) or 1)
    seed = ctx.run_info.get("seeds", {}).get(sampler.id, _param(wf, sampler, "seed", 0))
    name = _param(wf, sampler, "sampler", "euler")
    sched = _param(wf, sampler, "scheduler", "normal")
    fields: list[tuple[str, Any]] = [
        ("Steps", _param(wf, sampler, "steps", 20)),
        ("Sampler", A1111_SAMPLER_NAMES.get(name, name)),
    ]
    if sched != "normal":
        fields.append(("Schedule type", str(sched).replace("_", " ").capitalize()))
    fields += [
        ("CFG scale", _param(wf, sampler, "cfg", 7.0)),
        ("Seed", seed),
        ("Size", f"{size[0]}x{size[1]}"),
    ]
    ckpt = _upstream(wf, sampler.id, "load_checkpoint")
    if ckpt is not None:
        model = str(_param(wf, ckpt, "ckpt_name", ""))
        stem = model.replace("\\", "/").rsplit("/", 1)[-1]
        for suffix in (".safetensors", ".ckpt", ".pt", ".sft"):
            stem = stem.removesuffix(suffix)
        fields.append(("Model", stem))
    denoise = _param(wf, sampler, "denoise", 1.0)
    if denoise is not None and float(denoise) < 1.0:
        fields.append(("Denoising strength", denoise))
    if clip_skip > 1:
        fields.append(("Clip skip", clip_skip))
    if index:
        fields.append(("Batch pos", index))
    fields.append(("Version", "Studio"))
    lines = [str(texts["positive"])]
    if texts["negative"]:
        lines.append(f"Negative prompt: {texts['negative']}")
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in fields))
    return "\n".join(lines)


# -- Pad Image for Outpainting (ComfyUI's ImagePadForOutpaint) -------------------------------


def _pad_input(name: str, tooltip: str) -> InputSpec:
    return InputSpec(name, T.INT, default=0, min=0, max=16384, step=8, tooltip=tooltip)


def outpaint_feather(
    height: int, width: int, left: int, top: int, right: int, bottom: int, feathering: int
) -> Any:
    """The mask over the original image's area: ``((feathering - d) / feathering) ** 2`` within
    ``feathering`` pixels of a padded side (d: the distance to it), 0 elsewhere. Sides without
    padding do not feather, and nothing feathers unless ``2 * feathering`` is less than the
    image's width and height (ComfyUI's rule)."""
    import torch

    t = torch.zeros((height, width), dtype=torch.float32)
    if not (feathering > 0 and 2 * feathering < height and 2 * feathering < width):
        return t
    i = torch.arange(height, dtype=torch.float64)[:, None].expand(height, width)
    j = torch.arange(width, dtype=torch.float64)[None, :].expand(height, width)
    far_h = torch.full_like(i, float(height))
    far_w = torch.full_like(j, float(width))
    d = torch.minimum(
        torch.minimum(i if top else far_h, height - i if bottom else far_h),
        torch.minimum(j if left else far_w, width - j if right else far_w),
    )
    v = (feathering - d) / feathering
    return torch.where(d < feathering, v * v, 0.0).to(torch.float32)


@node(
    "pad_for_outpaint",
    title="Pad Image for Outpainting",
    category="image",
    description=(
        "Adds room around an image to paint into: the new border is mid grey and the mask "
        "marks it (1), fading into the image's edge over 'feathering' pixels so the new "
        "content blends in. Feed both to VAE Encode for Inpaint."
    ),
    inputs=[
        InputSpec("image", T.IMAGE, tooltip="The image to extend."),
        _pad_input("left", "Pixels added on the left."),
        _pad_input("top", "Pixels added at the top."),
        _pad_input("right", "Pixels added on the right."),
        _pad_input("bottom", "Pixels added at the bottom."),
        InputSpec(
            "feathering",
            T.INT,
            default=40,
            min=0,
            max=16384,
            tooltip=(
                "How far (pixels) the mask reaches into the image from each padded side, "
                "fading out. 0: a hard edge. Ignored when twice it exceeds the image's size."
            ),
        ),
    ],
    outputs=[OutputSpec("image", T.IMAGE), OutputSpec("mask", T.MASK)],
)
def pad_for_outpaint(
    ctx,
    image: Any,
    left: int = 0,
    top: int = 0,
    right: int = 0,
    bottom: int = 0,
    feathering: int = 40,
) -> tuple:
    import torch

    if min(left, top, right, bottom, feathering) < 0:
        raise NodeError("padding and feathering cannot be negative")
    b, h, w, c = image.shape
    out = torch.full((b, h + top + bottom, w + left + right, c), 0.5, dtype=torch.float32)
    out[:, top : top + h, left : left + w, :] = image
    mask = torch.ones((1, h + top + bottom, w + left + right), dtype=torch.float32)
    mask[0, top : top + h, left : left + w] = outpaint_feather(
        h, w, left, top, right, bottom, feathering
    )
    return out, mask


@node(
    "image_blur",
    title="Image Blur",
    category="image",
    description=(
        "Blurs the image with a Gaussian kernel of 2 x radius + 1 pixels whose sigma is in "
        "units of the radius (1: the kernel's edge is one sigma out), edges mirrored: "
        "ComfyUI's ImageBlur."
    ),
    inputs=[
        InputSpec("image", T.IMAGE),
        InputSpec(
            "blur_radius",
            T.INT,
            default=1,
            min=1,
            max=31,
            tooltip="Pixels the blur reaches on each side.",
        ),
        InputSpec(
            "sigma",
            T.FLOAT,
            default=1.0,
            min=0.1,
            max=10.0,
            step=0.1,
            tooltip="Spread of the kernel relative to its radius: small keeps the image sharp.",
        ),
    ],
    outputs=[OutputSpec("image", T.IMAGE)],
)
def image_blur(ctx, image: Any, blur_radius: int = 1, sigma: float = 1.0) -> Any:
    if blur_radius == 0:
        return image
    kernel = blur_kernel(2 * blur_radius + 1, sigma)
    return _mirrored_filter(image, kernel, blur_radius, "blur_radius").contiguous()


def _mirrored_filter(image: Any, kernel: Any, r: int, param: str) -> Any:
    """``image`` (b, h, w, c) convolved per channel with ``kernel`` (2r + 1 square), its
    edges mirrored, as ComfyUI's blur and sharpen do; a radius the image cannot mirror is a
    clear error naming ``param``."""
    import torch.nn.functional as F

    if r >= min(image.shape[1], image.shape[2]):
        raise NodeError(
            f"{param} {r} needs an image larger than {r} pixels on each side "
            f"(this one is {image.shape[2]}x{image.shape[1]})"
        )
    channels = image.shape[-1]
    kernel = kernel.repeat(channels, 1, 1).unsqueeze(1).to(image)
    x = F.pad(image.movedim(-1, 1), (r, r, r, r), mode="reflect")
    # Zero-padded again and cut back, as ComfyUI does: the same convolution, so the same
    # float rounding (the cut removes every zero-padded pixel).
    x = F.conv2d(x, kernel, padding=r, groups=channels)[:, :, r:-r, r:-r]
    return x.movedim(1, -1)


def blur_kernel(size: int, sigma: float) -> Any:
    """ComfyUI's 2-D Gaussian: distances from -1 to 1 across the kernel, summing to 1."""
    import torch

    ax = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    d = torch.sqrt(xx * xx + yy * yy)
    g = torch.exp(-(d * d) / (2.0 * sigma * sigma))
    return g / g.sum()


@node(
    "image_sharpen",
    title="Image Sharpen",
    category="image",
    description=(
        "Sharpens the image: each pixel pushed away from its Gaussian-weighted surroundings "
        "(2 x radius + 1 pixels, sigma in units of the radius) by alpha x 10, edges mirrored, "
        "clamped to 0..1: ComfyUI's ImageSharpen."
    ),
    inputs=[
        InputSpec("image", T.IMAGE),
        InputSpec(
            "sharpen_radius",
            T.INT,
            default=1,
            min=1,
            max=31,
            tooltip="Pixels around each pixel it is compared with, on each side.",
        ),
        InputSpec(
            "sigma",
            T.FLOAT,
            default=1.0,
            min=0.1,
            max=10.0,
            step=0.01,
            tooltip="Spread of the surroundings' weights relative to the radius.",
        ),
        InputSpec(
            "alpha",
            T.FLOAT,
            default=1.0,
            min=0.0,
            max=5.0,
            step=0.01,
            tooltip="Strength (0: unchanged).",
        ),
    ],
    outputs=[OutputSpec("image", T.IMAGE)],
)
def image_sharpen(
    ctx, image: Any, sharpen_radius: int = 1, sigma: float = 1.0, alpha: float = 1.0
) -> Any:
    import torch

    r = sharpen_radius
    if r == 0:
        return image
    # ComfyUI's kernel: the Gaussian times -10 alpha, its centre raised so the sum is 1.
    kernel = blur_kernel(2 * r + 1, sigma) * -(alpha * 10)
    kernel[r, r] = kernel[r, r] - kernel.sum() + 1.0
    return torch.clamp(_mirrored_filter(image, kernel, r, "sharpen_radius"), 0, 1).contiguous()


#: ImageQuantize's dithers: none, Floyd-Steinberg error diffusion, ordered Bayer patterns.
QUANTIZE_DITHERS = ("none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16")


def bayer_offsets(order: int) -> Any:
    """ComfyUI's normalized Bayer matrix for an ``order`` x ``order`` pattern: threshold
    offsets in (-0.5, 0.5), built from the 1 x 1 zero matrix by its recursion (float32)."""
    import numpy as np

    m = np.zeros((1, 1), np.float32)
    for n in range(1, int(math.log2(order)) + 1):
        q = 4**n
        m = q * m
        m = np.block([[m - 1.5, m + 0.5], [m + 1.5, m - 0.5]]) / q
    return m


@node(
    "image_quantize",
    title="Quantize Image",
    category="image",
    description=(
        "Reduces the image to at most `colors` colours (Pillow's palette of the image), with "
        "no dithering, Floyd-Steinberg error diffusion or an ordered Bayer pattern: "
        "ComfyUI's ImageQuantize."
    ),
    inputs=[
        InputSpec("image", T.IMAGE),
        InputSpec(
            "colors",
            T.INT,
            default=256,
            min=1,
            max=256,
            tooltip="The most colours the picture keeps.",
        ),
        InputSpec(
            "dither",
            T.CHOICE,
            default="none",
            choices=QUANTIZE_DITHERS,
            tooltip="How the in-between shades are drawn: not at all, by spreading the error "
            "to neighbours (floyd-steinberg), or by a regular pattern of that size (bayer-N).",
        ),
    ],
    outputs=[OutputSpec("image", T.IMAGE)],
)
def image_quantize(ctx, image: Any, colors: int = 256, dither: str = "none") -> Any:
    import numpy as np
    import torch
    from PIL import Image

    if image.shape[-1] != 3:
        raise NodeError(f"Quantize Image takes an RGB image, not {image.shape[-1]} channels")
    out = torch.zeros_like(image)
    for b in range(image.shape[0]):
        # ComfyUI's 8 bits: truncated, not rounded
        pixels = (image[b] * 255).to(torch.uint8).cpu().numpy()
        im = Image.fromarray(pixels)
        palette = im.quantize(colors=colors)  # a palette of the image itself
        if dither.startswith("bayer-"):
            order = int(dither.split("-")[1])
            spread = 2 * 256 / (len(palette.getpalette()) // 3)
            offsets = torch.from_numpy(spread * bayer_offsets(order) + 0.5)
            h, w = pixels.shape[:2]
            tiled = offsets.tile(math.ceil(h / order), math.ceil(w / order))[:h, :w, None]
            shifted = (torch.from_numpy(pixels.astype(np.float32)) + tiled).clamp(0, 255)
            im = Image.fromarray(shifted.to(torch.uint8).numpy())
            picked = im.quantize(palette=palette, dither=Image.Dither.NONE)
        else:
            how = Image.Dither.FLOYDSTEINBERG if dither == "floyd-steinberg" else Image.Dither.NONE
            picked = im.quantize(palette=palette, dither=how)
        rgb = np.asarray(picked.convert("RGB"), dtype=np.float32) / 255
        out[b] = torch.from_numpy(rgb).to(out.dtype)
    return out
