"""Import only the parts of diffusers a run uses.

Several diffusers package ``__init__`` files import every class of their family: touching
``diffusers.models.unets.unet_2d_condition`` first runs ``diffusers/models/unets/__init__.py``,
which imports every UNet, whose blocks import ``diffusers.models.transformers``, whose
``__init__`` imports about eighty transformer models, and ``diffusers.hooks`` pulls peft.
On a small CPU that was seconds before the first step of a run. transformers'
``models/__init__`` reads every one of its few hundred model folders to build its import
table (about half a second); a run needs two of them.

diffusers, transformers and torchvision also import ``torch._dynamo`` (torch.compile's
front end, about as long to import as torch itself) at import time, for decorators only
(``allow_in_graph``, ``torch.compiler.disable``, ``assume_constant_result``: see
:data:`DYNAMO_USERS`). A run that never compiles does not need it: :class:`_DeferDynamo`
lets those modules import without it and hands dynamo what they asked for the moment
something (``torch.compile``) imports it, so compiling behaves as if it had come first.
Any other use of the stand-in imports the real dynamo (tests/test_cold_imports.py).

:func:`install` puts a lazy stand-in for those packages into ``sys.modules``: importing one
of their modules imports that module alone; asking the package for anything else runs its
real ``__init__`` first, so code that wants the whole family (a pipeline, a node pack)
still gets it. Nothing here imports torch or diffusers.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
import types
from pathlib import Path
from typing import Any

#: Packages whose ``__init__`` imports (or, for transformers, scans) a whole family of
#: models or helpers.
LAZY_PACKAGES = (
    "diffusers.models.unets",
    "diffusers.models.transformers",
    "diffusers.models.autoencoders",
    "diffusers.models.controlnets",
    "diffusers.hooks",
    "transformers.models",
)

_lock = threading.RLock()
_installed = False


class _LazyPackage(types.ModuleType):
    """A package whose ``__init__`` runs only when something asks it for a name."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name not in ("__all__", "__version__"):
            raise AttributeError(name)
        folder = Path(self.__path__[0])
        if (folder / f"{name}.py").is_file() or (folder / name / "__init__.py").is_file():
            return importlib.import_module(f"{self.__name__}.{name}")
        with _lock:
            state = self.__dict__
            if not state.get("_studio_complete"):
                state["_studio_complete"] = True
                self.__spec__.loader.exec_module(self)  # type: ignore[union-attr]
        try:
            return state[name]
        except KeyError:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}") from None


def _package_root(top: str) -> Path | None:
    spec = importlib.util.find_spec(top)  # finds, does not import
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def install() -> None:
    """Put the lazy stand-ins and the dynamo import hook in place; cheap, idempotent, and
    a no-op for what is already imported."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
        sys.meta_path.insert(0, _defer_dynamo)
        for name in LAZY_PACKAGES:
            top = name.split(".")[0]
            root = _package_root(top)
            if root is None or name in sys.modules:
                continue
            init = root.joinpath(*name.split(".")[1:], "__init__.py")
            if not init.is_file():
                continue
            spec = importlib.util.spec_from_file_location(
                name, init, submodule_search_locations=[str(init.parent)]
            )
            if spec is None or spec.loader is None:
                continue
            module = _LazyPackage(name)
            module.__spec__ = spec
            module.__file__ = str(init)
            module.__path__ = [str(init.parent)]
            module.__package__ = name
            module.__loader__ = spec.loader
            sys.modules[name] = module


#: Modules run without ``torch._dynamo``: diffusers' utils import its ``allow_in_graph``
#: (attention classes are marked with it); its offloading hooks decorate two methods with
#: ``torch.compiler.disable()``, which imports dynamo (and diffusers' ``ModelMixin.to``
#: and ``.device`` import those hooks: every run); transformers' ``modeling_utils`` marks a
#: method ``torch.compiler.allow_in_graph`` and imports its FP8 kernels, marked with ``allow_in_graph`` and ``assume_constant_result``, and its
#: flex attention, a method of which is marked ``torch.compiler.disable``; transformers'
#: image utilities import torchvision, whose ``roi_align`` imports a dynamo helper and
#: whose ``tv_tensors`` marks a function ``torch.compiler.disable``; transformers
#: masks (CLIP's among them) import ``torch._dynamo._trace_wrapped_higher_order_op``, a
#: module that needs nothing of dynamo's own ``__init__`` (it is loaded as it is, from its
#: file, under the stand-in package).
DYNAMO_USERS = (
    "diffusers.utils.torch_utils",
    "diffusers.hooks.group_offloading",
    "transformers.modeling_utils",
    "transformers.integrations.deepgemm",
    "transformers.integrations.finegrained_fp8",
    "transformers.integrations.flex_attention",
    "torchvision.ops.roi_align",
    "torchvision.tv_tensors",
    "transformers.masking_utils",
)
DYNAMO = "torch._dynamo"
#: What marks a function :func:`disable_later` wrapped: (fn, recursive, reason).
_MARK = "_studio_dynamo_disable_later"

#: Classes marked ``allow_in_graph`` before ``torch._dynamo`` was imported.
_pending_allow_in_graph: list[Any] = []


def _dynamo_ready() -> Any:
    """The real ``torch._dynamo`` once it is fully imported, else None."""
    module = sys.modules.get(DYNAMO)
    if module is None or isinstance(module, _DynamoStandIn):
        return None
    if getattr(getattr(module, "__spec__", None), "_initializing", False):
        return None
    return module


def allow_in_graph_later(fn: Any) -> Any:
    """``torch._dynamo.allow_in_graph``, now if dynamo is imported, else the moment it is
    (:class:`_DeferDynamo` calls :func:`_flush`). Returns ``fn`` itself, as the real
    decorator does."""
    dynamo = _dynamo_ready()
    if dynamo is not None:
        return dynamo.allow_in_graph(fn)
    with _lock:
        _pending_allow_in_graph.append(fn)
    return fn


def disable_later(fn: Any = None, recursive: bool = True, *, reason: Any = None) -> Any:
    """``torch._dynamo.disable`` (what ``torch.compiler.disable`` calls), now if dynamo is
    imported, else a wrapper that calls ``fn`` as it is (nothing can be compiling while
    dynamo is not imported) and the really disabled ``fn`` once it is. When dynamo is
    imported, :func:`_flush` also puts the really disabled function in the wrapper's place
    (module globals, class attributes), so ``torch.compile`` sees what it would have."""
    dynamo = _dynamo_ready()
    if dynamo is not None:
        return dynamo.disable(fn, recursive, reason=reason)
    if fn is None:
        return lambda f: disable_later(f, recursive, reason=reason)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        dynamo = _dynamo_ready()
        if dynamo is None:
            return fn(*args, **kwargs)
        real = wrapper.__dict__.get("_studio_disabled")
        if real is None:
            real = wrapper._studio_disabled = dynamo.disable(fn, recursive, reason=reason)  # type: ignore[attr-defined]
        return real(*args, **kwargs)

    setattr(wrapper, _MARK, (fn, recursive, reason))
    return wrapper


def assume_constant_result(fn: Any) -> Any:
    """``torch._dynamo.assume_constant_result``, which only marks ``fn`` (as here)."""
    fn._dynamo_marked_constant = True
    return fn


def _call_later(module: str, name: str) -> Any:
    """A function that calls ``module.name``, imported on the first call (where dynamo
    is imported anyway, :func:`_flush` puts the real one in its place)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    setattr(call, _MARK_CALL, (module, name))
    return call


#: What marks a function :func:`_call_later` made: (module, name).
_MARK_CALL = "_studio_dynamo_call_later"

#: What the stand-ins give for each name; any other name imports the real dynamo.
STAND_IN_NAMES: dict[str, dict[str, Any]] = {
    DYNAMO: {
        "allow_in_graph": allow_in_graph_later,
        "disable": disable_later,
        "assume_constant_result": assume_constant_result,
    },
    DYNAMO + ".utils": {
        "is_compile_supported": _call_later(DYNAMO + ".utils", "is_compile_supported"),
    },
}


def _flush(dynamo: Any) -> None:
    """Hand dynamo what was deferred: ``allow_in_graph`` marks, disabled functions, and
    the real functions in the place of :func:`_call_later`'s."""
    with _lock:
        pending = list(_pending_allow_in_graph)
        _pending_allow_in_graph.clear()
    for fn in pending:
        dynamo.allow_in_graph(fn)
    # Submodules loaded under the stand-in: attributes of the real package, as if it had
    # imported them.
    prefix = DYNAMO + "."
    for name, module in list(sys.modules.items()):
        child = name[len(prefix) :]
        if name.startswith(prefix) and "." not in child and not hasattr(dynamo, child):
            setattr(dynamo, child, module)

    def real(value: Any) -> Any:
        if hasattr(value, _MARK_CALL):
            module, name = getattr(value, _MARK_CALL)
            return getattr(importlib.import_module(module), name)
        fn, recursive, reason = getattr(value, _MARK)
        return dynamo.disable(fn, recursive, reason=reason)

    def deferred(value: Any) -> bool:
        return hasattr(value, _MARK) or hasattr(value, _MARK_CALL)

    for name in DYNAMO_USERS:
        module = sys.modules.get(name)
        if module is None:
            continue
        for key, value in list(vars(module).items()):
            if deferred(value):
                setattr(module, key, real(value))
            elif isinstance(value, type) and value.__module__ == name:
                for attr, member in list(vars(value).items()):
                    if deferred(member):
                        setattr(value, attr, real(member))


class _DynamoStandIn(types.ModuleType):
    """What ``torch._dynamo`` (and ``torch._dynamo.utils``) is while one of
    :data:`DYNAMO_USERS` runs: the names of :data:`STAND_IN_NAMES` (what the real ones do,
    deferred); any other name imports the real module (which then replaces the
    stand-ins) and is taken from it."""

    def __getattr__(self, name: str) -> Any:
        given = STAND_IN_NAMES.get(self.__name__, {})
        if name in given:
            return given[name]
        if name.startswith("__"):
            raise AttributeError(name)
        _remove_stand_ins()
        return getattr(importlib.import_module(self.__name__), name)


def _put_stand_ins() -> list[_DynamoStandIn]:
    """Stand-ins in ``sys.modules`` for dynamo, unless it is imported (then none)."""
    with _lock:
        if DYNAMO in sys.modules:
            return []
        made = []
        for name in STAND_IN_NAMES:
            module = _DynamoStandIn(name)
            if name == DYNAMO:
                # A package: its submodules (those not stood in for) load from its folder.
                module.__path__ = _dynamo_path()
            sys.modules[name] = module
            made.append(module)
        return made


def _dynamo_path() -> list[str]:
    spec = importlib.util.find_spec("torch")  # finds, does not import
    if spec is None or not spec.submodule_search_locations:
        return []
    return [str(Path(next(iter(spec.submodule_search_locations))) / "_dynamo")]


def _remove_stand_ins() -> None:
    with _lock:
        for name in STAND_IN_NAMES:
            if isinstance(sys.modules.get(name), _DynamoStandIn):
                del sys.modules[name]


class _DeferDynamo(importlib.abc.MetaPathFinder):
    """An import hook (``sys.meta_path``) for the modules in :data:`DYNAMO_USERS` and
    ``torch._dynamo`` only; every other import is left to the other finders (None).

    - A module of :data:`DYNAMO_USERS` runs with a :class:`_DynamoStandIn` in
      ``sys.modules["torch._dynamo"]`` (unless dynamo is already imported), removed as soon
      as that module has run, so ``import torch._dynamo`` anywhere else, then or later,
      gets the real one.
    - ``torch._dynamo``: once the real module has run, :func:`_flush` hands it what was
      deferred, so ``torch.compile`` treats diffusers' classes and methods as if dynamo
      had been imported first.
    """

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != DYNAMO and fullname not in DYNAMO_USERS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        real_exec = spec.loader.exec_module
        if fullname == DYNAMO:

            def exec_module(module: types.ModuleType) -> None:
                real_exec(module)
                _flush(module)

        else:

            def exec_module(module: types.ModuleType) -> None:
                made = _put_stand_ins()
                try:
                    real_exec(module)
                finally:
                    if made:
                        _remove_stand_ins()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


_defer_dynamo = _DeferDynamo()


def diffusers_class(name: str) -> Any:
    """``diffusers.<name>`` (a model or scheduler class), importing only its own module."""
    install()
    import diffusers

    return getattr(diffusers, name)
