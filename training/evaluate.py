"""Does an image show what its caption asks for? Simple pixel statistics, no learned judge.

The renderer's palette is known, so an image is read back as: the background colour (the
commonest palette colour along the border), the shape (the largest connected region that
differs from the background), its colour, its outline (pixels over half-way from the
background to the shape's colour), its centroid, its area, and which ideal shape of that
area and centroid overlaps the outline best (a region filling under 60 % of its bounding box
is a triangle).

``score(caption, image)`` says, per attribute, whether the image matches; ``adherence`` sums
that over many images. The lead's tests reuse these to check that nodes really act.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from training.data import COLOR_NAMES, COLORS, SIZE_RANGES, parse_caption

_PALETTE = np.array([COLORS[c] for c in COLOR_NAMES], dtype=np.float32)
#: A pixel belongs to the shape when it is at least this far (RGB distance) from the background.
SHAPE_THRESHOLD = 80.0
#: Radius (fraction of the side) between the small and the large range.
SIZE_SPLIT = (SIZE_RANGES["small"][1] + SIZE_RANGES["large"][0]) / 2
ATTRIBUTES = ("color", "background", "position", "shape", "size")


@dataclass
class Analysis:
    background: str
    color: str | None  # None: no shape found
    shape: str | None
    cx: float  # centroid as fractions of width / height (0.5 when no shape)
    cy: float
    area: float  # fraction of the image
    fill: float  # area / bounding-box area

    @property
    def radius(self) -> float:
        """Radius of the circle with the shape's area, as a fraction of the side."""
        return float(np.sqrt(self.area / np.pi))

    @property
    def size(self) -> str:
        return "small" if self.radius < SIZE_SPLIT else "large"


def nearest_colors(pixels: np.ndarray) -> np.ndarray:
    """Index into COLOR_NAMES of the nearest palette colour of each pixel (..., 3)."""
    d = ((pixels[..., None, :].astype(np.float32) - _PALETTE) ** 2).sum(-1)
    return d.argmin(-1)


def analyze(image: np.ndarray) -> Analysis:
    """Read an H x W x 3 uint8 image back into the attributes the captions talk about."""
    img = np.asarray(image)[..., :3]
    h, w = img.shape[:2]
    border = np.concatenate(
        [
            img[:2].reshape(-1, 3),
            img[-2:].reshape(-1, 3),
            img[:, :2].reshape(-1, 3),
            img[:, -2:].reshape(-1, 3),
        ]
    )
    bg_idx = int(np.bincount(nearest_colors(border), minlength=len(COLOR_NAMES)).argmax())
    # measured against the image's own border colour, so a slightly-off background still
    # separates from the shape
    bg_rgb = np.median(border.astype(np.float32), axis=0)
    pixels = img.astype(np.float32)
    dist = np.sqrt(((pixels - bg_rgb) ** 2).sum(-1))
    background = COLOR_NAMES[bg_idx]
    region = _largest_region((dist > SHAPE_THRESHOLD).astype(np.uint8))
    if region is None:
        return Analysis(background, None, None, 0.5, 0.5, 0.0, 0.0)
    # colour from the inner pixels: the anti-aliased rim mixes in the background
    inner = _erode3(region)
    pix = img[inner] if inner.sum() >= 4 else img[region]
    counts = np.bincount(nearest_colors(pix), minlength=len(COLOR_NAMES))
    color = COLOR_NAMES[int(counts.argmax())]
    # The outline: pixels more than half-way from the background to the shape's colour
    # (what anti-aliasing means), so a faint halo or a blurred rim does not count.
    fg = np.median(pix.astype(np.float32), axis=0)
    axis = fg - bg_rgb
    t = ((pixels - bg_rgb) @ axis) / max(float(axis @ axis), 1e-6)
    region = _largest_region((t > 0.5).astype(np.uint8)) if (t > 0.5).any() else region
    if region is None:
        return Analysis(background, color, None, 0.5, 0.5, 0.0, 0.0)
    ys, xs = np.nonzero(region)
    bw, bh = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    area = float(region.sum())
    fill = area / float(bw * bh)
    cx, cy = float(xs.mean() + 0.5), float(ys.mean() + 0.5)
    # a region filling under 60 % of its box is a triangle whatever the pixel grid did to it
    shape = "triangle" if fill < 0.6 else classify_region(region, cx, cy)
    return Analysis(
        background=background,
        color=color,
        shape=shape,
        cx=cx / w,
        cy=cy / h,
        area=area / float(h * w),
        fill=fill,
    )


def _erode3(region: np.ndarray) -> np.ndarray:
    """``region`` eroded by a 3x3 square (outside the image counts as inside the region, as
    cv2.erode's default border does)."""
    padded = np.pad(region.astype(bool), 1, constant_values=True)
    h, w = region.shape
    out = np.ones((h, w), bool)
    for dy in range(3):
        for dx in range(3):
            out &= padded[dy : dy + h, dx : dx + w]
    return out


def _largest_region(mask: np.ndarray) -> np.ndarray | None:
    try:
        import cv2
    except ImportError:  # the training machine may lack OpenCV: same result, in numpy
        return _largest_region_numpy(mask)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return None
    return labels == 1 + int(stats[1:, cv2.CC_STAT_AREA].argmax())


def _largest_region_numpy(mask: np.ndarray) -> np.ndarray | None:
    """The largest 8-connected region of ``mask`` (the first in raster order on a tie)."""
    h, w = mask.shape
    labels = np.zeros((h, w), np.int32)
    sizes = [0]
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if labels[y0, x0]:
            continue
        lab = len(sizes)
        labels[y0, x0] = lab
        stack, n = [(y0, x0)], 0
        while stack:
            y, x = stack.pop()
            n += 1
            for ny in (y - 1, y, y + 1):
                for nx in (x - 1, x, x + 1):
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                        labels[ny, nx] = lab
                        stack.append((ny, nx))
        sizes.append(n)
    if len(sizes) == 1:
        return None
    return labels == int(np.argmax(sizes[1:])) + 1


def classify_region(region: np.ndarray, cx: float, cy: float) -> str:
    """The shape whose ideal outline (same area, same centroid, the renderer's orientation)
    overlaps the region best (intersection over union)."""
    from training.data import SHAPES, Scene, render

    h, w = region.shape
    r = float(np.sqrt(region.sum() / np.pi)) / w
    best, best_iou = SHAPES[0], -1.0
    for shape in SHAPES:
        scene = Scene(shape, "white", "black", None, None, r, cx / w, cy / h)
        ideal = render(scene, size=w)[..., 0] > 128
        iou = (ideal & region).sum() / max((ideal | region).sum(), 1)
        if iou > best_iou:
            best, best_iou = shape, iou
    return best


def position_ok(position: str, cx: float, cy: float) -> bool:
    """Whether a centroid is in the part of the image a position word names."""
    if position == "left":
        return cx < 0.4
    if position == "right":
        return cx > 0.6
    if position == "top":
        return cy < 0.4
    if position == "bottom":
        return cy > 0.6
    if position == "center":
        return abs(cx - 0.5) < 0.12 and abs(cy - 0.5) < 0.12
    raise ValueError(f"unknown position {position!r}")


def score(caption: str, image: np.ndarray) -> dict[str, bool]:
    """Per attribute the caption names: does the image show it? (Only named attributes.)"""
    want = parse_caption(caption)
    got = analyze(image)
    out = {
        "color": got.color == want["color"],
        "background": got.background == want["background"],
        "shape": got.shape == want["shape"],
    }
    if want["position"]:
        out["position"] = got.color is not None and position_ok(want["position"], got.cx, got.cy)
    if want["size"]:
        out["size"] = got.color is not None and got.size == want["size"]
    return out


def adherence(captions: Sequence[str], images: Sequence[np.ndarray]) -> dict[str, float]:
    """Fraction of images matching each attribute, plus ``mean`` over color/background/
    position/shape and ``n`` (the number of images)."""
    hits: dict[str, list[bool]] = {a: [] for a in ATTRIBUTES}
    for cap, img in zip(captions, images, strict=True):
        for k, v in score(cap, img).items():
            hits[k].append(v)
    rates = {k: float(np.mean(v)) for k, v in hits.items() if v}
    main = [rates[k] for k in ("color", "background", "position", "shape") if k in rates]
    rates["mean"] = float(np.mean(main)) if main else 0.0
    rates["n"] = float(len(captions))
    return rates


# ----------------------------------------------------------------------------- sampling


def encode_prompts(tokenizer, text_encoder, prompts: Sequence[str]):
    import torch

    ids = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        return text_encoder(ids)[0]


def generate(
    unet,
    text_encoder,
    vae,
    tokenizer,
    captions: Sequence[str],
    seed: int = 0,
    steps: int = 20,
    guidance: float = 7.0,
    scheduler_config: dict | None = None,
) -> np.ndarray:
    """Images (N x 64 x 64 x 3 uint8) for ``captions`` with an Euler sampler and CFG.

    The noise comes from one CPU generator seeded with ``seed`` (drawn for the whole batch
    at once, as diffusers does for a batch).
    """
    import torch
    from diffusers import EulerDiscreteScheduler

    from training.models import SCHEDULER_CONFIG

    sched = EulerDiscreteScheduler.from_config(scheduler_config or SCHEDULER_CONFIG)
    sched.set_timesteps(steps)
    n = len(captions)
    cond = encode_prompts(tokenizer, text_encoder, captions)
    uncond = encode_prompts(tokenizer, text_encoder, [""]).expand(n, -1, -1)
    size = unet.config.sample_size
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(n, unet.config.in_channels, size, size, generator=g)
    latents = latents * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([latents, latents]), t)
            eps = unet(inp, t, encoder_hidden_states=torch.cat([uncond, cond])).sample
            e_u, e_c = eps.chunk(2)
            latents = sched.step(e_u + guidance * (e_c - e_u), t, latents).prev_sample
        img = vae.decode(latents / vae.config.scaling_factor).sample
    img = ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return img.permute(0, 2, 3, 1).numpy()


def evaluate_models(
    unet,
    text_encoder,
    vae,
    tokenizer,
    captions: Sequence[str],
    seeds: Sequence[int] = (0,),
    steps: int = 20,
    guidance: float = 7.0,
    batch: int = 64,
    scheduler_config: dict | None = None,
) -> dict[str, float]:
    images, caps = [], []
    for seed in seeds:
        for i in range(0, len(captions), batch):
            chunk = list(captions[i : i + batch])
            images.extend(
                generate(
                    unet,
                    text_encoder,
                    vae,
                    tokenizer,
                    chunk,
                    seed=seed + i,
                    steps=steps,
                    guidance=guidance,
                    scheduler_config=scheduler_config,
                )
            )
            caps.extend(chunk)
    return adherence(caps, images)


def evaluate_pipeline(
    pipe_fn: Callable[[str, int], np.ndarray], captions: Sequence[str], seeds: Sequence[int]
) -> dict[str, float]:
    """Adherence of any generator ``pipe_fn(caption, seed) -> H x W x 3 uint8``."""
    caps, images = [], []
    for seed in seeds:
        for cap in captions:
            caps.append(cap)
            images.append(pipe_fn(cap, seed))
    return adherence(caps, images)


def load_folder(path):
    """(unet, text_encoder, vae, tokenizer) of a diffusers folder such as studio-tiny's."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    p = str(path)
    return (
        UNet2DConditionModel.from_pretrained(p, subfolder="unet", local_files_only=True).eval(),
        CLIPTextModel.from_pretrained(p, subfolder="text_encoder", local_files_only=True).eval(),
        AutoencoderKL.from_pretrained(p, subfolder="vae", local_files_only=True).eval(),
        CLIPTokenizer.from_pretrained(f"{p}/tokenizer", model_max_length=77),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Print the adherence of a model folder on the held-out captions as JSON."""
    from pathlib import Path

    from training.common import run_report, script_parser

    default = Path(__file__).resolve().parent.parent / "resources/models/checkpoints/studio-tiny"
    ap = script_parser("python -m training.evaluate", main.__doc__)
    ap.add_argument("--model", default=str(default))
    ap.add_argument("--count", type=int, default=60, help="held-out captions")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cfg", type=float, nargs="+", default=[7.0, 1.0])
    ap.add_argument("--steps", type=int, default=20)
    return run_report(ap, argv, report)


def report(args) -> dict:
    from training.data import eval_scenes
    from training.models import folder_scheduler_config

    unet, te, vae, tok = load_folder(args.model)
    caps = [s.caption for s in eval_scenes(args.count)]
    out = {"model": args.model, "captions": len(caps), "seeds": args.seeds, "steps": args.steps}
    for cfg in args.cfg:
        rates = evaluate_models(
            unet,
            te,
            vae,
            tok,
            caps,
            seeds=args.seeds,
            steps=args.steps,
            guidance=cfg,
            scheduler_config=folder_scheduler_config(args.model),
        )
        out[f"cfg {cfg:g}"] = {k: round(v, 4) for k, v in rates.items()}
    return out


if __name__ == "__main__":
    sys.exit(main())
