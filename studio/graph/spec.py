"""Declarative node specs: what a node type takes, gives, and does.

A node type is one :class:`NodeSpec`: type id, version, title, category,
description, typed inputs, typed outputs and one ``execute`` function. The GUI,
the validator, the executor and generated docs all read the same spec.

Inputs of a param type (INT, FLOAT, STRING, BOOLEAN, CHOICE) are edited on the
node and stored in ``Node.params`` by name; a link into such an input overrides
the stored value. Inputs of the other types (MODEL, IMAGE, ...) only arrive by link.

Node modules must not import torch or diffusers at module level: specs are read
by the GUI before torch is loaded. Import heavy libraries inside ``execute``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from studio.graph.types import PARAM_TYPES, ValueType

ChoicesSource = Sequence[str] | Callable[[], Sequence[str]]
#: Lists the files of a kind (``checkpoints``, ``loras``, ...) under the settings in force:
#: ``studio.modelfiles.ModelFiles.list``. Passed in by whoever holds the settings.
FileLister = Callable[[str], Sequence[str]]


@dataclass(frozen=True)
class InputSpec:
    """One input of a node type.

    Attributes:
        name: the param's name; params are stored and addressed by it, never by position.
        type: the value type it accepts.
        default: value used when the param is not set (param types only).
        min, max, step: numeric range and slider step (INT, FLOAT).
        choices: allowed values of a CHOICE input, or a callable that lists them
            now. Model-file inputs declare ``file_kind`` instead: their choices are the
            files of that kind under the settings in force (see :meth:`choice_list`).
        tooltip: shown in the GUI and in generated docs.
        optional: the node runs without it (only meaningful for linked types).
        multiline: a STRING edited in a multi-line editor (prompts).
        file_kind: the models-root subfolder a CHOICE of files comes from
            (``checkpoints``, ``loras``, ...), ``"image"`` for input images, or
            ``"mask"`` for a STRING holding a painted mask (a base64 PNG the GUI's mask
            painter edits; no choices).
        seed: an INT that gets a seed control (fixed / increment / randomize) in the GUI.
    """

    name: str
    type: ValueType
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: ChoicesSource | None = None
    tooltip: str = ""
    optional: bool = False
    multiline: bool = False
    file_kind: str | None = None
    seed: bool = False

    @property
    def is_param(self) -> bool:
        return self.type in PARAM_TYPES

    def choice_list(self, files: FileLister | None = None) -> list[str]:
        """The allowed values now; a model-file input lists ``files(file_kind)``."""
        if self.choices is None:
            if self.file_kind is not None and files is not None and self.type is ValueType.CHOICE:
                return list(files(self.file_kind))
            return []
        items = self.choices() if callable(self.choices) else self.choices
        return list(items)

    def check(self, value: Any) -> str | None:
        """Return a problem with ``value`` for this input, or None when it is acceptable."""
        t = self.type
        if t is ValueType.INT:
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    return f"expects a whole number, got {value!r}"
        elif t is ValueType.FLOAT:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return f"expects a number, got {value!r}"
            if isinstance(value, float) and not math.isfinite(value):
                return f"expects a finite number, got {value!r}"
        elif t is ValueType.BOOLEAN:
            if not isinstance(value, bool):
                return f"expects true or false, got {value!r}"
        elif t is ValueType.STRING:
            if not isinstance(value, str):
                return f"expects text, got {value!r}"
        elif t is ValueType.CHOICE:
            if not isinstance(value, str):
                return f"expects one of its choices, got {value!r}"
            allowed = self.choice_list()
            if self.file_kind is None and value not in allowed:
                shown = ", ".join(allowed[:12]) + (", ..." if len(allowed) > 12 else "")
                return f"{value!r} is not one of: {shown}"
        if t in (ValueType.INT, ValueType.FLOAT):
            if self.min is not None and value < self.min:
                return f"{value} is below the minimum {_num(self.min)}"
            if self.max is not None and value > self.max:
                return f"{value} is above the maximum {_num(self.max)}"
        return None

    def coerce(self, value: Any) -> Any:
        """Normalise an acceptable value (2.0 -> 2 for INT, 2 -> 2.0 for FLOAT)."""
        if self.type is ValueType.INT and isinstance(value, float):
            return int(value)
        if self.type is ValueType.FLOAT and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass(frozen=True)
class OutputSpec:
    """One output of a node type."""

    name: str
    type: ValueType
    tooltip: str = ""


Executor = Callable[..., Any]
Migration = Callable[[int, dict[str, Any]], dict[str, Any]]
Fingerprint = Callable[[Mapping[str, Any], Any], str | None]


@dataclass(frozen=True)
class NodeSpec:
    """A node type.

    Attributes:
        type_id: stable identifier stored in workflow files (``sampler``,
            ``mypack.blur``). Never change it; bump ``version`` instead.
        version: the type's version; files with an older version are migrated
            through ``migrate``.
        title: what the artist sees ("Sampler").
        category: where it is filed in the library ("sampling", "image", ...).
        description: one or two sentences; searched by the node finder.
        inputs, outputs: typed ports, addressed by name.
        execute: ``execute(ctx, **inputs) -> dict | tuple | value``. ``ctx`` is the
            engine's :class:`~studio.engine.context.NodeContext` (progress,
            interrupt, models, settings). Return a dict by output name, a tuple in
            output order, or a single value for a one-output node. Checked when the
            spec is made: ``ctx`` first, then a parameter named after each input (or
            ``**kwargs``), a default for each optional input, no other required
            parameter; a mismatch is a ValueError naming the node type.
        output_node: an output (Save Image, Preview Image): what the engine runs toward.
        deterministic: False opts out of caching (the node re-runs every time).
        fingerprint: ``fingerprint(params, ctx) -> str | None``, for nodes that read
            files other than their model-file params: folds the identity of what they
            read into the cache signature. ``ctx`` is the node's context
            (``ctx.files.of(path)``, ``ctx.settings``, ``ctx.model_files``). Model-file
            params (``file_kind`` ``checkpoints``, ``loras``, ...) need none: the engine
            resolves and fingerprints them itself.
        migrate: ``migrate(from_version, params) -> params`` for one version step.
        frontend_only: carries no computation (notes); never executed.
    """

    type_id: str
    title: str
    category: str
    execute: Executor | None
    inputs: tuple[InputSpec, ...] = ()
    outputs: tuple[OutputSpec, ...] = ()
    version: int = 1
    description: str = ""
    output_node: bool = False
    deterministic: bool = True
    fingerprint: Fingerprint | None = None
    migrate: Migration | None = None
    frontend_only: bool = False
    _input_index: dict[str, InputSpec] = field(default_factory=dict, compare=False, repr=False)
    _output_index: dict[str, OutputSpec] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        names = [i.name for i in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError(f"node type {self.type_id}: duplicate input names")
        onames = [o.name for o in self.outputs]
        if len(set(onames)) != len(onames):
            raise ValueError(f"node type {self.type_id}: duplicate output names")
        self._input_index.update({i.name: i for i in self.inputs})
        self._output_index.update({o.name: o for o in self.outputs})
        if self.execute is not None and not self.frontend_only:
            problems = _signature_problems(self.execute, self.inputs)
            if problems:
                raise ValueError(
                    f"node type {self.type_id}: its execute function does not match its "
                    f"inputs: {'; '.join(problems)}"
                )

    def input(self, name: str) -> InputSpec | None:
        return self._input_index.get(name)

    def output(self, name: str) -> OutputSpec | None:
        return self._output_index.get(name)

    @property
    def params(self) -> tuple[InputSpec, ...]:
        return tuple(i for i in self.inputs if i.is_param)

    def default_params(self, files: FileLister | None = None) -> dict[str, Any]:
        """Values of a new node: each param's default; a choice's first choice (a
        model-file choice's first file, when ``files`` lists them)."""
        out: dict[str, Any] = {}
        for i in self.params:
            if i.default is not None:
                out[i.name] = i.default
            elif i.type is ValueType.CHOICE:
                choices = i.choice_list(files)
                out[i.name] = choices[0] if choices else ""
        return out


def _signature_problems(fn: Executor, inputs: Sequence[InputSpec]) -> list[str]:
    """What keeps ``fn(ctx, **inputs)`` from working the way the engine calls it.

    The engine passes ``ctx`` first, then each input by name; an optional input that is
    unconnected (or a param left unset) is not passed at all, so it needs a default.
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []  # a callable Python cannot describe (a builtin): nothing to compare
    params = list(sig.parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if not params or params[0].name != "ctx" or params[0].kind not in positional:
        return ["its first parameter must be ctx"]
    by_keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    named = {p.name: p for p in params[1:] if p.kind in by_keyword}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    declared = {i.name for i in inputs}
    problems = []
    missing = [i.name for i in inputs if i.name not in named]
    if missing and not takes_any:
        problems.append(f"no parameter for input(s) {', '.join(missing)}")
    unknown = [
        p.name
        for p in params[1:]
        if p.name not in declared
        and p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if unknown:
        problems.append(f"required parameter(s) {', '.join(unknown)} are not declared inputs")
    undefaulted = [
        i.name
        for i in inputs
        if i.optional and i.name in named and named[i.name].default is inspect.Parameter.empty
    ]
    if undefaulted:
        problems.append(
            f"optional input(s) {', '.join(undefaulted)} need a default (they are left out "
            "when unconnected)"
        )
    return problems


def node(
    type_id: str,
    *,
    title: str,
    category: str,
    inputs: Sequence[InputSpec] = (),
    outputs: Sequence[OutputSpec] = (),
    version: int = 1,
    description: str = "",
    output_node: bool = False,
    deterministic: bool = True,
    fingerprint: Fingerprint | None = None,
    migrate: Migration | None = None,
) -> Callable[[Executor], NodeSpec]:
    """Decorator turning an execute function into a :class:`NodeSpec`.

    Example::

        @node("invert_mask", title="Invert Mask", category="mask",
              inputs=[InputSpec("mask", ValueType.MASK)],
              outputs=[OutputSpec("mask", ValueType.MASK)])
        def invert_mask(ctx, mask):
            return 1.0 - mask
    """

    def wrap(fn: Executor) -> NodeSpec:
        return NodeSpec(
            type_id=type_id,
            title=title,
            category=category,
            execute=fn,
            inputs=tuple(inputs),
            outputs=tuple(outputs),
            version=version,
            description=description or (fn.__doc__ or "").strip(),
            output_node=output_node,
            deterministic=deterministic,
            fingerprint=fingerprint,
            migrate=migrate,
        )

    return wrap
