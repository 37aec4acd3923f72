"""Clean pictures, not only the right words: pixel figures beyond training.evaluate's.

- ``shape_iou(caption, image)``: the shape's mask (training.evaluate's outline: pixels over
  half-way from the background to the shape's colour, largest region) against the ideal
  shape the caption names, rendered at the centre and radius that fit it best (a small
  search around the mask's centroid and equal-area radius). Goal >= 0.85.
- ``one_colour(image)``: of the shape's inner pixels (the mask eroded by one pixel, so the
  anti-aliased rim does not count), the fraction within :data:`COLOUR_TOLERANCE` (RGB
  distance) of their mean colour. Blotches of another colour or coloured fringes lower it.
  An image is one colour when the fraction is >= 0.95.
- ``seed_variety(images)``: the mean absolute pixel difference (0-255) over all pairs of
  images (different seeds of one prompt), and the spread (standard deviation) of the
  shapes' centroids and equal-area radii; ``data_variety(caption)`` gives the same for the
  training data's renders of that caption.

The renderer's own images score IoU ~0.97 (the 64-pixel grid), one colour 100 %.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from training import data
from training.evaluate import _erode3, _largest_region

#: RGB distance from the shape's mean colour within which a pixel counts as the same colour.
COLOUR_TOLERANCE = 40.0
ONE_COLOUR_GOAL = 0.95
IOU_GOAL = 0.85


def shape_mask(image: np.ndarray) -> np.ndarray | None:
    """The shape's outline mask as training.evaluate.analyze finds it (None: no shape)."""
    from training.evaluate import SHAPE_THRESHOLD

    img = np.asarray(image)[..., :3]
    border = np.concatenate(
        [
            img[:2].reshape(-1, 3),
            img[-2:].reshape(-1, 3),
            img[:, :2].reshape(-1, 3),
            img[:, -2:].reshape(-1, 3),
        ]
    )
    bg_rgb = np.median(border.astype(np.float32), axis=0)
    pixels = img.astype(np.float32)
    dist = np.sqrt(((pixels - bg_rgb) ** 2).sum(-1))
    region = _largest_region((dist > SHAPE_THRESHOLD).astype(np.uint8))
    if region is None:
        return None
    inner = _erode3(region)
    pix = img[inner] if inner.sum() >= 4 else img[region]
    fg = np.median(pix.astype(np.float32), axis=0)
    axis = fg - bg_rgb
    t = ((pixels - bg_rgb) @ axis) / max(float(axis @ axis), 1e-6)
    outline = _largest_region((t > 0.5).astype(np.uint8)) if (t > 0.5).any() else None
    return region if outline is None else outline


def _ideal(shape: str, r: float, cx: float, cy: float, size: int) -> np.ndarray:
    scene = data.Scene(shape, "white", "black", None, None, r, cx, cy)
    return data.render(scene, size=size)[..., 0] > 128


#: Area of each ideal shape over r^2, r its "radius" as data.Scene holds it (triangles are
#: drawn with circumradius 1.3 r, so they are smaller than the circle of radius r).
AREA_FACTOR = {"circle": np.pi, "square": np.pi, "triangle": 3 * np.sqrt(3) / 4 * 1.3**2}


def best_iou(mask: np.ndarray, shape: str) -> float:
    """IoU of ``mask`` with the ideal ``shape`` placed and sized to fit it best: a
    coordinate search over centre and size from the mask's centroid and area."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    x = np.array(
        [(xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h, np.sqrt(mask.sum() / AREA_FACTOR[shape]) / w]
    )

    def iou(p: np.ndarray) -> float:
        ideal = _ideal(shape, p[2], p[0], p[1], w)
        union = (ideal | mask).sum()
        return float((ideal & mask).sum() / union) if union else 0.0

    best = iou(x)
    step = np.array([1.0 / w, 1.0 / w, 0.05 * x[2]])
    for _ in range(4):
        improved = True
        while improved:
            improved = False
            for k in range(3):
                for sign in (1, -1):
                    p = x.copy()
                    p[k] += sign * step[k]
                    v = iou(p)
                    if v > best:
                        best, x, improved = v, p, True
        step = step / 2
    return best


def shape_iou(caption: str, image: np.ndarray) -> float:
    """IoU of the image's shape mask with the best-fitting ideal of the caption's shape."""
    mask = shape_mask(image)
    if mask is None:
        return 0.0
    return best_iou(mask, data.parse_caption(caption)["shape"])


def one_colour(image: np.ndarray) -> float:
    """Fraction of the shape's inner pixels within COLOUR_TOLERANCE of their mean colour."""
    mask = shape_mask(image)
    if mask is None:
        return 0.0
    inner = _erode3(mask)
    if inner.sum() < 4:
        inner = mask
    pix = np.asarray(image)[..., :3][inner].astype(np.float32)
    d = np.sqrt(((pix - pix.mean(axis=0)) ** 2).sum(-1))
    return float((d <= COLOUR_TOLERANCE).mean())


def _geometry(image: np.ndarray) -> tuple[float, float, float] | None:
    mask = shape_mask(image)
    if mask is None:
        return None
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    return (xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h, float(np.sqrt(mask.sum() / np.pi)) / w


def seed_variety(images: Sequence[np.ndarray]) -> dict[str, float]:
    """How different images of one prompt are: mean pairwise absolute pixel difference
    (0-255), and the standard deviation of the shapes' centroid (x, y) and radius (fractions
    of the side)."""
    imgs = [np.asarray(i)[..., :3].astype(np.float32) for i in images]
    diffs = [float(np.abs(a - b).mean()) for a, b in itertools.combinations(imgs, 2)]
    geo = [g for g in (_geometry(i) for i in images) if g is not None]
    arr = np.array(geo) if geo else np.zeros((1, 3))
    return {
        "pairwise_diff": float(np.mean(diffs)) if diffs else 0.0,
        "cx_std": float(arr[:, 0].std()),
        "cy_std": float(arr[:, 1].std()),
        "r_std": float(arr[:, 2].std()),
    }


def data_variety(caption: str, n: int = 8, seed: int = 0) -> dict[str, float]:
    """seed_variety of ``n`` training-data renders of ``caption`` (its size and position words)."""
    want = data.parse_caption(caption)
    rng = np.random.default_rng(seed)
    combo = (want["color"], want["shape"], want["background"])
    scenes = [
        data.sample_scene(rng, combo, size_word=want["size"], position=want["position"])
        for _ in range(n)
    ]
    return seed_variety([data.render(s) for s in scenes])


def clean_figures(captions: Sequence[str], images: Sequence[np.ndarray]) -> dict[str, float]:
    """Mean IoU, the fraction of images at IoU >= 0.85, mean one-colour fraction and the
    fraction of images that are one colour (>= 0.95)."""
    ious = [shape_iou(c, i) for c, i in zip(captions, images, strict=True)]
    ones = [one_colour(i) for i in images]
    return {
        "iou_mean": round(float(np.mean(ious)), 4),
        "iou_median": round(float(np.median(ious)), 4),
        "iou_ok": round(float(np.mean([x >= IOU_GOAL for x in ious])), 4),
        "one_colour_mean": round(float(np.mean(ones)), 4),
        "one_colour_ok": round(float(np.mean([x >= ONE_COLOUR_GOAL for x in ones])), 4),
        "n": len(ious),
    }


__all__ = [
    "best_iou",
    "clean_figures",
    "data_variety",
    "one_colour",
    "seed_variety",
    "shape_iou",
    "shape_mask",
]
