"""Utility nodes: primitives that feed a value into several nodes."""

from __future__ import annotations

from studio.graph.spec import InputSpec, OutputSpec, node
from studio.graph.types import ValueType as T


@node(
    "primitive_int",
    title="Integer",
    category="utility",
    description="A whole number to feed into several nodes (a shared seed, a size).",
    inputs=[InputSpec("value", T.INT, default=0, tooltip="The number.")],
    outputs=[OutputSpec("value", T.INT)],
)
def primitive_int(ctx, value: int) -> int:
    return value


@node(
    "primitive_float",
    title="Float",
    category="utility",
    description="A number to feed into several nodes (a shared strength or cfg).",
    inputs=[InputSpec("value", T.FLOAT, default=0.0, step=0.01, tooltip="The number.")],
    outputs=[OutputSpec("value", T.FLOAT)],
)
def primitive_float(ctx, value: float) -> float:
    return value


@node(
    "primitive_string",
    title="Text",
    category="utility",
    description="Text to feed into several nodes (a shared prompt part).",
    inputs=[InputSpec("value", T.STRING, default="", multiline=True, tooltip="The text.")],
    outputs=[OutputSpec("value", T.STRING)],
)
def primitive_string(ctx, value: str) -> str:
    return value


@node(
    "primitive_boolean",
    title="Boolean",
    category="utility",
    description="On or off, to feed into several nodes (a shared switch).",
    inputs=[InputSpec("value", T.BOOLEAN, default=False, tooltip="On or off.")],
    outputs=[OutputSpec("value", T.BOOLEAN)],
)
def primitive_boolean(ctx, value: bool) -> bool:
    return bool(value)
