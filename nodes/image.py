"""Images in and out: Load Image, Save Image, Preview Image."""

from __future__ import annotations

import json
import os
from collections import deque
from pathlib import Path
from typing import Any

from studio.errors import NodeError
from studio.graph.spec import InputSpec, OutputSpec, node
from studio.graph.types import ValueType as T
from studio.modelfiles import RESOURCES

#: Example images shipped with Studio (the default workflows load them by name).
EMBEDDED_IMAGES = RESOURCES / "images"

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
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_3m_sde": "DPM++ 3M SDE",
    "dpmpp_sde": "DPM++ SDE",
    "ddim": "DDIM",
    "ddpm": "DDPM",
    "pndm": "PLMS",
    "deis": "DEIS",
    "uni_pc": "UniPC",
    "lcm": "LCM",
}


def resolve_image_path(name: str, input_folder: Path | str) -> Path:
    """Where Load Image finds ``name``: a path as it is; a relative name in the input
    folder (``settings.input_path``), else among the example images shipped in
    ``resources/images`` (as the embedded models are found beside the user's). A name
    found nowhere gives its place in the input folder."""
    p = Path(name).expanduser()
    if p.is_absolute():
        return p
    user = Path(input_folder) / p
    if user.is_file():
        return user
    example = EMBEDDED_IMAGES / p
    return example if example.is_file() else user


def image_path(ctx_settings: Any, name: str) -> Path:
    if not name:
        raise NodeError("no image chosen")
    p = resolve_image_path(name, ctx_settings.input_path)
    if not p.is_file():
        where = "" if Path(name).expanduser().is_absolute() else f" (nor in {EMBEDDED_IMAGES})"
        raise NodeError(f"image file not found: {p}{where}")
    return p


def _image_fingerprint(params: dict[str, Any], ctx: Any) -> str:
    # The same file the node will read, so a user image that appears with an example's
    # name re-runs the node.
    path = resolve_image_path(params.get("image", ""), ctx.settings.input_path)
    return ctx.files.of(path, ctx.check_interrupt)


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
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = image_path(ctx.settings, image)
    try:
        with Image.open(path) as im:
            im.seek(0)
            im = ImageOps.exif_transpose(im)
            has_alpha = im.mode in ("RGBA", "LA", "PA") or (
                im.mode == "P" and "transparency" in im.info
            )
            rgba = im.convert("RGBA") if has_alpha else im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise NodeError(f"cannot read image {path.name}: {exc}") from None
    arr = np.asarray(rgba, dtype=np.float32) / 255.0
    pixels = torch.from_numpy(arr[..., :3].copy())[None]
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
    from PIL import Image, UnidentifiedImageError

    try:
        raw = base64.b64decode(data, validate=True)
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            gray = im.getchannel("A") if im.mode in ("RGBA", "LA") else im.convert("L")
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError) as exc:
        raise NodeError(f"the painted mask cannot be read ({exc}); paint it again") from None
    if gray.size != size:
        raise NodeError(
            f"the painted mask is {gray.size[0]}x{gray.size[1]} but the image is "
            f"{size[0]}x{size[1]}; paint the mask again for this image"
        )
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
        "Saves images as PNG files in the output folder, with the workflow and the "
        "generation parameters inside, so dropping one back in restores the workflow."
    ),
    inputs=[
        InputSpec("images", T.IMAGE),
        InputSpec(
            "filename_prefix",
            T.STRING,
            default="Studio",
            tooltip="File names start with this; a/b puts files in subfolder a of the output folder.",
        ),
    ],
    output_node=True,
)
def save_image(ctx, images: Any, filename_prefix: str = "Studio") -> dict:
    import io

    from PIL.PngImagePlugin import PngInfo

    from studio.fsutil import atomic_write_bytes

    folder, stem = _output_target(Path(ctx.settings.output_path), filename_prefix)
    pils = to_pil(images)
    workflow_json = _workflow_json(ctx)
    saved = []
    for index, im in enumerate(pils):
        info = PngInfo()
        if workflow_json:
            info.add_text("studio_workflow", workflow_json)
        params = generation_parameters(ctx, im.size, index)
        if params:
            info.add_text("parameters", params)
        buf = io.BytesIO()
        im.save(buf, format="PNG", pnginfo=info, compress_level=4)
        target = _reserve(folder, stem)
        atomic_write_bytes(target, buf.getvalue())
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


def _reserve(folder: Path, stem: str) -> Path:
    # O_EXCL claims a name no other writer (or a second Studio) can also claim; the
    # atomic write then replaces the empty claim, so an existing file is never replaced.
    existing = [p.name for p in folder.glob(f"{stem}_*.png")]
    nums = []
    for name in existing:
        tail = name[len(stem) + 1 : -4]
        if tail.isdigit():
            nums.append(int(tail))
    i = max(nums, default=0) + 1
    while True:
        target = folder / f"{stem}_{i:05d}.png"
        try:
            fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            i += 1
            continue
        os.close(fd)
        return target


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


def _upstream(wf: Any, start: str, type_id: str) -> Any:
    """The nearest node of ``type_id`` feeding ``start`` (breadth first), or None."""
    seen, queue = {start}, deque([start])
    while queue:
        cur = queue.popleft()
        for lk in wf.links_into(cur):
            if lk.source in seen:
                continue
            seen.add(lk.source)
            src = wf.get_node(lk.source)
            if src.type == type_id:
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
        sampler = _upstream(wf, ctx.node_id, "sampler")
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
