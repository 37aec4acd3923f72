"""Procedural training data for studio-tiny: one shape on a plain background.

Every image is a pure function of a :class:`Scene`, and every scene a pure function of a
seed, so any batch can be regenerated exactly (``training_batch(seed, step, n)``), which is
what makes training resumable without storing a data set.

Caption grammar (one caption per scene)::

    a [small|large] <color> <shape> on a <color> background[, <position>]

The size word is optional (absent: either size), the position is optional (absent: anywhere).
Some colour x shape x background combinations are held out of training (``heldout.json``)
so adherence can be measured on combinations the model has never seen.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

#: The palette: caption word -> sRGB. Chosen far apart so a pixel statistic can tell them apart.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (30, 180, 40),
    "blue": (30, 60, 230),
    "yellow": (245, 220, 30),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "purple": (140, 40, 190),
    "orange": (250, 130, 20),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")

#: Radius (fraction of the image side) of the circle with the shape's area, per size word.
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.09, 0.13), "large": (0.20, 0.25)}
#: Gap kept between a shape and the image border (fraction of the side).
MARGIN = 0.02
#: Probability that a training caption names the size / the position.
P_SIZE_WORD = 0.75
P_POSITION_WORD = 0.75

HELDOUT_PATH = Path(__file__).resolve().parent / "heldout.json"
HELDOUT_SEED = 5
HELDOUT_COUNT = 20  # of 168 combinations: 11.9 %

_C = "|".join(COLOR_NAMES)
CAPTION_RE = re.compile(
    rf"^a (?:(?P<size>small|large) )?(?P<color>{_C}) (?P<shape>circle|square|triangle)"
    rf" on a (?P<background>{_C}) background(?:, (?P<position>left|right|top|bottom|center))?$"
)

Combo = tuple[str, str, str]  # (shape color, shape, background color)


@dataclass(frozen=True)
class Scene:
    """One image: what the caption says plus the exact geometry it was drawn with."""

    shape: str
    color: str
    background: str
    size_word: str | None  # None: the caption does not name the size
    position: str | None  # None: the caption does not name the position
    radius: float  # equal-area circle radius, fraction of the image side
    cx: float  # centroid, fraction of the image width
    cy: float  # centroid, fraction of the image height

    @property
    def size(self) -> str:
        """The size class the radius falls in (whether or not the caption names it)."""
        return "small" if self.radius <= SIZE_RANGES["small"][1] else "large"

    @property
    def caption(self) -> str:
        return make_caption(self.shape, self.color, self.background, self.size_word, self.position)


def make_caption(
    shape: str, color: str, background: str, size: str | None = None, position: str | None = None
) -> str:
    size_part = f"{size} " if size else ""
    pos_part = f", {position}" if position else ""
    return f"a {size_part}{color} {shape} on a {background} background{pos_part}"


def parse_caption(caption: str) -> dict[str, str | None]:
    """The attributes a caption asks for; raises ValueError if it is not in the grammar."""
    m = CAPTION_RE.match(caption.strip())
    if m is None:
        raise ValueError(f"caption not in the studio-tiny grammar: {caption!r}")
    return m.groupdict()


# ----------------------------------------------------------------------------- combinations


def all_combos() -> list[Combo]:
    return [(c, s, b) for c in COLOR_NAMES for s in SHAPES for b in COLOR_NAMES if b != c]


def choose_heldout(seed: int = HELDOUT_SEED, count: int = HELDOUT_COUNT) -> list[Combo]:
    """A seeded list of held-out combinations, spread so that no colour is held out often.

    Each shape colour and each background colour is held out at most 3 times, and each
    shape at most ``count // 3 + 1`` times, so every attribute is still well covered in
    training; only the particular triples are unseen.
    """
    rng = np.random.default_rng(seed)
    combos = all_combos()
    while True:
        picks = [combos[i] for i in rng.permutation(len(combos))[:count]]
        colors = [p[0] for p in picks]
        shapes = [p[1] for p in picks]
        bgs = [p[2] for p in picks]
        if (
            max(colors.count(c) for c in COLOR_NAMES) <= 3
            and max(bgs.count(c) for c in COLOR_NAMES) <= 3
            and max(shapes.count(s) for s in SHAPES) <= count // 3 + 1
        ):
            return sorted(picks)


@lru_cache(maxsize=1)
def heldout_combos() -> frozenset[Combo]:
    """The held-out combinations from ``heldout.json`` (the committed, fixed list)."""
    data = json.loads(HELDOUT_PATH.read_text())
    return frozenset(tuple(c) for c in data["combos"])


def train_combos() -> list[Combo]:
    held = heldout_combos()
    return [c for c in all_combos() if c not in held]


def write_heldout_file(path: Path = HELDOUT_PATH) -> None:
    combos = choose_heldout()
    data = {
        "about": "colour x shape x background combinations never shown in training "
        "(shape color, shape, background color); chosen by training.data.choose_heldout"
        f"(seed={HELDOUT_SEED}, count={HELDOUT_COUNT})",
        "combos": [list(c) for c in combos],
    }
    path.write_text(json.dumps(data, indent=1) + "\n")


# ----------------------------------------------------------------------------- geometry


def _extent(shape: str, r: float) -> tuple[float, float, float, float]:
    """Distances from the centroid to the left, right, top and bottom edges of the shape."""
    if shape == "circle":
        return r, r, r, r
    if shape == "square":
        h = r * math.sqrt(math.pi) / 2  # same area as the circle
        return h, h, h, h
    big = _triangle_circumradius(r)
    return big * math.sqrt(3) / 2, big * math.sqrt(3) / 2, big, big / 2


def _triangle_circumradius(r: float) -> float:
    # An equilateral triangle of the circle's area would be tall and pointy; 1.3 r keeps
    # large triangles inside the image at the "top"/"bottom" positions.
    return 1.3 * r


def _place(
    rng: np.random.Generator, shape: str, r: float, position: str | None
) -> tuple[float, float]:
    el, er, et, eb = _extent(shape, r)
    xlo, xhi = el + MARGIN, 1 - er - MARGIN
    ylo, yhi = et + MARGIN, 1 - eb - MARGIN

    def within(lo: float, hi: float, a: float, b: float) -> float:
        # a draw in [a, b] clamped to what fits; when nothing of [a, b] fits, the nearest fit
        a2, b2 = max(a, lo), min(b, hi)
        if a2 > b2:
            return lo if a < lo else hi
        return float(rng.uniform(a2, b2))

    if position is None:
        return float(rng.uniform(xlo, xhi)), float(rng.uniform(ylo, yhi))
    if position == "center":
        return within(xlo, xhi, 0.45, 0.55), within(ylo, yhi, 0.45, 0.55)
    mid_x, mid_y = within(xlo, xhi, 0.4, 0.6), within(ylo, yhi, 0.4, 0.6)
    if position == "left":
        return within(xlo, xhi, 0.0, 0.33), mid_y
    if position == "right":
        return within(xlo, xhi, 0.67, 1.0), mid_y
    if position == "top":
        return mid_x, within(ylo, yhi, 0.0, 0.33)
    if position == "bottom":
        return mid_x, within(ylo, yhi, 0.67, 1.0)
    raise ValueError(f"unknown position {position!r}")


def sample_scene(
    rng: np.random.Generator,
    combo: Combo,
    size_word: str | bool | None = True,
    position: str | bool | None = True,
) -> Scene:
    """A scene of ``combo``. ``size_word``/``position``: a word, None (absent), or True (draw)."""
    color, shape, background = combo
    if size_word is True:
        size_word = rng.choice(SIZES).item() if rng.random() < P_SIZE_WORD else None
    if position is True:
        position = rng.choice(POSITIONS).item() if rng.random() < P_POSITION_WORD else None
    size_class = size_word or rng.choice(SIZES).item()
    r = float(rng.uniform(*SIZE_RANGES[size_class]))
    cx, cy = _place(rng, shape, r, position)
    return Scene(shape, color, background, size_word, position, r, cx, cy)


def sample_scenes(rng: np.random.Generator, n: int, split: str = "train") -> list[Scene]:
    """``n`` scenes from the training combinations (``split="train"``) or the held-out ones."""
    combos = train_combos() if split == "train" else sorted(heldout_combos())
    idx = rng.integers(0, len(combos), size=n)
    return [sample_scene(rng, combos[i]) for i in idx]


def batch_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    """The generator for batch ``step`` of a run: a pure function of (seed, step, stream)."""
    return np.random.default_rng([seed, stream, step])


# ----------------------------------------------------------------------------- rendering


def render(scene: Scene, size: int = 64, supersample: int = 4, outline: float = 0.0) -> np.ndarray:
    """The scene as an ``size x size x 3`` uint8 array, anti-aliased by supersampling.

    ``outline`` > 0 draws the shape as an outline of that width (a fraction of the image
    side, drawn inwards from the filled shape's edge) instead of filled: what the
    studio-tiny-outline LoRA learns. The default draws exactly what it always did.
    """
    big = size * supersample
    img = Image.new("RGB", (big, big), COLORS[scene.background])
    draw = ImageDraw.Draw(img)
    cx, cy, r = scene.cx * big, scene.cy * big, scene.radius * big
    _draw_shape(draw, scene.shape, cx, cy, r, 0.0, COLORS[scene.color])
    if outline > 0:
        _draw_shape(draw, scene.shape, cx, cy, r, outline * big, COLORS[scene.background])
    if supersample > 1:
        img = img.resize((size, size), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8).copy()


def _draw_shape(draw, shape: str, cx: float, cy: float, r: float, inset: float, fill) -> None:
    """Draw ``shape`` (equal-area radius ``r``) shrunk so its edges move ``inset`` inwards."""
    if shape == "circle":
        ri = r - inset
        if ri > 0:
            draw.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=fill)
    elif shape == "square":
        h = r * math.sqrt(math.pi) / 2 - inset
        if h > 0:
            draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    else:
        # an equilateral triangle's inradius is half its circumradius
        big_r = _triangle_circumradius(r) - 2 * inset
        if big_r > 0:
            pts = [
                (cx + big_r * math.cos(a), cy - big_r * math.sin(a))
                for a in (
                    math.pi / 2,
                    math.pi / 2 + 2 * math.pi / 3,
                    math.pi / 2 + 4 * math.pi / 3,
                )
            ]
            draw.polygon(pts, fill=fill)


def render_highres(scene: Scene, size: int = 256) -> np.ndarray:
    """Ground truth for the x4 upscaler: the same scene drawn at 4x the 64-pixel size."""
    return render(scene, size=size)


def canny_map(image: np.ndarray, low: int = 100, high: int = 200) -> np.ndarray:
    """Canny edges of ``image`` as HxWx3 uint8, as controlnet-aux's CannyDetector gives them."""
    import cv2

    edges = cv2.Canny(np.ascontiguousarray(image), low, high)
    return np.repeat(edges[:, :, None], 3, axis=2)


def render_batch(scenes: list[Scene], size: int = 64) -> np.ndarray:
    """``N x size x size x 3`` uint8."""
    return np.stack([render(s, size) for s in scenes])


def training_batch(
    seed: int, step: int, n: int, size: int = 64, stream: int = 0
) -> tuple[np.ndarray, list[str]]:
    """Batch ``step`` of a run with ``seed``: images (N,H,W,3 uint8) and captions."""
    scenes = sample_scenes(batch_rng(seed, step, stream), n, "train")
    return render_batch(scenes, size), [s.caption for s in scenes]


def to_tensor(images: np.ndarray):  # -> torch.Tensor
    """uint8 NHWC -> float NCHW in [-1, 1] (what AutoencoderKL expects)."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def eval_scenes(n: int = 60, seed: int = 1234) -> list[Scene]:
    """A fixed list of held-out scenes whose captions name both size and position."""
    rng = np.random.default_rng(seed)
    combos = sorted(heldout_combos())
    out = []
    for i in range(n):
        combo = combos[i % len(combos)]
        k = i // len(combos)
        size, pos = SIZES[k % 2], POSITIONS[(i + k) % len(POSITIONS)]
        out.append(sample_scene(rng, combo, size_word=size, position=pos))
    return out


if __name__ == "__main__":
    write_heldout_file()
    print(f"wrote {HELDOUT_PATH}")
