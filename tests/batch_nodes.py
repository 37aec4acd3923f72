"""Node types for the batch tests (no torch): a slow step, a gate on a file, a model-file
param, and an output that paints its value."""

from __future__ import annotations

import time
from pathlib import Path

from studio.errors import NodeError
from studio.graph.registry import Registry
from studio.graph.spec import InputSpec, NodeSpec, OutputSpec
from studio.graph.types import ValueType as T


def _nap(ctx, value: int, ms: int = 0, gate: str = "") -> int:
    if gate and not Path(gate).exists():
        raise NodeError(f"the gate file {gate} is not there")
    time.sleep(ms / 1000)
    return value


def _paint(ctx, value: int, green: int = 0, seed: int = 0) -> dict:
    from PIL import Image

    ctx.show([Image.new("RGB", (8, 8), (value % 256, green % 256, 0))])
    return {}


def _model(ctx, ckpt: str) -> int:
    return 1


def _image_value(ctx, image: str) -> int:
    from PIL import Image

    path = Path(ctx.settings.input_path) / image
    with Image.open(path) as im:
        return im.convert("RGB").getpixel((0, 0))[0]


SPECS = [
    NodeSpec(
        "nap",
        "Nap",
        "test",
        _nap,
        inputs=(
            InputSpec("value", T.INT, default=0),
            InputSpec("ms", T.INT, default=0, min=0),
            InputSpec("gate", T.STRING, default=""),
        ),
        outputs=(OutputSpec("value", T.INT),),
    ),
    NodeSpec(
        "paint2",
        "Paint",
        "test",
        _paint,
        inputs=(
            InputSpec("value", T.INT, default=0),
            InputSpec("green", T.INT, default=0),
            InputSpec("seed", T.INT, default=0, seed=True),
        ),
        output_node=True,
    ),
    NodeSpec(
        "image_value",
        "Image Value",
        "test",
        _image_value,
        inputs=(InputSpec("image", T.STRING, default="", file_kind="image"),),
        outputs=(OutputSpec("value", T.INT),),
    ),
    NodeSpec(
        "model_user",
        "Model User",
        "test",
        _model,
        inputs=(InputSpec("ckpt", T.CHOICE, default="", file_kind="checkpoints"),),
        outputs=(OutputSpec("value", T.INT),),
    ),
]


def registry() -> Registry:
    return Registry(SPECS)


def specs() -> list[NodeSpec]:
    """Entry point of the batch test node pack."""
    return list(SPECS)
