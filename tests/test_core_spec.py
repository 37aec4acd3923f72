"""A node spec is refused at registration when its execute function cannot take its inputs."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

import nodes
from studio.graph.spec import InputSpec, NodeSpec, OutputSpec, node
from studio.graph.types import ValueType as T

INPUTS = (InputSpec("image", T.IMAGE), InputSpec("amount", T.FLOAT, default=1.0))


def _spec(fn, inputs=INPUTS) -> NodeSpec:
    return NodeSpec("brighten", "Brighten", "image", fn, inputs=inputs)


def test_a_matching_execute_function_is_accepted():
    def brighten(ctx, image, amount=1.0):
        return image

    assert _spec(brighten).execute is brighten
    assert _spec(lambda ctx, **inputs: None).input("amount") is not None  # takes anything


def test_a_declared_input_without_a_parameter_is_refused():
    def brighten(ctx, image, strength=1.0):
        return image

    with pytest.raises(ValueError, match=r"node type brighten: .*input\(s\) amount"):
        _spec(brighten)


def test_a_required_parameter_that_is_not_an_input_is_refused():
    def brighten(ctx, image, amount, gamma):
        return image

    with pytest.raises(ValueError, match=r"node type brighten: .*parameter\(s\) gamma"):
        _spec(brighten)
    # An undeclared parameter with a default is never passed, and harms nothing.
    _spec(lambda ctx, image, amount, gamma=2.2: image)


def test_the_first_parameter_must_be_ctx():
    with pytest.raises(ValueError, match=r"node type brighten: .*first parameter must be ctx"):
        _spec(lambda image, amount: image)
    with pytest.raises(ValueError, match="first parameter must be ctx"):
        _spec(lambda *, ctx, image, amount: image)


def test_an_optional_input_needs_a_default():
    inputs = (InputSpec("image", T.IMAGE), InputSpec("mask", T.MASK, optional=True))
    with pytest.raises(ValueError, match=r"node type brighten: .*optional input\(s\) mask"):
        _spec(lambda ctx, image, mask: image, inputs)
    _spec(lambda ctx, image, mask=None: image, inputs)


def test_the_node_decorator_checks_too():
    with pytest.raises(ValueError, match=r"node type invert: .*input\(s\) mask"):

        @node(
            "invert",
            title="Invert",
            category="mask",
            inputs=[InputSpec("mask", T.MASK)],
            outputs=[OutputSpec("mask", T.MASK)],
        )
        def invert(ctx, image):
            return image


def test_every_built_in_node_matches_its_execute_function():
    specs = []
    for name in nodes.BUILTIN_MODULES:
        module = importlib.import_module(f"nodes.{name}")
        specs += [v for v in vars(module).values() if isinstance(v, NodeSpec)]
    assert len(specs) > 30
    for spec in specs:
        # Build each again: the check runs whether or not the modules were imported before.
        fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.init}
        fields = {k: v for k, v in fields.items() if not k.startswith("_")}
        assert NodeSpec(**fields) == spec
