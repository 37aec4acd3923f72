"""Stub node types for engine tests: no torch, they count their calls."""

from __future__ import annotations

from collections import Counter

from studio.errors import NodeError
from studio.graph.registry import Registry
from studio.graph.spec import InputSpec, NodeSpec, OutputSpec
from studio.graph.types import ValueType as T

CALLS: Counter[str] = Counter()


def _number(ctx, value: int) -> int:
    CALLS["number"] += 1
    return value


def _add(ctx, a: int, b: int = 0, offset: int = 0) -> int:
    CALLS["add"] += 1
    return a + b + offset


def _fail(ctx, a: int, message: str = "boom") -> int:
    CALLS["fail"] += 1
    raise NodeError(message)


def _slow(ctx, a: int, steps: int = 10) -> int:
    CALLS["slow"] += 1
    for i in range(steps):
        ctx.progress(i + 1, steps)
    return a


def _output(ctx, value: int, label: str = "") -> dict:
    CALLS["output"] += 1
    ctx.show([("image", value)])
    return {}


def _random(ctx, a: int) -> int:
    CALLS["random"] += 1
    return a


def _blob(ctx, size: int) -> bytes:
    CALLS["blob"] += 1
    return bytes(size)


def _blob_out(ctx, data: bytes) -> dict:
    CALLS["blob_out"] += 1
    ctx.show([len(data)])
    return {}


def _to_float(ctx, a: int) -> float:
    CALLS["to_float"] += 1
    return float(a)


SPECS = [
    NodeSpec(
        "number",
        "Number",
        "test",
        _number,
        inputs=(InputSpec("value", T.INT, default=1, min=-1000, max=10**9),),
        outputs=(OutputSpec("value", T.INT),),
    ),
    NodeSpec(
        "add",
        "Add",
        "test",
        _add,
        inputs=(
            InputSpec("a", T.INT, default=0),
            InputSpec("b", T.INT, default=0),
            InputSpec("offset", T.INT, default=0, min=-100, max=100),
        ),
        outputs=(OutputSpec("sum", T.INT),),
        description="adds numbers",
    ),
    NodeSpec(
        "fail",
        "Fail",
        "test",
        _fail,
        inputs=(InputSpec("a", T.INT, default=0), InputSpec("message", T.STRING, default="boom")),
        outputs=(OutputSpec("value", T.INT),),
    ),
    NodeSpec(
        "slow",
        "Slow",
        "test",
        _slow,
        inputs=(InputSpec("a", T.INT, default=0), InputSpec("steps", T.INT, default=10, min=1)),
        outputs=(OutputSpec("value", T.INT),),
    ),
    NodeSpec(
        "output",
        "Output",
        "test",
        _output,
        inputs=(InputSpec("value", T.INT, default=0), InputSpec("label", T.STRING, default="")),
        output_node=True,
    ),
    NodeSpec(
        "random",
        "Random",
        "test",
        _random,
        inputs=(InputSpec("a", T.INT, default=0),),
        outputs=(OutputSpec("value", T.INT),),
        deterministic=False,
    ),
    NodeSpec(
        "blob",
        "Blob",
        "test",
        _blob,
        inputs=(InputSpec("size", T.INT, default=10, min=0),),
        outputs=(OutputSpec("data", T.IMAGE),),
    ),
    NodeSpec(
        "blob_out",
        "Blob Output",
        "test",
        _blob_out,
        inputs=(InputSpec("data", T.IMAGE),),
        output_node=True,
    ),
    NodeSpec(
        "to_float",
        "To Float",
        "test",
        _to_float,
        inputs=(InputSpec("a", T.INT, default=0),),
        outputs=(OutputSpec("value", T.FLOAT),),
    ),
    NodeSpec(
        "choose",
        "Choose",
        "test",
        lambda ctx, mode: mode,
        inputs=(InputSpec("mode", T.CHOICE, choices=("fast", "slow"), default="fast"),),
        outputs=(OutputSpec("mode", T.STRING),),
    ),
]


def stub_registry() -> Registry:
    return Registry(SPECS)


def _paint(ctx, value: int) -> dict:
    from PIL import Image

    CALLS["paint"] += 1
    ctx.show([Image.new("RGB", (8, 8), (value % 256, 0, 0))])
    return {}


SPECS.append(
    NodeSpec(
        "paint",
        "Paint",
        "test",
        _paint,
        inputs=(InputSpec("value", T.INT, default=0),),
        output_node=True,
    )
)


def stub_specs() -> list[NodeSpec]:
    """Entry point of the stub node pack (the CLI tests install it on sys.path)."""
    return list(SPECS)
